"""Command-line plumbing shared by every distforget command, and the ``distforget`` script.

    distforget <command> [args]        # the console script
    python -m distforget <command> ... # the same, without the script on PATH
    python -m distforget.<command> ... # each command's own module

A command's usage line names it the way it was started: ``distforget search`` through the
console script, ``python -m distforget search`` through ``python -m distforget``, and
``python -m distforget.search`` through the module. Commands parse their arguments before they
import torch, open_clip or Ray, so ``--help`` answers at once.

Errors a user can cause (``DistforgetError``) print as one line and exit with status 2; pass
``--debug`` to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from typing import Callable

from distforget.errors import DistforgetError, did_you_mean

# name -> (module, one-line summary)
COMMANDS = {
    "search": ("distforget.search", "Ray Tune + Optuna search; Pareto front, report, best soup"),
    "unlearn": ("distforget.unlearn", "one run of the method or a baseline, without a search"),
    "export": ("distforget.export",
               "a point of a finished search as an open_clip checkpoint (or Hub upload)"),
    "pretrain": ("distforget.pretrain", "pretrain the small CLIP on a labelled image set"),
    "report": ("distforget.report", "rebuild a search's front, plot and report from its results"),
    "config": ("distforget.configdoc", "show the resolved config, every key with its comment"),
}


def pick_device(name: str | None):
    """The torch device a command runs on: ``--device`` if given, else CUDA if present."""
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def config_sections() -> str:
    """The config's sections with their one-line descriptions, for ``--help``."""
    import dataclasses

    from distforget.config import RunConfig

    lines = []
    for f in dataclasses.fields(RunConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        doc = (type(default).__doc__ or "").strip().splitlines()[0] if default is not None \
            else "which method a run applies (three_stage or a baseline)"
        lines.append(f"  {f.name:<10} {doc.replace('``', '')}")
    return "\n".join(lines)


def config_epilog() -> str:
    return ("config sections (YAML mappings; override a key with section.key=value):\n"
            f"{config_sections()}\n\n"
            "Every key with its value and comment: distforget config show [--config FILE] "
            "[key=value ...]")


def command_parser(name: str, description: str, prog: str | None = None,
                   takes_config: bool = False) -> argparse.ArgumentParser:
    """The argument parser of command ``name``; ``prog`` is how it was started (see above)."""
    return argparse.ArgumentParser(
        prog=prog or f"python -m distforget.{name}", description=textwrap.fill(description, 79),
        epilog=config_epilog() if takes_config else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (default: the embedded default)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. forget.lr=1e-4 search.num_trials=16")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    if parser.epilog is None:
        parser.epilog = config_epilog()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def config_from_args(args: argparse.Namespace):
    from distforget.config import load_config

    return load_config(args.config, args.overrides)


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
            argv: list[str] | None = None) -> int:
    """Parse ``argv`` and call ``run``; input errors become one line on stderr and status 2.

    Options and ``key=value`` overrides may come in any order (``search a=1 --config F b=2``).
    """
    args = parser.parse_intermixed_args(argv)
    try:
        from distforget.threads import set_torch_threads
        set_torch_threads()  # the CPUs this process may run on, not every core of the machine
        return int(run(args) or 0)
    except DistforgetError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def version_line() -> str:
    """distforget's version and those of the libraries it runs on (read from the installed
    distributions' metadata, without importing them)."""
    from importlib import metadata

    from distforget import __version__

    libs = []
    for dist in ("torch", "open_clip_torch", "ray", "optuna"):
        try:
            libs.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            libs.append(f"{dist} not installed")
    return f"distforget {__version__} ({', '.join(libs)})"


def usage(prog: str) -> str:
    width = max(len(name) for name in COMMANDS)
    commands = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    return (f"usage: {prog} [--version] <command> [args...]\n\n"
            f"commands:\n{commands}\n\n"
            f"'{prog} <command> --help' describes a command.\n\n{config_epilog()}\n")


def main(argv: list[str] | None = None, prog: str = "distforget") -> int:
    """``distforget <command> [args]``: the same commands as ``python -m distforget.<command>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage(prog), end="")
        return 0
    if argv and argv[0] == "--version":
        print(version_line())
        return 0
    if not argv:
        print(usage(prog), end="", file=sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        print(f"usage: {prog} [--version] <command> [args...]\n{prog}: error: unknown command "
              f"{argv[0]!r}{did_you_mean(argv[0], COMMANDS)}: expected one of "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:], prog=f"{prog} {argv[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
