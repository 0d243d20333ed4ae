"""Class-hierarchy manifests: classes grouped into super-classes, each class a labelled subgroup.

Forgetting one labelled subgroup of a class (dogs among animals) while keeping its other
subgroups (the other animals) needs data whose class has labelled subgroups. Any labelled image
set becomes one by grouping some of its classes under a super-class: the super-class becomes
``class_name`` and the original class the ``subgroup``; classes in no group stay classes of
their own (without a subgroup). The split column comes from the input.

    python -m distforget.data.hierarchy --input ../shared/data/cifar10 \\
        --out data/cifar10-hierarchy.parquet

groups CIFAR-10's six animal classes (bird, cat, deer, dog, frog, horse) under ``animal`` and
keeps the four vehicle classes (airplane, automobile, ship, truck) as classes; the default
suite scenario forgets ``animal/dog`` and measures zero-shot accuracy on the vehicles. Other
hierarchies are given with ``--group NAME=CLASS,CLASS,...`` (repeatable), e.g.
``--group vehicle=airplane,automobile,ship,truck --group animal=bird,cat,deer,dog,frog,horse``.

The input is a Parquet manifest or a folder of them (a file without a ``split`` column takes
its name as the split, as ``data.format: parquet`` reads it). The encoded image bytes are copied
unchanged, so the decoded-image cache is shared with the input. ``--per-class N`` keeps the
first N images of each (split, class) after ordering by content hash and a shuffle seeded by
``sha256(f"{seed}:{split}:{class}")`` (for small manifests in tests and quick tries).

An image folder needs no builder: ``ROOT/<split>/<super-class>/<class>/<image>`` is already the
hierarchy (the folder form's subgroup level).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from distforget.data.sources import manifest_files, read_manifest_file, sha_of
from distforget.errors import ConfigError, DataError, did_you_mean

CIFAR10_GROUPS = {"animal": ("bird", "cat", "deer", "dog", "frog", "horse")}


def parse_groups(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``NAME=CLASS,CLASS,...`` items as a mapping; a class in two groups is an error."""
    groups: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, sep, members = item.partition("=")
        classes = tuple(c.strip() for c in members.split(",") if c.strip())
        if not sep or not name.strip() or not classes:
            raise ConfigError(f"--group {item!r}: expected NAME=CLASS,CLASS,... "
                              "(e.g. animal=cat,dog)")
        if name.strip() in groups:
            raise ConfigError(f"--group {name.strip()!r} is given twice")
        groups[name.strip()] = classes
    return groups


def _check_groups(groups: Mapping[str, Sequence[str]], classes: Sequence[str]) -> None:
    owner: dict[str, str] = {}
    for name, members in groups.items():
        for c in members:
            if c not in classes:
                raise DataError(f"group {name!r} names class {c!r}, which is not in the data"
                                f"{did_you_mean(c, classes)}; classes: {', '.join(classes)}")
            if c in owner:
                raise DataError(f"class {c!r} is in two groups: {owner[c]!r} and {name!r}")
            owner[c] = name
    kept = set(classes) - set(owner)
    clash = sorted(set(groups) & kept)
    if clash:
        raise DataError(f"group name {clash[0]!r} is also a class that stays ungrouped; "
                        "choose another group name")


def build_hierarchy(source: str | Path, groups: Mapping[str, Sequence[str]], *,
                    per_class: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The hierarchy manifest frame: ``image`` (the input's bytes), ``class_name`` (the group,
    or the class when ungrouped), ``subgroup`` (the class within a group, else None),
    ``split``, ``path`` (where the image came from)."""
    source = Path(source)
    files = manifest_files(source, "--input")
    frames = []
    for f in files:
        df, blobs, sources = read_manifest_file(f, split_from_name=source.is_dir())
        frames.append(pd.DataFrame({"image": [bytes(b) for b in blobs],
                                    "class_name": df["class_name"].astype(str).to_numpy(),
                                    "split": (df["split"].astype(str).to_numpy()
                                              if "split" in df else None),
                                    "path": sources}))
    frame = pd.concat(frames, ignore_index=True)
    classes = sorted(frame["class_name"].unique())
    _check_groups(groups, classes)
    if per_class is not None:
        frame["sha"] = [sha_of(b) for b in frame["image"]]
        keep = []
        for (split, cls), part in frame.groupby(["split", "class_name"], dropna=False,
                                                 sort=True):
            ordered = part.sort_values("sha").index.to_numpy()
            digest = hashlib.sha256(f"{seed}:{split}:{cls}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            keep.extend(ordered[rng.permutation(len(ordered))][:per_class])
        frame = frame.loc[sorted(keep)].drop(columns="sha").reset_index(drop=True)
    group_of = {c: name for name, members in groups.items() for c in members}
    grouped = frame["class_name"].isin(group_of)
    return pd.DataFrame({
        "image": frame["image"],
        "class_name": frame["class_name"].map(lambda c: group_of.get(c, c)),
        "subgroup": frame["class_name"].where(grouped, None),
        "split": frame["split"],
        "path": frame["path"],
    })


def write_manifest(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write the manifest (through a temporary file and a rename)."""
    from distforget.storage import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    from distforget.cli import run_cli

    parser = argparse.ArgumentParser(
        prog="python -m distforget.data.hierarchy",
        description="Group classes of a labelled Parquet image set into super-classes (each "
                    "class becoming a labelled subgroup) and write the manifest.")
    parser.add_argument("--input", required=True,
                        help="a Parquet manifest or a folder of them (e.g. ../shared/data/cifar10)")
    parser.add_argument("--out", required=True, help="the manifest to write (.parquet)")
    parser.add_argument("--group", action="append", default=[], metavar="NAME=CLASS,...",
                        help="a super-class and its classes (repeatable; default: CIFAR-10's "
                             "animal=bird,cat,deer,dog,frog,horse)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="images per class and split (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --per-class selection")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")

    def run(args) -> int:
        groups = parse_groups(args.group) if args.group else CIFAR10_GROUPS
        frame = build_hierarchy(args.input, groups, per_class=args.per_class, seed=args.seed)
        write_manifest(frame, args.out)
        counts = frame.fillna({"subgroup": "-"}).groupby(
            ["class_name", "subgroup", "split"]).size().unstack(fill_value=0)
        print(counts.to_string())
        print(f"wrote {args.out}: {len(frame)} images")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
