"""Style subgroups: styled copies of an image set, written as a Parquet manifest.

The same class rendered in another style is a subgroup: "sketches of airplanes" can be forgotten
while photos of airplanes are kept. ``build_styles`` takes any image set (a Parquet manifest, a
folder of them, or an image folder), picks images per split and class, renders each picked image
in every requested style and returns a manifest frame: ``image`` (PNG bytes), ``class_name``,
``subgroup`` (the style), ``split``, ``origin`` (where the original came from) and
``origin_sha`` (its content hash). Every style of one original lands in the same split.

    python -m distforget.data.styles --input cifar10 \\
        --out data/cifar10-styles.parquet --styles photo,sketch,cartoon,grayscale,painting \\
        --per-class 500 --seed 0

The transforms are fixed functions of the image (no randomness), written with PIL's filters and
integer arithmetic, so the same input and seed give the same bytes. They work at the image's own
size; with ``k = max(1, round(min(width, height) / 64))`` (1 for CIFAR's 32x32, 4 for 224x224)
setting their scale:

- ``photo``: the original, re-encoded as PNG.
- ``grayscale``: ITU-R 601-2 luma, ``L = (299 R + 587 G + 114 B) / 1000`` (PIL's "L" mode),
  copied to three channels.
- ``sketch`` (pencil sketch from edges): luma ``L`` divided by its Gaussian blur ``B``
  (radius ``2k``), the "colour dodge" of a pencil drawing: ``D = min(255, 255 L // (B + 1))``,
  which is white where the image is flat and dark along edges; then darkened with the curve
  ``255 (D / 255)^3`` (rounded) so strokes read as pencil; grey on three channels.
- ``cartoon``: colours smoothed by a median filter (size ``4k + 1``) and posterised to 2 bits per
  channel (4 levels); black ink where the edge strength is at least half its range: edges are
  PIL's 3x3 ``FIND_EDGES`` on the luma blurred with radius ``k``, with the one-pixel border set
  to 0 (the filter leaves border pixels unfiltered) and stretched by ``autocontrast`` (2% cut
  at each end), then thresholded at 128.
- ``painting`` (painting-like smoothing): median filter (size ``4k + 1``), PIL's ``SMOOTH``,
  colour saturation times 1.6 (``ImageEnhance.Color``), then PIL's ``EDGE_ENHANCE``.

Selection: within each (split, class) the originals are ordered by content hash and shuffled
with a generator seeded by ``sha256(f"{seed}:{split}:{class}")``; the first ``per_class`` are
kept (all when ``per_class`` is None). An input without splits is divided by content hash: an
original whose hash gives ``int(sha[:13], 16) / 16**13 < holdout`` is "test", the rest
"train". Subgroup labels of the input are not carried over; the style is the subgroup.

A user's own styled images need no builder: ``ROOT/<split>/<class>/<style>/<image>`` is the
image-folder form (``data.format: folder``) with the style as subgroup.
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, UnidentifiedImageError

from distforget.data.sources import IMAGE_SUFFIXES, read_manifest_file, sha_of
from distforget.errors import ConfigError, DataError

STYLE_VERSION = "1"  # bump when a transform changes: the same bytes are promised per version


def _scale(img: Image.Image) -> int:
    return max(1, round(min(img.size) / 64))


def _gray3(gray: Image.Image) -> Image.Image:
    return Image.merge("RGB", (gray, gray, gray))


def photo(img: Image.Image) -> Image.Image:
    return img.copy()


def grayscale(img: Image.Image) -> Image.Image:
    return _gray3(img.convert("L"))


_PENCIL = [round(255 * (v / 255) ** 3) for v in range(256)]


def sketch(img: Image.Image) -> Image.Image:
    k = _scale(img)
    luma = img.convert("L")
    blur = luma.filter(ImageFilter.GaussianBlur(2 * k))
    lum = np.asarray(luma, dtype=np.int32)
    b = np.asarray(blur, dtype=np.int32)
    dodge = np.minimum(255, (255 * lum) // (b + 1)).astype(np.uint8)
    return _gray3(Image.fromarray(dodge).point(_PENCIL))


def _edges(img: Image.Image, k: int) -> Image.Image:
    """Edge strength 0..255: FIND_EDGES on the blurred luma, border zeroed, stretched."""
    edges = img.convert("L").filter(ImageFilter.GaussianBlur(k)).filter(ImageFilter.FIND_EDGES)
    edges = ImageOps.expand(ImageOps.crop(edges, 1), border=1, fill=0)
    return ImageOps.autocontrast(edges, cutoff=2)


def cartoon(img: Image.Image) -> Image.Image:
    k = _scale(img)
    flat = ImageOps.posterize(img.filter(ImageFilter.MedianFilter(4 * k + 1)), 2)
    ink = _edges(img, k).point(lambda v: 255 if v >= 128 else 0)
    return Image.composite(Image.new("RGB", img.size, (0, 0, 0)), flat, ink)


def painting(img: Image.Image) -> Image.Image:
    k = _scale(img)
    smooth = img.filter(ImageFilter.MedianFilter(4 * k + 1)).filter(ImageFilter.SMOOTH)
    return ImageEnhance.Color(smooth).enhance(1.6).filter(ImageFilter.EDGE_ENHANCE)


STYLES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "photo": photo, "sketch": sketch, "cartoon": cartoon, "grayscale": grayscale,
    "painting": painting}


def stylize(img: Image.Image, style: str) -> Image.Image:
    """``img`` (any mode) rendered in ``style``, as an RGB image of the same size."""
    if style not in STYLES:
        raise ConfigError(f"style {style!r}: expected one of {', '.join(STYLES)}")
    return STYLES[style](img.convert("RGB"))


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --- reading the originals ------------------------------------------------------------------------

def _read_parquet_source(path: Path) -> pd.DataFrame:
    """A manifest file or a folder of them, read as the Parquet data form reads them."""
    frames = []
    for f in sorted(path.glob("*.parquet")) if path.is_dir() else [path]:
        df, blobs, origin = read_manifest_file(f, split_from_name=path.is_dir())
        split = df["split"] if "split" in df else pd.Series([None] * len(df))
        frames.append(pd.DataFrame({"blob": blobs, "class_name": df["class_name"].map(str),
                                    "split": split.to_numpy(), "origin": origin}))
    return pd.concat(frames, ignore_index=True)


def _read_folder_source(root: Path) -> pd.DataFrame:
    rows = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    rows.append((f.read_bytes(), class_dir.name, split_dir.name,
                                 str(f.relative_to(root))))
    if not rows:
        raise DataError(f"image folder {str(root)!r} holds no images: expected "
                        "ROOT/<split>/<class>/[<subgroup>/]<image>")
    return pd.DataFrame(rows, columns=["blob", "class_name", "split", "origin"])


def _read_cifar10_source() -> pd.DataFrame:
    """CIFAR-10 through torchvision's download into the cache, each image encoded as PNG."""
    from distforget.data.load import read_torchvision_cifar10
    from distforget.data.sources import default_cache_dir

    data = read_torchvision_cifar10(default_cache_dir() / "cifar10")
    return pd.DataFrame({"blob": [encode_png(Image.fromarray(np.asarray(img)))
                                  for img in data.images],
                         "class_name": data.table["class_name"].to_numpy(),
                         "split": data.table["split"].to_numpy(),
                         "origin": data.table["source"].to_numpy()})


def read_originals(path: str | Path) -> pd.DataFrame:
    """The input's encoded images with ``class_name``, ``split`` (may be None), ``origin``.

    ``path`` is a manifest, a folder of them or an image folder; the word ``cifar10`` (when no
    file or folder has that name) is CIFAR-10 through torchvision's download."""
    if str(path) == "cifar10" and not Path(path).exists():
        return _read_cifar10_source()
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.glob("*.parquet"))):
        return _read_parquet_source(path)
    if path.is_dir():
        return _read_folder_source(path)
    raise DataError(f"--input {str(path)!r}: no Parquet manifest or image folder there")


# --- building ------------------------------------------------------------------------------------

def _group_rng(seed: int, split: str, class_name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{split}:{class_name}".encode()).hexdigest()
    return np.random.default_rng(int(digest[:16], 16))


def _parse_styles(styles: Sequence[str]) -> list[str]:
    styles = list(dict.fromkeys(s.strip() for s in styles if s.strip()))
    if not styles:
        raise ConfigError("styles: name at least one of " + ", ".join(STYLES))
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ConfigError(f"style {unknown[0]!r}: expected one of {', '.join(STYLES)}")
    return styles


def select(originals: pd.DataFrame, *, classes: Sequence[str] = (), per_class: int | None = None,
           seed: int = 0, holdout: float = 0.25) -> pd.DataFrame:
    """The originals to render, by the module's selection rule, with split and sha filled in."""
    if per_class is not None and per_class < 1:
        raise ConfigError(f"per_class: got {per_class}, expected at least 1 (or None for all)")
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout: got {holdout}, expected a fraction in (0, 1)")
    df = originals.copy()
    df["origin_sha"] = [sha_of(b) for b in df["blob"]]
    no_split = df["split"].isna()
    if no_split.any():
        u = df.loc[no_split, "origin_sha"].map(lambda s: int(s[:13], 16) / 16**13)
        df.loc[no_split, "split"] = np.where(u < holdout, "test", "train")
    if classes:
        known = set(df["class_name"])
        missing = [c for c in classes if c not in known]
        if missing:
            raise DataError(f"class {missing[0]!r} is not in the input (classes: "
                            f"{', '.join(sorted(known)[:20])})")
        df = df[df["class_name"].isin(classes)]
    picked = []
    for (split, name), group in sorted(df.groupby(["split", "class_name"], sort=False),
                                       key=lambda kv: kv[0]):
        group = group.sort_values("origin_sha", kind="stable")
        order = _group_rng(seed, split, name).permutation(len(group))
        picked.append(group.iloc[order[:per_class]])
    return pd.concat(picked, ignore_index=True)


def build_styles(source: str | Path | pd.DataFrame, styles: Sequence[str], *,
                 classes: Sequence[str] = (), per_class: int | None = None, seed: int = 0,
                 holdout: float = 0.25) -> pd.DataFrame:
    """The styled manifest frame (see the module docstring); ``source`` is a path or a frame
    like ``read_originals`` returns."""
    styles = _parse_styles(styles)
    originals = source if isinstance(source, pd.DataFrame) else read_originals(source)
    picked = select(originals, classes=classes, per_class=per_class, seed=seed, holdout=holdout)
    rows = []
    for blob, name, split, origin, origin_sha in picked[
            ["blob", "class_name", "split", "origin", "origin_sha"]].itertuples(index=False):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                img = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"image {origin} cannot be decoded: {exc}") from None
        for style in styles:
            rows.append((encode_png(stylize(img, style)), name, style, split, origin, origin_sha))
    return pd.DataFrame(rows, columns=["image", "class_name", "subgroup", "split", "origin",
                                       "origin_sha"])


def write_manifest(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write the manifest (through a temporary file and a rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(
        {"distforget.styles": f"v{STYLE_VERSION}"})
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    from distforget.cli import run_cli

    parser = argparse.ArgumentParser(
        prog="python -m distforget.data.styles",
        description="Render an image set in several styles and write a Parquet manifest whose "
                    "subgroup is the style.")
    parser.add_argument("--input", required=True,
                        help="a Parquet manifest, a folder of them, an image folder "
                             "ROOT/<split>/<class>/[<subgroup>/]<image>, or 'cifar10' "
                             "(torchvision's download into the cache)")
    parser.add_argument("--out", required=True, help="the manifest to write (.parquet)")
    parser.add_argument("--styles", default=",".join(STYLES),
                        help=f"comma-separated, of {', '.join(STYLES)} (default: all)")
    parser.add_argument("--classes", default="",
                        help="comma-separated class names (default: every class)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="originals per class and split (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the selection")
    parser.add_argument("--holdout", type=float, default=0.25,
                        help="test fraction for an input without splits (by content hash)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")

    def run(args) -> int:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        frame = build_styles(args.input, args.styles.split(","), classes=classes,
                             per_class=args.per_class, seed=args.seed, holdout=args.holdout)
        write_manifest(frame, args.out)
        counts = frame.groupby(["split", "subgroup"]).size().unstack(fill_value=0)
        print(counts.to_string())
        print(f"wrote {args.out}: {len(frame)} images")
        return 0

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
