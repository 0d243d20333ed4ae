"""``distforget search``: the Ray Tune + Optuna search, the product's main job.

    distforget search                          # the embedded default, a few minutes
    distforget search --config my.yaml [key=value ...]
    ray job submit --working-dir . -- python -m distforget.search --config my.yaml

It joins the Ray cluster in ``RAY_ADDRESS`` (as it is under ``ray job submit``) or starts a
local one, and leaves everything under ``<output.storage>/<output.name>/``; running it again on
the same folder resumes the search. A run folder that cannot be created or written is refused
before Ray starts.
"""

from __future__ import annotations

from distforget.cli import add_common_arguments, command_parser, config_from_args, run_cli


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = command_parser(
        "search", prog=prog, takes_config=True,
        description="Search the method's knobs with Ray Tune + Optuna; report the Pareto front "
                    "between forgetting and keeping, and export the chosen soup.")
    add_common_arguments(parser)

    def run(args) -> int:
        cfg = config_from_args(args)
        from distforget import storage
        from distforget.distributed.tuner import run_search
        from distforget.run_folder import RunFolder

        storage.check_writable_folder(RunFolder.of(cfg).root, "output folder (output.storage, "
                                                             "output.name)")
        run_search(cfg)
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
