"""Data sources: image folder, Parquet manifest, generated data, torchvision's CIFAR-10.

Every source becomes an ``ImageTable``: one uint8 array of decoded square images and a table of
labels (``class_name``, ``subgroup``, ``split``, ``source``, ``sha``). Images are decoded once
into a cache file keyed by the content hash of the encoded images and the stored size, and read
back memory-mapped, so processes on one node share the pages.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from distforget.config import DataConfig
from distforget.errors import DataError
from distforget.storage import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
EVAL_SPLITS = ("test", "val", "validation")


@dataclass(frozen=True)
class ImageTable:
    """Decoded images (uint8 [N, S, S, 3]) and one label row per image."""

    images: np.ndarray
    table: pd.DataFrame

    @property
    def has_subgroups(self) -> bool:
        return "subgroup" in self.table and bool(self.table["subgroup"].notna().any())

    @property
    def has_splits(self) -> bool:
        return "split" in self.table and bool(self.table["split"].notna().all())

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(self.table["class_name"].unique()))

    @property
    def fingerprint(self) -> str:
        """Content hash of every image and its labels, in row order."""
        h = hashlib.sha256()
        cols = ["sha", "class_name", "subgroup", "split"]
        for row in self.table.reindex(columns=cols).itertuples(index=False):
            h.update("\x1f".join("" if v is None or v != v else str(v) for v in row).encode())
            h.update(b"\x1e")
        return h.hexdigest()


def default_cache_dir() -> Path:
    """``$DISTFORGET_CACHE``, else ``$XDG_CACHE_HOME/distforget``, else ``~/.cache/distforget``."""
    if os.environ.get("DISTFORGET_CACHE"):
        return Path(os.environ["DISTFORGET_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "distforget"


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_atomic_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _to_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop, as open_clip does."""
    if img.size == (size, size):
        return img
    img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when that is enough
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_one(data: bytes, source: str, size: int | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if size is not None:
                img = _to_square(img, size)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image {source} cannot be decoded: {exc}") from None
    if size is None and arr.shape[0] != arr.shape[1]:
        raise DataError(f"image {source} is {arr.shape[1]}x{arr.shape[0]}, not square: "
                        "set data.image_size to store every image at one square size")
    return arr


def decode_cached(blobs: Sequence[bytes] | Callable[[int], bytes], sources: Sequence[str],
                  shas: Sequence[str], size: int | None, cache_dir: Path) -> np.ndarray:
    """Decode encoded images once into a memory-mapped uint8 cache keyed by content hash.

    ``blobs`` is a sequence of encoded images or a function from row number to bytes (so large
    folders are read lazily, and not at all on a cache hit).
    """
    key = hashlib.sha256(("\n".join(shas) + f"\nsize={size}").encode()).hexdigest()
    path = Path(cache_dir) / "decoded" / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # a torn file from an old crash: decode again
    get = blobs if callable(blobs) else blobs.__getitem__
    first = decode_one(get(0), sources[0], size)
    out = np.empty((len(sources),) + first.shape, dtype=np.uint8)
    out[0] = first
    for i in range(1, len(sources)):
        arr = decode_one(get(i), sources[i], size)
        if arr.shape != first.shape:
            raise DataError(
                f"image {sources[i]} is {arr.shape[1]}x{arr.shape[0]} but {sources[0]} is "
                f"{first.shape[1]}x{first.shape[0]}: set data.image_size to store every image "
                "at one size")
        out[i] = arr
    save_atomic_npy(path, out)
    return np.load(path, mmap_mode="r")


def _clean_optional(series: pd.Series | None, n: int) -> pd.Series:
    if series is None:
        return pd.Series([None] * n, dtype=object)
    return series.astype(object).where(series.notna(), None).map(
        lambda v: None if v is None or str(v) == "" else str(v))


def _table(class_names: Iterable, subgroups: pd.Series | None, splits: pd.Series | None,
           sources: Sequence[str], shas: Sequence[str]) -> pd.DataFrame:
    n = len(sources)
    return pd.DataFrame({
        "class_name": pd.Series(list(class_names), dtype=object).map(str),
        "subgroup": _clean_optional(subgroups, n).to_numpy(),
        "split": _clean_optional(splits, n).to_numpy(),
        "source": list(sources),
        "sha": list(shas),
    })


def read_manifest_file(path: Path, split_from_name: bool) -> tuple[pd.DataFrame, list, list]:
    """One manifest file: its label frame, encoded images and source names."""
    try:
        import pyarrow.parquet as pq
        schema_names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{str(path)!r} is not a readable Parquet file: {exc}") from None
    if "class_name" not in schema_names:
        raise DataError(f"Parquet manifest {str(path)!r} has no column 'class_name' "
                        f"(columns: {', '.join(schema_names)})")
    if "image" not in schema_names and "path" not in schema_names:
        raise DataError(f"Parquet manifest {str(path)!r} needs a column 'image' (encoded bytes) "
                        f"or 'path' (columns: {', '.join(schema_names)})")
    wanted = [c for c in ("image", "path", "class_name", "subgroup", "split") if c in schema_names]
    df = pd.read_parquet(path, columns=wanted)
    if len(df) == 0:
        raise DataError(f"Parquet manifest {str(path)!r} has no rows")
    if "split" not in df and split_from_name:
        df["split"] = path.stem
    if "image" in df:
        blobs = list(df["image"])
        bad = [i for i, b in enumerate(blobs) if not isinstance(b, (bytes, bytearray))]
        if bad:
            raise DataError(f"Parquet manifest {str(path)!r}: row {bad[0]} has no image bytes")
        sources = ([f"{path.name}:{p}" for p in df["path"]] if "path" in df
                   else [f"{path.name}#row{i}" for i in range(len(df))])
    else:
        files = [path.parent / str(p) for p in df["path"]]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"Parquet manifest {str(path)!r}: image file {str(missing[0])!r} "
                            "does not exist")
        blobs = [f.read_bytes() for f in files]
        sources = [str(f) for f in files]
    return df.drop(columns=[c for c in ("image",) if c in df]), blobs, sources


def read_parquet_manifest(path: str | Path, size: int | None, cache_dir: Path) -> ImageTable:
    """A Parquet manifest: ``image`` (encoded bytes) or ``path`` (relative to the manifest's
    folder), ``class_name``, optional ``subgroup`` and ``split``.

    ``path`` may also be a folder of manifests (``train.parquet``, ``test.parquet``, ...); a file
    without a ``split`` column then takes its name as the split.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(f"data.path {str(path)!r}: the folder holds no .parquet manifest")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"data.path {str(path)!r}: no Parquet manifest there")
    frames, blobs, sources = [], [], []
    for f in files:
        df, b, s = read_manifest_file(f, split_from_name=path.is_dir())
        frames.append(df)
        blobs.extend(b)
        sources.extend(s)
    df = pd.concat(frames, ignore_index=True)
    shas = [sha_of(bytes(b)) for b in blobs]
    images = decode_cached(blobs, sources, shas, size, cache_dir)
    table = _table(df["class_name"], df.get("subgroup"), df.get("split"), sources, shas)
    return ImageTable(images, table)


def read_image_folder(root: str | Path, size: int | None, cache_dir: Path) -> ImageTable:
    """``ROOT/<split>/<class>/<subgroup>/<image>``; the subgroup level may be absent."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.path {str(root)!r}: no image folder there")
    rows = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            entries = sorted(class_dir.iterdir())
            subdirs = [e for e in entries if e.is_dir()]
            files = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES]
            if subdirs and files:
                raise DataError(
                    f"folder {str(class_dir)!r} holds both images and subgroup folders: expected "
                    "ROOT/<split>/<class>/<image> or ROOT/<split>/<class>/<subgroup>/<image>")
            if subdirs:
                for sub in subdirs:
                    rows.extend((split_dir.name, class_dir.name, sub.name, f)
                                for f in sorted(sub.iterdir())
                                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            else:
                rows.extend((split_dir.name, class_dir.name, None, f) for f in files)
    if not rows:
        raise DataError(f"image folder {str(root)!r} holds no images: expected "
                        "ROOT/<split>/<class>/[<subgroup>/]<image>")
    splits, classes, subgroups, files = zip(*rows)
    blobs = [f.read_bytes() for f in files]
    shas = [sha_of(b) for b in blobs]
    sources = [str(f) for f in files]
    images = decode_cached(blobs, sources, shas, size, cache_dir)
    table = _table(classes, pd.Series(subgroups, dtype=object), pd.Series(splits, dtype=object),
                   sources, shas)
    return ImageTable(images, table)


def from_arrays(images: np.ndarray, table: pd.DataFrame) -> ImageTable:
    """An ImageTable from already decoded uint8 images (generated data, torchvision)."""
    shas = [sha_of(img.tobytes()) for img in images]
    out = _table(table["class_name"], table.get("subgroup"), table.get("split"),
                 list(table["source"]), shas)
    return ImageTable(np.ascontiguousarray(images, dtype=np.uint8), out)


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
                "network use the Parquet form (data.format: parquet)") from None
        arrays.append(np.asarray(ds.data, dtype=np.uint8))
        frames.append(pd.DataFrame({
            "class_name": [ds.classes[t] for t in ds.targets],
            "split": split,
            "source": [f"cifar10/{split}/{i:05d}" for i in range(len(ds.targets))],
        }))
    return from_arrays(np.concatenate(arrays), pd.concat(frames, ignore_index=True))


def read_generated(cfg: DataConfig, cache_dir: Path) -> ImageTable:
    from distforget.data.generated import generate

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


def load_data(cfg: DataConfig, cache_dir: Path | None = None) -> ImageTable:
    """Read the configured source into the internal form, filtered to ``cfg.classes``."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if cfg.format == "generated":
        data = read_generated(cfg, cache_dir)
    elif cfg.path is None and cfg.format != "cifar10":
        raise DataError(f"data.path is required for data.format {cfg.format!r}")
    elif cfg.format == "parquet":
        data = read_parquet_manifest(cfg.path, cfg.image_size, cache_dir)
    elif cfg.format == "folder":
        data = read_image_folder(cfg.path, cfg.image_size, cache_dir)
    elif cfg.format == "cifar10":  # torchvision's download, or a local Parquet copy
        from distforget.data.cifar10 import read_cifar10
        data = read_cifar10(cfg.path, cfg.image_size, cache_dir)
    elif cfg.format == "imagenet":
        from distforget.data.imagenet import read_imagenet
        data = read_imagenet(cfg.path, cfg.image_size, cache_dir)
    else:  # the config's Literal type makes this unreachable
        raise DataError(f"data.format {cfg.format!r} is not supported")
    if cfg.classes:
        known = set(data.table["class_name"])
        missing = [c for c in cfg.classes if c not in known]
        if missing:
            raise DataError(f"data.classes names {missing[0]!r}, which is not in the data "
                            f"(classes: {', '.join(sorted(known)[:20])})")
        keep = data.table["class_name"].isin(cfg.classes).to_numpy()
        data = ImageTable(np.asarray(data.images)[keep], data.table[keep].reset_index(drop=True))
    return data
