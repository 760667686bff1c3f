"""Typed stage configs: one dataclass is the single source of truth.

Each stage declares a dataclass. From it we derive:
  * the CLI flags (``field_name`` -> ``--field-name``; help from ``metadata["help"]``),
  * the YAML form (the same field names, ``--config file.yaml``),
  * the resolved config written into every output directory.

Precedence: dataclass default < YAML file < flags given on the command line.
Flags use ``argparse.SUPPRESS`` as default so we can tell "given" from "defaulted".
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import PlmkitError
from .io import check_input_file

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           positional: bool = False, choices: list[str] | None = None, **kw: Any) -> Any:
    """A dataclass field with CLI metadata. Mutable defaults go through default_factory."""
    meta = {"help": help, "flag": flag, "positional": positional, "choices": choices}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional[...] / X | None; return (type, is_optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        return str, True  # e.g. int | str: keep the text, the stage parses it
    return tp, False


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per dataclass field, plus ``--config``."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        meta = f.metadata
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = meta.get("help", "")
        if default is not None and default != "" and not isinstance(default, bool):
            help_text += f" (default: {default})"
        name = meta.get("flag") or "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if meta.get("positional"):
            name = f.name
            kwargs.pop("dest")
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                kwargs["nargs"] = "?"
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = help_text + (" (default: on)" if default else "")
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp) or (str,)
            kwargs["nargs"] = "+" if not meta.get("positional") else "*"
            kwargs["type"] = item
        else:
            kwargs["type"] = tp if tp in (int, float, str) else str
        parser.add_argument(name, **kwargs)
    parser.add_argument("--config", dest="_config", default=None, metavar="FILE.yaml",
                        help="YAML file with these options; flags given here override it")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = check_input_file(path, "config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PlmkitError(f"{path}: not a YAML text file (byte 0x{e.object[e.start]:02x} is not UTF-8)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise PlmkitError(f"{where}: invalid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlmkitError(f"{path}: expected a mapping of option names to values")
    return data


def build(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Create ``cls`` from a mapping, with names accepted in either ``a_b`` or ``a-b`` form."""
    names = {f.name for f in dataclasses.fields(cls)}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in names:
            raise PlmkitError(f"{source}: unknown option '{key}' (known: {', '.join(sorted(names))})")
        clean[k] = value
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in clean and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise PlmkitError(f"{source}: missing required option(s): {flags}")
    cfg = cls(**clean)
    _check_types(cfg, source)
    return cfg


def _check_types(cfg: Any, source: str) -> None:
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        tp, optional = _base_type(hints[f.name])
        value = getattr(cfg, f.name)
        if value is None and optional:
            continue
        choices = f.metadata.get("choices")
        bad = [v for v in (value if isinstance(value, list) else [value]) if choices and v not in choices]
        if bad:
            raise PlmkitError(f"{source}: option '{f.name}' must be one of {', '.join(map(str, choices))}, "
                              f"got {bad[0]!r}")
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(cfg, f.name, float(value))
            continue
        if typing.get_origin(tp) is list:
            if not isinstance(value, list):
                setattr(cfg, f.name, [value])
            continue
        if tp in (int, float, str, bool) and not isinstance(value, tp):
            raise PlmkitError(f"{source}: option '{f.name}' must be {tp.__name__}, got {value!r}")
        if tp is int and isinstance(value, bool):
            raise PlmkitError(f"{source}: option '{f.name}' must be int, got {value!r}")


def from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Resolve a stage config: defaults < ``--config`` YAML < explicit flags."""
    values: dict[str, Any] = {}
    yaml_path = getattr(ns, "_config", None)
    if yaml_path:
        values.update(load_yaml(yaml_path))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return build(cls, values, source=str(yaml_path) if yaml_path else "command line")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
