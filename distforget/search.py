"""``python -m distforget.search``: the Ray Tune + Optuna search, the product's main job.

    python -m distforget.search                          # the embedded default, a few minutes
    python -m distforget.search --config my.yaml [key=value ...]
    ray job submit --working-dir . -- python -m distforget.search --config my.yaml

It joins the Ray cluster in ``RAY_ADDRESS`` (as it is under ``ray job submit``) or starts a
local one, and leaves everything under ``<output.storage>/<output.name>/``; running it again on
the same folder resumes the search.
"""

from __future__ import annotations

import argparse

from distforget.cli import add_common_arguments, config_from_args, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distforget.search",
        description="Search the method's knobs with Ray Tune + Optuna; report the Pareto front "
                    "between forgetting and keeping, and export the chosen soup.")
    add_common_arguments(parser)

    def run(args) -> int:
        cfg = config_from_args(args)
        from distforget.distributed.tuner import run_search
        run_search(cfg)
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
