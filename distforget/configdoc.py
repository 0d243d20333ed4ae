"""``distforget config show``: the resolved run config as YAML, every key with its comment.

    distforget config show                                  # the embedded default
    distforget config show --config configs/cifar10.yaml search.num_trials=32

The comments are read at run time from the source of ``distforget/config.py`` (the ``#`` lines
above each dataclass field, each section's docstring), so they are never a copy that drifts;
each key also says what values it takes. The output is itself a valid config file: ``config
show ... > my.yaml`` and ``--config my.yaml`` give the same run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import lru_cache
from typing import Any

import yaml

from distforget import config as config_module
from distforget.cli import add_common_arguments, command_parser, config_from_args, run_cli


@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, list[str]]:
    """The ``#`` comment lines written directly above each field of dataclass ``cls``."""
    source_lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(source_lines))
    lines = source.splitlines()
    [node] = ast.parse(source).body
    out: dict[str, list[str]] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        comment: list[str] = []
        i = stmt.lineno - 2  # the line above the field (0-based)
        while i >= 0 and lines[i].strip().startswith("#"):
            comment.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        out[stmt.target.id] = comment
    return out


def section_doc(cls: type) -> list[str]:
    """A section's docstring as comment lines (its first paragraph)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return doc.split("\n\n")[0].splitlines() if doc else []


def accepted(cls: type, f: dataclasses.Field) -> str:
    """What a key accepts, e.g. "a number > 0 and <= 1" or "an integer >= 1, or null"."""
    hint = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        [hint] = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        text = "a list, each " + config_module._type_name(typing.get_args(hint)[0])
    else:
        text = config_module._type_name(hint)
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bounds = f.metadata.get("bounds", {})
    if bounds:
        text += " " + " and ".join(f"{signs[k]} {v}" for k, v in bounds.items())
    return text + (", or null" if optional else "")


def _scalar(name: str, value: Any) -> str:
    """``name: value`` in YAML, a list in flow style."""
    flow = None if isinstance(value, list) else False  # None: flow style for the list only
    text = yaml.safe_dump({name: value}, default_flow_style=flow, sort_keys=False, width=10**6)
    return text.rstrip("\n")


def commented_yaml(cfg: Any, indent: int = 0) -> list[str]:
    """The lines of ``cfg`` (a config dataclass) as YAML with each key's comment above it."""
    pad = " " * indent
    cls = type(cfg)
    comments = field_comments(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            if out or indent == 0:
                out.append("")
            out += [f"{pad}# {line}".rstrip() for line in section_doc(type(value))]
            out.append(f"{pad}{f.name}:")
            out += commented_yaml(value, indent + 2)
            continue
        out += [f"{pad}# {line}".rstrip() for line in comments.get(f.name, [])]
        if isinstance(value, tuple):
            value = list(value)
        out.append(f"{pad}{_scalar(f.name, value)}  # {accepted(cls, f)}")
    return out


def show(cfg: config_module.RunConfig, source: str) -> str:
    """The whole config as commented YAML."""
    header = [f"# distforget run config, resolved from {source}.",
              "# Each key: its comment from distforget/config.py, then what it accepts."]
    return "\n".join(header + commented_yaml(cfg)) + "\n"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = command_parser(
        "configdoc", prog=prog, takes_config=True,
        description="Print the resolved run config (the defaults, a --config file and key=value "
                    "overrides) as YAML, every key with its comment. The output is a valid "
                    "--config file.")
    parser.add_argument("action", choices=["show"], help="what to do (show: print the config)")
    add_common_arguments(parser)

    def run(args) -> int:
        cfg = config_from_args(args)
        source = " + ".join([args.config or "the embedded default", *args.overrides])
        print(show(cfg, source), end="")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
