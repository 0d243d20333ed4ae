"""Data sources: image folder, Parquet manifest, generated data, torchvision's CIFAR-10 and the
ImageNet layout, each read into the internal form (``distforget.data.sources.ImageTable``) by
``load_data``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from distforget.config import DataConfig
from distforget.data.cifar10 import CLASSES as CIFAR10_CLASSES
from distforget.data.cifar10 import holds_parquet
from distforget.data.generated import generate
from distforget.data.imagenet import read_imagenet
from distforget.data.sources import (IMAGE_SUFFIXES, SPLIT_NAMES, ImageTable, StoredSize,
                                     decode_cached, default_cache_dir, from_arrays, label_table,
                                     manifest_files, read_manifest_file, save_atomic_npy, sha_of)
from distforget.errors import DataError
from distforget.storage import atomic_path


def read_parquet_manifest(path: str | Path, size: int | None | StoredSize,
                          cache_dir: Path) -> ImageTable:
    """A Parquet manifest: ``image`` (encoded bytes) or ``path`` (relative to the manifest's
    folder), ``class_name``, optional ``subgroup`` and ``split``.

    ``path`` may also be a folder of manifests (``train.parquet``, ``test.parquet``, ...); a file
    without a ``split`` column then takes its name as the split.
    """
    path = Path(path)
    files = manifest_files(path, "data.path")
    frames, blobs, sources = [], [], []
    for f in files:
        df, b, s = read_manifest_file(f, split_from_name=path.is_dir())
        frames.append(df)
        blobs.extend(b)
        sources.extend(s)
    df = pd.concat(frames, ignore_index=True)
    shas = [sha_of(bytes(b)) for b in blobs]
    images = decode_cached(blobs, sources, shas, size, cache_dir)
    table = label_table(df["class_name"], df.get("subgroup"), df.get("split"), sources, shas)
    return ImageTable(images, table)


def _class_rows(class_dir: Path, split: str | None) -> list[tuple]:
    """(split, class, subgroup, file) of ``<class>/<image>`` or ``<class>/<subgroup>/<image>``."""
    entries = sorted(class_dir.iterdir())
    subdirs = [e for e in entries if e.is_dir()]
    files = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES]
    if subdirs and files:
        raise DataError(
            f"folder {str(class_dir)!r} holds both images and subgroup folders: expected "
            "<class>/<image> or <class>/<subgroup>/<image>")
    if not subdirs:
        return [(split, class_dir.name, None, f) for f in files]
    return [(split, class_dir.name, sub.name, f) for sub in subdirs for f in sorted(sub.iterdir())
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]


def read_image_folder(root: str | Path, size: int | None | StoredSize,
                      cache_dir: Path) -> ImageTable:
    """``ROOT/<split>/<class>/<subgroup>/<image>``; the subgroup level may be absent, and so may
    the split level (``ROOT/<class>/...``: no top folder is named like a split, and the content
    hash then holds images out, as for a manifest without a split column)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.path {str(root)!r}: no image folder there")
    top = sorted(p for p in root.iterdir() if p.is_dir())
    named = [p.name for p in top if p.name.lower() in SPLIT_NAMES]  # Train/ is train/
    if named and len(named) < len(top):
        other = next(p.name for p in top if p.name.lower() not in SPLIT_NAMES)
        raise DataError(
            f"image folder {str(root)!r} mixes split folders ({', '.join(named)}) with other "
            f"folders ({other!r}): expected ROOT/<split>/<class>/... with <split> one of "
            f"{', '.join(SPLIT_NAMES)}, or ROOT/<class>/... without a split level")
    if named:
        rows = [r for split_dir in top for class_dir in sorted(split_dir.iterdir())
                if class_dir.is_dir() for r in _class_rows(class_dir, split_dir.name.lower())]
    else:
        rows = [r for class_dir in top for r in _class_rows(class_dir, None)]
    if not rows:
        raise DataError(f"image folder {str(root)!r} holds no images: expected "
                        "ROOT/[<split>/]<class>/[<subgroup>/]<image>")
    splits, classes, subgroups, files = zip(*rows)
    blobs = [f.read_bytes() for f in files]
    shas = [sha_of(b) for b in blobs]
    sources = [str(f) for f in files]
    images = decode_cached(blobs, sources, shas, size, cache_dir)
    table = label_table(classes, pd.Series(subgroups, dtype=object),
                        pd.Series(splits, dtype=object), sources, shas)
    return ImageTable(images, table)


def read_torchvision_cifar10(root: str | Path) -> ImageTable:
    """CIFAR-10 through torchvision's download (needs the network the first time)."""
    from torchvision.datasets import CIFAR10

    frames, arrays = [], []
    for split, train in (("train", True), ("test", False)):
        try:
            ds = CIFAR10(root=str(root), train=train, download=True)
        except Exception as exc:  # URLError, OSError, checksum failures
            raise DataError(
                f"CIFAR-10 could not be downloaded into {str(root)!r} ({exc}); without the "
                "network set data.path to a Parquet copy of CIFAR-10") from None
        arrays.append(np.asarray(ds.data, dtype=np.uint8))
        frames.append(pd.DataFrame({
            "class_name": [ds.classes[t] for t in ds.targets],
            "split": split,
            "source": [f"cifar10/{split}/{i:05d}" for i in range(len(ds.targets))],
        }))
    return from_arrays(np.concatenate(arrays), pd.concat(frames, ignore_index=True))


def read_cifar10(path: str | Path | None, size: int | None | StoredSize,
                 cache_dir: Path) -> ImageTable:
    """CIFAR-10 as an ``ImageTable`` (see ``distforget.data.cifar10`` for what ``path`` may
    be)."""
    if path is None or not holds_parquet(path):
        return read_torchvision_cifar10(path or Path(cache_dir) / "cifar10")
    data = read_parquet_manifest(path, size, cache_dir)
    if set(data.classes) != set(CIFAR10_CLASSES):
        raise DataError(f"data.path {str(path)!r} is a Parquet manifest, but its classes "
                        f"({', '.join(data.classes[:12])}) are not CIFAR-10's: expected "
                        f"{', '.join(CIFAR10_CLASSES)}, or data.format: parquet for other images")
    return data


def read_generated(cfg: DataConfig, cache_dir: Path) -> ImageTable:
    g = cfg.generated
    key = hashlib.sha256(repr(("generated-v1", g.train_per_subgroup, g.test_per_subgroup,
                               g.image_size, g.seed)).encode()).hexdigest()[:24]
    img_path = cache_dir / "generated" / f"{key}.npy"
    tab_path = cache_dir / "generated" / f"{key}.parquet"
    if img_path.is_file() and tab_path.is_file():
        images, table = np.load(img_path, mmap_mode="r"), pd.read_parquet(tab_path)
        return ImageTable(images, table)
    images, table = generate(train_per_subgroup=g.train_per_subgroup,
                             test_per_subgroup=g.test_per_subgroup,
                             image_size=g.image_size, seed=g.seed)
    result = from_arrays(images, table)
    save_atomic_npy(img_path, result.images)
    with atomic_path(tab_path) as tmp:  # the table last: both files present = complete
        result.table.to_parquet(tmp, index=False)
    return result


def _read(cfg: DataConfig, size: StoredSize, cache_dir: Path) -> ImageTable:
    if cfg.format == "generated":
        return read_generated(cfg, cache_dir)
    if cfg.path is None and cfg.format != "cifar10":
        raise DataError(f"data.path is required for data.format {cfg.format!r}")
    if cfg.format == "parquet":
        return read_parquet_manifest(cfg.path, size, cache_dir)
    if cfg.format == "folder":
        return read_image_folder(cfg.path, size, cache_dir)
    if cfg.format == "cifar10":  # torchvision's download, or a local Parquet copy
        return read_cifar10(cfg.path, size, cache_dir)
    if cfg.format == "imagenet":
        return read_imagenet(cfg.path, size, cache_dir)
    # the config's Literal type makes this unreachable
    raise DataError(f"data.format {cfg.format!r} is not supported")


def load_data(cfg: DataConfig, cache_dir: Path | None = None, *, model_size: int | None = None,
              log: Callable[[str], None] | None = None) -> ImageTable:
    """Read the configured source into the internal form, filtered to ``cfg.classes``.

    With ``data.image_size`` unset, images keep their native size when it is one square size;
    otherwise they are stored at ``model_size`` (the model's input size, said in ``log``), or,
    without one, refused with the error that names the first image out of line.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fallback = model_size if cfg.image_size is None else None
    data = _read(cfg, StoredSize(cfg.image_size, fallback, log), cache_dir)
    if cfg.classes:
        known = set(data.table["class_name"])
        missing = [c for c in cfg.classes if c not in known]
        if missing:
            raise DataError(f"data.classes names {missing[0]!r}, which is not in the data "
                            f"(classes: {', '.join(sorted(known)[:20])})")
        keep = data.table["class_name"].isin(cfg.classes).to_numpy()
        data = ImageTable(np.asarray(data.images)[keep], data.table[keep].reset_index(drop=True))
    return data
