"""The internal form every data source becomes, and the pieces the readers share.

Every source (``distforget.data.load``) becomes an ``ImageTable``: one uint8 array of decoded square images and a table of
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

from distforget.errors import DataError
from distforget.storage import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
EVAL_SPLITS = ("test", "val", "validation")
SPLIT_NAMES = ("train",) + EVAL_SPLITS


class MixedSizes(DataError):
    """Images at their native size are not all one square size (``data.image_size`` unset);
    ``what`` names the first image out of line."""

    def __init__(self, what: str):
        super().__init__(f"{what}: set data.image_size to store every image at one square size")
        self.what = what

    def __reduce__(self):  # pickled (between processes) as it was made
        return (MixedSizes, (self.what,))


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
        raise MixedSizes(f"image {source} is {arr.shape[1]}x{arr.shape[0]}, not square")
    return arr


@dataclass(frozen=True)
class StoredSize:
    """The size ``decode_cached`` stores images at: ``size``, or with ``size`` None each image's
    native size, which must be one square size. Where it is not and ``fallback`` is set, the
    images are stored at ``fallback`` (the model's input size) instead, said in ``log``."""

    size: int | None
    fallback: int | None = None
    log: Callable[[str], None] | None = None


def _cached(path: Path) -> np.ndarray | None:
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # a torn file from an old crash: decode again
    return None


def _decode_all(get: Callable[[int], bytes], sources: Sequence[str], size: int | None,
                path: Path) -> np.ndarray:
    first = decode_one(get(0), sources[0], size)
    out = np.empty((len(sources),) + first.shape, dtype=np.uint8)
    out[0] = first
    for i in range(1, len(sources)):
        arr = decode_one(get(i), sources[i], size)
        if arr.shape != first.shape:
            raise MixedSizes(f"image {sources[i]} is {arr.shape[1]}x{arr.shape[0]} but "
                             f"{sources[0]} is {first.shape[1]}x{first.shape[0]}")
        out[i] = arr
    save_atomic_npy(path, out)
    return np.load(path, mmap_mode="r")


def decode_cached(blobs: Sequence[bytes] | Callable[[int], bytes], sources: Sequence[str],
                  shas: Sequence[str], size: int | None | StoredSize, cache_dir: Path
                  ) -> np.ndarray:
    """Decode encoded images once into a memory-mapped uint8 cache keyed by content hash.

    ``blobs`` is a sequence of encoded images or a function from row number to bytes (so large
    folders are read lazily, and not at all on a cache hit). ``size`` is an int (or None: the
    native size) or a ``StoredSize``. When the native sizes differ and a fallback size is set,
    the native pass stops at the first image out of line and decoding starts again at that size
    in the same call (the source is hashed once); a note beside the cache remembers it, so later
    loads go straight to the fallback's cache.
    """
    want = size if isinstance(size, StoredSize) else StoredSize(size)
    key = hashlib.sha256(("\n".join(shas) + f"\nsize={want.size}").encode()).hexdigest()
    path = Path(cache_dir) / "decoded" / f"{key}.npy"
    cached = _cached(path)
    if cached is not None:
        return cached
    get = blobs if callable(blobs) else blobs.__getitem__
    mixed = path.with_suffix(".mixed")  # the first image out of line, from an earlier load
    if want.size is None and want.fallback is not None and mixed.is_file():
        what = mixed.read_text()
    else:
        try:
            return _decode_all(get, sources, want.size, path)
        except MixedSizes as exc:
            if want.fallback is None:
                raise
            what = exc.what
            with atomic_path(mixed) as tmp:
                tmp.write_text(what)
    if want.log is not None:
        want.log(f"data: {what}, so every image is stored at {want.fallback}x{want.fallback}, "
                 "the model's input size (shorter side resized, centre crop; data.image_size "
                 "sets another)")
    return decode_cached(blobs, sources, shas, want.fallback, cache_dir)


def _clean_optional(series: pd.Series | None, n: int) -> pd.Series:
    if series is None:
        return pd.Series([None] * n, dtype=object)
    return series.astype(object).where(series.notna(), None).map(
        lambda v: None if v is None or str(v) == "" else str(v))


def label_table(class_names: Iterable, subgroups: pd.Series | None, splits: pd.Series | None,
                sources: Sequence[str], shas: Sequence[str]) -> pd.DataFrame:
    """The label rows of an ``ImageTable``: empty subgroup and split values become None."""
    n = len(sources)
    return pd.DataFrame({
        "class_name": pd.Series(list(class_names), dtype=object).map(str),
        "subgroup": _clean_optional(subgroups, n).to_numpy(),
        "split": _clean_optional(splits, n).to_numpy(),
        "source": list(sources),
        "sha": list(shas),
    })


def manifest_files(path: str | Path, what: str) -> list[Path]:
    """The Parquet manifests at ``path``: the file, or every ``*.parquet`` of the folder;
    ``what`` names the setting in the error (``data.path``, ``--input``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(f"{what} {str(path)!r}: the folder holds no .parquet manifest")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"{what} {str(path)!r}: no Parquet manifest there")


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


def from_arrays(images: np.ndarray, table: pd.DataFrame) -> ImageTable:
    """An ImageTable from already decoded uint8 images (generated data, torchvision)."""
    shas = [sha_of(img.tobytes()) for img in images]
    out = label_table(table["class_name"], table.get("subgroup"), table.get("split"),
                 list(table["source"]), shas)
    return ImageTable(np.ascontiguousarray(images, dtype=np.uint8), out)
