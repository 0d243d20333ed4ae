"""Command-line plumbing shared by every distforget command, and the ``distforget`` script.

Errors a user can cause (``DistforgetError``) print as one line and exit with status 2; pass
``--debug`` to see the traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from distforget.errors import DistforgetError


def pick_device(name: str | None):
    """The torch device a command runs on: ``--device`` if given, else CUDA if present."""
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (default: the embedded default)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. forget.lr=1e-4 search.num_trials=16")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")


def config_from_args(args: argparse.Namespace):
    from distforget.config import load_config

    return load_config(args.config, args.overrides)


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
            argv: list[str] | None = None) -> int:
    """Parse ``argv`` and call ``run``; input errors become one line on stderr and status 2."""
    args = parser.parse_args(argv)
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


COMMANDS = {
    "search": "distforget.search",
    "unlearn": "distforget.unlearn",
    "export": "distforget.export",
    "pretrain": "distforget.pretrain",
    "report": "distforget.report",
}


def main(argv: list[str] | None = None) -> int:
    """``distforget <command> [args]``: the same commands as ``python -m distforget.<command>``."""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: distforget {" + ",".join(COMMANDS) + "} [args...]\n\n"
              "  search    Ray Tune + Optuna search; Pareto front, report, best soup\n"
              "  unlearn   one run of the method or a baseline, without a search\n"
              "  export    a point of a finished search's front as an open_clip checkpoint\n"
              "  pretrain  pretrain the small CLIP on a labelled image set\n"
              "  report    rebuild a search's front, plot and report from its results",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
