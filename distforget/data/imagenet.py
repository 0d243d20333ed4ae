"""ImageNet-1K: the folder layout or a manifest, and the WordNet hierarchy above its classes.

Class names are open_clip's own (``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``, in the
sorted ILSVRC-2012 wnid order), so the zero-shot head is the one open_clip evaluates with. Two
pairs of wnids share a name there ("missile": n03773504, n04008634; "sunglasses": n04355933,
n04356056); a zero-shot head cannot tell such a pair apart, so each pair is one class here and
the data has 998 classes.

The hierarchy comes from ``imagenet_hierarchy.json.gz`` beside this file: every WordNet 3.0
noun synset on a hypernym path of the 1000 classes, with its lemmas and parents (made by
``tools/make_imagenet_hierarchy.py``, which says from what). Synsets are named by wnid
("n02484322") or by one of their lemmas ("monkey", "New World monkey"); class names work too.

Sibling rule: the siblings of a class are the other ImageNet classes below its nearest ancestor
that has any other class below it (ancestors are visited by their distance in is-a steps; all
ancestors at the first distance that has other classes count). Marmoset's parent, "New World
monkey", holds five other classes, so those are its siblings; ``classes_under("monkey")`` adds
the Old World monkeys.

Reading the folder layout decodes (and hashes) every image it finds, so for the paper's
ImageNet scenarios point ``data.path`` at a tree whose ``train/`` holds only the classes a
stage trains on: ``python -m distforget.data.imagenet subset`` makes one from a full ImageNet
with symbolic links.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd

from distforget.data.sources import (IMAGE_SUFFIXES, ImageTable, StoredSize, decode_cached,
                                     label_table, sha_of)
from distforget.errors import DataError, did_you_mean

HIERARCHY_FILE = Path(__file__).with_name("imagenet_hierarchy.json.gz")
# Split folders read from the layout, in this order ("val" is an evaluation split).
SPLIT_FOLDERS = ("train", "val", "validation", "test")


@dataclass(frozen=True)
class Hierarchy:
    """The 1000 ILSVRC-2012 wnids, their open_clip names, and the WordNet synsets above them."""

    wnids: tuple[str, ...]                      # sorted, as open_clip's class names
    names: tuple[str, ...]                      # open_clip's name of each wnid
    lemmas: Mapping[str, tuple[str, ...]]       # synset wnid -> lemmas
    parents: Mapping[str, tuple[str, ...]]      # synset wnid -> parent wnids

    @functools.cached_property
    def name_of(self) -> dict[str, str]:
        return dict(zip(self.wnids, self.names))

    @functools.cached_property
    def wnids_by_name(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for w, n in zip(self.wnids, self.names):
            out[n] = out.get(n, ()) + (w,)
        return out

    @functools.cached_property
    def by_lemma(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for w in sorted(self.lemmas):
            for lemma in self.lemmas[w]:
                key = _norm(lemma)
                if w not in out.get(key, ()):
                    out[key] = out.get(key, ()) + (w,)
        return out

    @functools.cached_property
    def below(self) -> dict[str, frozenset[str]]:
        """Synset wnid -> the class wnids at or below it."""
        out: dict[str, set[str]] = {w: set() for w in self.lemmas}
        for c in self.wnids:
            for a in (c, *self.ancestors(c)):
                out[a].add(c)
        return {w: frozenset(v) for w, v in out.items()}

    def ancestors(self, wnid: str) -> tuple[str, ...]:
        """Every synset above ``wnid``, nearest first (breadth-first over parents)."""
        return tuple(w for level in self.ancestor_levels(wnid) for w in level)

    def ancestor_levels(self, wnid: str) -> list[tuple[str, ...]]:
        """Ancestors grouped by distance: [parents, grandparents, ...], each seen once."""
        seen, levels, frontier = {wnid}, [], [wnid]
        while frontier:
            nxt = []
            for w in frontier:
                for p in self.parents.get(w, ()):
                    if p not in seen:
                        seen.add(p)
                        nxt.append(p)
            if nxt:
                levels.append(tuple(nxt))
            frontier = nxt
        return levels


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").split()).casefold()


@functools.cache
def hierarchy() -> Hierarchy:
    """The shipped hierarchy, read once per process."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    with gzip.open(HIERARCHY_FILE, "rt", encoding="utf-8") as f:
        data = json.load(f)
    wnids = tuple(data["classes"])
    if len(wnids) != len(IMAGENET_CLASSNAMES):
        raise DataError(f"{HIERARCHY_FILE.name} lists {len(wnids)} classes but open_clip has "
                        f"{len(IMAGENET_CLASSNAMES)} ImageNet class names")
    synsets = data["synsets"]
    return Hierarchy(wnids=wnids, names=tuple(IMAGENET_CLASSNAMES),
                     lemmas={w: tuple(s["lemmas"]) for w, s in synsets.items()},
                     parents={w: tuple(s["parents"]) for w, s in synsets.items()})



def class_name(wnid: str) -> str:
    """open_clip's class name of an ILSVRC-2012 wnid."""
    h = hierarchy()
    if wnid not in h.name_of:
        raise DataError(f"{wnid!r} is not one of the 1000 ImageNet-1K wnids"
                        f"{did_you_mean(wnid, h.wnids)}")
    return h.name_of[wnid]


def wnids_of(name: str) -> tuple[str, ...]:
    """The wnids of an open_clip ImageNet class name (two for "missile" and "sunglasses")."""
    h = hierarchy()
    if name not in h.wnids_by_name:
        raise DataError(f"{name!r} is not an ImageNet-1K class name (open_clip's names)"
                        f"{did_you_mean(name, h.wnids_by_name)}")
    return h.wnids_by_name[name]


def _class_wnids(wnid_or_name: str) -> tuple[str, ...]:
    h = hierarchy()
    if wnid_or_name in h.name_of:
        return (wnid_or_name,)
    return wnids_of(wnid_or_name)


def resolve_synset(synset: str) -> str:
    """The wnid of a synset named by wnid, lemma ("New World monkey") or class name."""
    h = hierarchy()
    if synset in h.lemmas:
        return synset
    if synset in h.wnids_by_name and len(h.wnids_by_name[synset]) == 1:
        return h.wnids_by_name[synset][0]
    found = h.by_lemma.get(_norm(synset), ())
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        options = "; ".join(f"{w} ({', '.join(h.lemmas[w])})" for w in found)
        raise DataError(f"synset {synset!r} is ambiguous: it names {options}; use the wnid")
    lemmas = {lemma.replace("_", " ") for ls in h.lemmas.values() for lemma in ls}
    raise DataError(f"synset {synset!r} is not a wnid or lemma of the WordNet synsets above "
                    f"the ImageNet-1K classes{did_you_mean(synset.replace('_', ' '), lemmas)}")


def synset_name(wnid: str) -> str:
    """A synset's first lemma, as written in prose ("New World monkey")."""
    return hierarchy().lemmas[resolve_synset(wnid)][0].replace("_", " ")


def parents(wnid_or_name: str) -> tuple[str, ...]:
    """The parent synsets (wnids) of a synset or class; most have one, a few have two."""
    h = hierarchy()
    found = (_class_wnids(wnid_or_name) if wnid_or_name in h.wnids_by_name
             else (resolve_synset(wnid_or_name),))
    return tuple(dict.fromkeys(p for w in found for p in h.parents[w]))


def classes_under(synset: str) -> tuple[str, ...]:
    """open_clip names of the ImageNet-1K classes at or below a synset, in wnid order."""
    h = hierarchy()
    below = h.below[resolve_synset(synset)]
    return tuple(dict.fromkeys(h.name_of[w] for w in h.wnids if w in below))


def siblings(wnid_or_name: str) -> tuple[str, ...]:
    """The class's semantic siblings by the module's sibling rule, as class names."""
    h = hierarchy()
    own = _class_wnids(wnid_or_name)
    own_names = {h.name_of[w] for w in own}
    levels: list[set[str]] = []
    for w in own:
        for d, level in enumerate(h.ancestor_levels(w)):
            if d == len(levels):
                levels.append(set())
            levels[d].update(level)
    for level in levels:
        below = set().union(*(h.below[a] for a in level))
        names = {h.name_of[c] for c in below} - own_names
        if names:
            return tuple(dict.fromkeys(h.name_of[c] for c in h.wnids
                                       if c in below and h.name_of[c] in names))
    return ()


# --- reading -------------------------------------------------------------------------------------

def _to_class_name(value: str, where: str) -> str:
    h = hierarchy()
    if value in h.name_of:
        return h.name_of[value]
    if value in h.wnids_by_name:
        return value
    raise DataError(f"{where}: {value!r} is neither an ImageNet-1K wnid nor one of open_clip's "
                    f"ImageNet class names{did_you_mean(value, [*h.wnids, *h.names])}")


def _read_folders(root: Path, size: int | None | StoredSize,
                  cache_dir: Path) -> ImageTable:
    rows = []
    for split in SPLIT_FOLDERS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        loose = [e for e in split_dir.iterdir() if e.is_file()
                 and e.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            raise DataError(f"{str(split_dir)!r} holds images directly ({loose[0].name}); "
                            f"expected {split}/<wnid>/<image> (sort the ILSVRC validation "
                            "images into wnid folders, or use a Parquet manifest)")
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            name = _to_class_name(class_dir.name, f"folder {str(class_dir)!r}")
            rows.extend((split, name, f) for f in sorted(class_dir.iterdir())
                        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not rows:
        raise DataError(f"ImageNet folder {str(root)!r} holds no images: expected "
                        f"ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG")
    splits, names, files = zip(*rows)
    # Hash now and read again only on a cache miss: the encoded images are never all in memory.
    shas = [sha_of(f.read_bytes()) for f in files]
    sources = [str(f) for f in files]
    images = decode_cached(lambda i: files[i].read_bytes(), sources, shas, size, cache_dir)
    table = label_table(names, None, pd.Series(splits, dtype=object), sources, shas)
    return ImageTable(images, table)


def _read_manifests(path: Path, size: int | None | StoredSize,
                    cache_dir: Path) -> ImageTable:
    """Parquet manifests as in the parquet form, with ``class_name`` holding wnids or
    open_clip names, or a ``wnid`` column in its place."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    frames, blobs, sources = [], [], []
    for f in files:
        try:
            columns = pq.read_schema(f).names
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise DataError(f"{str(f)!r} is not a readable Parquet file: {exc}") from None
        label = "wnid" if "wnid" in columns else "class_name"
        if label not in columns or ("image" not in columns and "path" not in columns):
            raise DataError(f"ImageNet manifest {str(f)!r} needs a column 'wnid' or "
                            "'class_name' and a column 'image' (encoded bytes) or 'path' "
                            f"(columns: {', '.join(columns)})")
        wanted = [c for c in ("image", "path", label, "subgroup", "split") if c in columns]
        df = pd.read_parquet(f, columns=wanted)
        if len(df) == 0:
            raise DataError(f"ImageNet manifest {str(f)!r} has no rows")
        df["class_name"] = [_to_class_name(str(v), f"manifest {str(f)!r}, column {label!r}")
                            for v in df[label]]
        if "split" not in df and path.is_dir():
            df["split"] = f.stem
        if "image" in df:
            bad = [i for i, b in enumerate(df["image"]) if not isinstance(b, (bytes, bytearray))]
            if bad:
                raise DataError(f"ImageNet manifest {str(f)!r}: row {bad[0]} has no image bytes")
            blobs.extend(bytes(b) for b in df["image"])
            sources.extend(f"{f.name}#row{i}" for i in range(len(df)))
        else:
            paths = [f.parent / str(p) for p in df["path"]]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise DataError(f"ImageNet manifest {str(f)!r}: image file "
                                f"{str(missing[0])!r} does not exist")
            blobs.extend(p.read_bytes() for p in paths)
            sources.extend(str(p) for p in paths)
        frames.append(df.drop(columns=[c for c in ("image",) if c in df]))
    df = pd.concat(frames, ignore_index=True)
    shas = [sha_of(b) for b in blobs]
    images = decode_cached(blobs, sources, shas, size, cache_dir)
    table = label_table(df["class_name"], df.get("subgroup"), df.get("split"), sources, shas)
    return ImageTable(images, table)


def read_imagenet(path: str | Path, image_size: int | None | StoredSize,
                  cache_dir: Path) -> ImageTable:
    """ImageNet-1K as an ImageTable with open_clip's class names.

    ``path`` is the standard layout, ``ROOT/{train,val}/<wnid>/*.JPEG`` (either split may be
    absent; "validation" and "test" folders are read as evaluation splits), or a Parquet
    manifest (a file, or a folder of them) whose ``class_name`` holds wnids or open_clip
    names, or which has a ``wnid`` column instead. Images are stored at ``image_size``
    (shorter side resized, centre crop), which ImageNet's mixed sizes need.
    """
    path = Path(path)
    if path.is_dir() and any((path / s).is_dir() for s in SPLIT_FOLDERS):
        return _read_folders(path, image_size, Path(cache_dir))
    if path.is_file() or (path.is_dir() and any(path.glob("*.parquet"))):
        return _read_manifests(path, image_size, Path(cache_dir))
    raise DataError(f"data.path {str(path)!r}: expected an ImageNet folder with train/ and "
                    "val/ (each holding <wnid>/ folders) or a Parquet manifest")


# --- subset for the paper's scenarios ------------------------------------------------------------

def scenario_classes(forget_class: str, retain_classes=(), retain_synset: str | None = None
                     ) -> tuple[str, ...]:
    """The classes a scenario trains on: the forget class and every retained one."""
    out = [forget_class, *retain_classes]
    if retain_synset is not None:
        out.extend(classes_under(retain_synset))
    return tuple(dict.fromkeys(out))


def make_subset(src: str | Path, out: str | Path, classes, train_per_class: int | None = None
                ) -> int:
    """Symbolic-link tree ``OUT/train/<wnid>/`` for ``classes`` only (the first
    ``train_per_class`` images of each in name order) and ``OUT/val`` -> ``SRC/val``.

    Returns the number of training images linked.
    """
    src, out = Path(src).resolve(), Path(out)
    if not (src / "train").is_dir() or not (src / "val").is_dir():
        raise DataError(f"{str(src)!r} is not an ImageNet folder with train/ and val/")
    wanted = [(name, wnid) for name in classes for wnid in wnids_of(name)]
    for name, wnid in wanted:  # check everything before linking anything
        if not (src / "train" / wnid).is_dir():
            raise DataError(f"{str(src / 'train' / wnid)!r} does not exist (class {name!r})")
    count = 0
    for _, wnid in wanted:
        files = sorted(f for f in (src / "train" / wnid).iterdir()
                       if f.suffix.lower() in IMAGE_SUFFIXES)
        dst_dir = out / "train" / wnid
        dst_dir.mkdir(parents=True, exist_ok=True)
        for f in files[:train_per_class]:
            link = dst_dir / f.name
            if not link.is_symlink():
                os.symlink(f, link)
            count += 1
    val = out / "val"
    if not val.exists():
        out.mkdir(parents=True, exist_ok=True)
        os.symlink(src / "val", val, target_is_directory=True)
    return count


def main(argv: list[str] | None = None) -> int:
    from distforget.cli import run_cli

    parser = argparse.ArgumentParser(
        prog="python -m distforget.data.imagenet",
        description="The ImageNet-1K class hierarchy (shipped, offline) and scenario subsets.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("siblings", help="a class's siblings by the sibling rule")
    p.add_argument("name", help="class name or wnid, e.g. marmoset")
    p = sub.add_parser("under", help="the classes under a synset")
    p.add_argument("synset", help="wnid or lemma, e.g. monkey or n02484322")
    p = sub.add_parser("subset", help="link a full ImageNet's train/ for a scenario's classes "
                                      "only, and its val/, into a new folder")
    p.add_argument("--src", required=True, help="ImageNet folder with train/ and val/")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--config", required=True, help="run config naming the scenario")
    p.add_argument("--train-per-class", type=int, default=None,
                   help="at most this many training images per class (name order)")

    def run(args) -> int:
        if args.command == "siblings":
            print("\n".join(siblings(args.name)))
        elif args.command == "under":
            wnid = resolve_synset(args.synset)
            print(f"# {wnid} ({synset_name(wnid)})")
            print("\n".join(classes_under(wnid)))
        else:
            from distforget.config import load_config

            s = load_config(args.config).scenario
            classes = scenario_classes(s.forget_class, s.retain_classes, s.retain_synset)
            n = make_subset(args.src, args.out, classes, args.train_per_class)
            print(f"linked {n} training images of {len(classes)} classes and val/ into "
                  f"{args.out}")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
