"""The ``plmkit`` command line.

Each subcommand is a stage module exposing ``Config`` (a dataclass: its fields are the
flags and the YAML keys) and ``run(cfg)``; the table of them, ``COMMANDS``, lives with the
stages (``plmkit.stages``), where the recipe runner reads it too. Modules are imported lazily
so ``plmkit --help`` stays fast. User errors (``PlmkitError``, and an ``OSError`` naming a path the
system refused) become one line on stderr and exit code 1.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .config import add_arguments, from_args
from .errors import PlmkitError
from .stages import COMMANDS

def _available() -> dict[str, tuple[str, str]]:
    """Commands whose stage module exists in this build."""
    out = {}
    for name, (mod, help_text) in COMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = (mod, help_text)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plmkit", description="plmkit: from raw text to a small, fast, measured transformer model.",
        epilog="Run 'plmkit COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"plmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (mod, help_text) in _available().items():
        words = name.split()
        if len(words) == 2:
            if words[0] not in groups:
                gp = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            p = groups[words[0]].add_parser(words[1], help=help_text, description=help_text)
        else:
            p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=mod)
    return parser


def _match(argv: list[str]) -> tuple[str, int] | None:
    """The command named by the first one or two words of argv, and how many words it used."""
    available = _available()
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in available:
            return name, n
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    found = _match(argv)
    if found is None:
        parser = build_parser()
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        group = [c for c in _available() if c.startswith(argv[0] + " ")]
        if group and len(argv) == 1:
            print(f"usage: plmkit {argv[0]} {{{','.join(c.split()[1] for c in group)}}} ...", file=sys.stderr)
            return 2
        parser.parse_args(argv)          # prints usage and the unknown command, then exits 2
        return 2
    name, n_words = found
    module = importlib.import_module(COMMANDS[name][0])
    stage_parser = argparse.ArgumentParser(prog=f"plmkit {name}", description=COMMANDS[name][1])
    add_arguments(stage_parser, module.Config)
    if {"-h", "--help"} & set(argv[n_words:]) and hasattr(module, "help_for"):
        stage_parser.epilog = module.help_for(argv[n_words:])     # e.g. finetune: the defaults for --train's data
    stage_ns = stage_parser.parse_args(argv[n_words:])
    try:
        cfg = from_args(module.Config, stage_ns)
        result = module.run(cfg)
    except PlmkitError as e:
        print(f"plmkit: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # A path the system refused (read-only, /proc, a full disk): one line naming it. An
        # OSError without a path is no user error we can explain: it stays a traceback.
        if e.filename is None:
            raise
        print(f"plmkit: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("plmkit: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
