"""``distforget search``: the Ray Tune + Optuna search, the product's main job.

    distforget search                          # the embedded default, a few minutes
    distforget search --config my.yaml [key=value ...]
    ray job submit --working-dir . -- python -m distforget.search --config my.yaml

It joins the Ray cluster in ``RAY_ADDRESS`` (as it is under ``ray job submit``) or starts a
local one, and leaves everything under ``<output.storage>/<output.name>/``; running it again on
the same folder resumes the search. A run folder that cannot be created or written is refused
before Ray starts. Ctrl-C (SIGINT) or SIGTERM stops it with the finished trials kept and the
report headed as interrupted; it prints the command that resumes it and exits 130 or 143.
"""

from __future__ import annotations

import shlex
import sys

from distforget.cli import add_common_arguments, command_parser, config_from_args, run_cli


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = command_parser(
        "search", prog=prog, takes_config=True,
        description="Search the method's knobs with Ray Tune + Optuna; report the Pareto front "
                    "between forgetting and keeping, and export the chosen soup.")
    add_common_arguments(parser)
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray Train's own lines (worker groups, per-epoch "
                             "checkpoints); the same as output.verbose=true")
    given = list(sys.argv[1:] if argv is None else argv)

    def run(args) -> int:
        if args.verbose:
            args.overrides = [*args.overrides, "output.verbose=true"]
        cfg = config_from_args(args)
        from distforget import storage
        from distforget.distributed.tuner import run_search
        from distforget.interrupts import SearchInterrupted
        from distforget.run_folder import RunFolder

        storage.check_writable_folder(RunFolder.of(cfg).root, "output folder (output.storage, "
                                                             "output.name)")
        try:
            run_search(cfg)
        except SearchInterrupted as stop:
            print(f"{parser.prog}: interrupted ({stop.name}); to resume, run the same command:"
                  f"\n  {parser.prog} {shlex.join(given)}".rstrip(), file=sys.stderr)
            return stop.exit_code
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
