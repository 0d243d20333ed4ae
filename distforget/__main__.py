"""``python -m distforget <command> [args]``: the ``distforget`` console script without the
script on PATH."""

from distforget.cli import main

raise SystemExit(main(prog="python -m distforget"))
