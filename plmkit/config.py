"""Typed stage configs: one dataclass is the single source of truth.

Each stage declares a dataclass. From it we derive:
  * the CLI flags (``field_name`` -> ``--field-name``; help from ``metadata["help"]``),
  * the YAML form (the same field names, ``--config file.yaml``),
  * the resolved config written into every output directory.

Precedence: dataclass default < recipe < YAML file < flags given on the command line.
Flags use ``argparse.SUPPRESS`` as default so we can tell "given" from "defaulted".
A *recipe* is a named set of defaults a stage declares (``compose(..., recipes={...})``, e.g.
``plmkit pretrain --recipe budget``): ``build`` fills the options the YAML and the flags leave
unset from it, and ``from_recipe(cfg)`` tells which values came from there.

Bounds are declared on the field (``option(1, ge=1)``) and checked by ``build`` for every
stage alike, from flags and YAML, before a stage runs; the message names the flag.
Option sets shared by several stages (``plmkit.train.TrainArgs``) are declared once and
copied into each stage's config by ``compose``; ``pick`` takes them back out.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Collection, TypeVar

import yaml

from .errors import PlmkitError
from .io import check_input_file

T = TypeVar("T")


BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
          "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           positional: bool = False, choices: Collection[str] | None = None, group: str | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, **kw: Any) -> Any:
    """A dataclass field with CLI metadata. Mutable defaults go through default_factory.

    ``ge``/``gt``/``le``/``lt`` bound a number (each item of a list); NaN never passes.
    ``group`` titles the block of ``--help`` the flag is listed in.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, "flag": flag, "positional": positional, "choices": choices, "group": group,
            "bounds": bounds}
    return _field(default, dataclasses.MISSING, meta, **kw)


def _field(default: Any, factory: Any, meta: Any, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def compose(name: str, module: str, base: type, *parts: type, defaults: dict[str, Any] | None = None,
            omit: tuple[str, ...] = (), recipes: dict[str, dict[str, Any]] | None = None) -> type:
    """A stage config: ``base``'s options, then those of each shared part, copied with their help
    and bounds. ``defaults`` gives this stage its own default for a part's option (shown in
    --help); ``omit`` leaves a part's option out (``pick`` then uses the part's default).
    ``recipes`` (name -> {option: value}) adds a ``recipe`` option: the named set of defaults sits
    between the defaults and what YAML and flags say (see ``build``)."""
    defaults = dict(defaults or {})
    own = {f.name for f in dataclasses.fields(base)}
    fields: list[tuple[str, Any, Any]] = []
    for part in parts:
        hints = typing.get_type_hints(part)
        for f in dataclasses.fields(part):
            if f.name in omit:
                continue
            if f.name in own:
                raise TypeError(f"{name}: option '{f.name}' is declared by both {base.__name__} and "
                                f"{part.__name__}")
            hint = hints[f.name]
            if f.name in defaults:
                value = defaults.pop(f.name)
                new = _field(value, dataclasses.MISSING, f.metadata)
                if value is None:           # "unset": the stage fills it in (e.g. per mode)
                    hint = hint | None
            else:
                new = _field(f.default, f.default_factory, f.metadata)
            fields.append((f.name, hint, new))
    if defaults:
        raise TypeError(f"{name}: defaults for unknown shared options {sorted(defaults)}")
    if recipes:
        fields.append(("recipe", str | None, option(None, help=recipe_help(recipes), choices=sorted(recipes))))
    cls = dataclasses.make_dataclass(name, fields, bases=(base,))
    cls.__module__ = module
    cls.RECIPES = dict(recipes or {})
    known = {f.name for f in dataclasses.fields(cls)}
    for recipe, values in cls.RECIPES.items():
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"{name}: recipe '{recipe}' sets unknown options {unknown}")
    return cls


def recipe_help(recipes: dict[str, dict[str, Any]]) -> str:
    """The --recipe help: each recipe's settings, as flags."""
    def shown(k: str, v: Any) -> str:
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            return flag if v else f"--no-{k.replace('_', '-')}"
        return f"{flag} {' '.join(map(str, v)) if isinstance(v, list) else v}"
    listed = "; ".join(f"{name} = {' '.join(shown(k, v) for k, v in values.items())}"
                       for name, values in recipes.items())
    return f"a named set of defaults; --config and flags given here override each of them ({listed})"


def pick(cls: type[T], cfg: Any) -> T:
    """An instance of ``cls`` from the same-named options of ``cfg`` (the composed stage config);
    options the stage omits keep ``cls``'s defaults."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)})


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


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
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        meta = f.metadata
        default = None if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
            else _default(f)
        help_text = meta.get("help", "")
        if default not in (None, "", []) and not isinstance(default, bool):
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        name = flag_name(f)
        title = meta.get("group")
        if title and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target: Any = groups[title] if title else parser
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
        target.add_argument(name, **kwargs)
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
    """Create ``cls`` from a mapping, with names accepted in either ``a_b`` or ``a-b`` form.
    The options ``values`` leaves unset come from its ``recipe`` when it names one."""
    names = {f.name for f in dataclasses.fields(cls)}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in names:
            raise PlmkitError(f"{source}: unknown option '{key}' (known: {', '.join(sorted(names))})")
        clean[k] = value
    filled = _recipe_values(cls, clean, source)
    clean.update(filled)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in clean and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise PlmkitError(f"{source}: missing required option(s): {flags}")
    cfg = cls(**clean)
    _check_types(cfg, source)
    cfg.__dict__[_FROM_RECIPE] = frozenset(filled)
    return cfg


def _recipe_values(cls: type, clean: dict[str, Any], source: str) -> dict[str, Any]:
    """The options the named recipe sets and ``clean`` leaves unset (a stage without recipes may
    have an option called ``recipe`` of its own: ``plmkit run``'s file)."""
    recipes = getattr(cls, "RECIPES", None)
    recipe = clean.get("recipe")
    if not recipes or recipe is None:
        return {}
    if recipe not in recipes:
        raise PlmkitError(f"{source}: option 'recipe' must be one of {', '.join(sorted(recipes))}, got {recipe!r}")
    return {k: list(v) if isinstance(v, list) else v for k, v in recipes[recipe].items() if k not in clean}


_FROM_RECIPE = "_plmkit_from_recipe"


def from_recipe(cfg: Any) -> frozenset[str]:
    """The options of ``cfg`` whose value its recipe supplied (neither YAML nor a flag set them)."""
    return cfg.__dict__.get(_FROM_RECIPE, frozenset())


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
        elif typing.get_origin(tp) is list:
            if not isinstance(value, list):
                setattr(cfg, f.name, [value])
        elif (tp in (int, float, str, bool) and not isinstance(value, tp)) or (tp is int and isinstance(value, bool)):
            raise PlmkitError(f"{source}: option '{f.name}' must be {tp.__name__}, got {value!r}")
        _check_bounds(f, getattr(cfg, f.name), source)


def _check_bounds(f: dataclasses.Field, value: Any, source: str) -> None:
    bounds = f.metadata.get("bounds", {})
    for item in value if isinstance(value, list) else [value]:
        if not bounds or not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if not math.isfinite(item):
            raise PlmkitError(f"{source}: {flag_name(f)} must be a finite number, got {item!r}")
        if not all(BOUNDS[kind][1](item, bound) for kind, bound in bounds.items()):
            raise PlmkitError(f"{source}: {flag_name(f)} must be {_range(bounds)}, got {item!r}")


def _range(bounds: dict[str, float]) -> str:
    """'>= 1', or 'in [0, 1)' for a bound on both sides."""
    low = [(k, b) for k, b in bounds.items() if k in ("ge", "gt")]
    high = [(k, b) for k, b in bounds.items() if k in ("le", "lt")]
    if low and high:
        (lk, lb), (hk, hb) = low[0], high[0]
        return f"in {'[' if lk == 'ge' else '('}{lb:g}, {hb:g}{']' if hk == 'le' else ')'}"
    kind, bound = (low or high)[0]
    return f"{BOUNDS[kind][0]} {bound:g}"


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
