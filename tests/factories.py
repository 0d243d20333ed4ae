"""Small input factories for the tests (fixtures that use them live in conftest.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The real CIFAR-10 copy (train.parquet, test.parquet): DISTFORGET_TEST_CIFAR10, else the
# shared data folder beside the checkout.
CIFAR_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def cifar_dir() -> Path:
    """Where the CIFAR-10 Parquet copy is; the calling test skips, saying why, without it."""
    path = Path(os.environ.get("DISTFORGET_TEST_CIFAR10") or CIFAR_DEFAULT)
    if not (path / "train.parquet").is_file() or not (path / "test.parquet").is_file():
        pytest.skip(f"no CIFAR-10 Parquet copy at {path} (train.parquet, test.parquet); set "
                    "DISTFORGET_TEST_CIFAR10 to its folder")
    return path

# Small and fast: 8 classes x 3 colours x (24 train + 10 held-out) images, two pretraining
# epochs; the 10 held-out red circles give 5 validation and 5 test images.
TINY = {
    "data.generated.train_per_subgroup": 24,
    "data.generated.test_per_subgroup": 10,
    "pretrain.epochs": 2,
    "pretrain.batch_size": 64,
    "forget.epochs": 2,
    "forget.fisher_samples": 8,
    "remind.epochs": 1,
    "remind.bn_align_images": 8,
    "remind.bn_align_steps": 3,
    "baseline.epochs": 1,
    "restore.grid": [0.0, 0.5, 1.0],
}

# TINY with a CLIP that recognises the forget subgroup (base validation forget_acc 1.0 instead of
# TINY's 0.0 after two epochs): a search refuses a base model with nothing to forget.
SEARCHABLE = {**TINY, "pretrain.epochs": 10}


def cifar_frame(split: str, per_class: int, classes=None, seed: int = 0) -> pd.DataFrame:
    """``per_class`` rows of each CIFAR-10 class from the shared copy (JPEG bytes)."""
    df = pd.read_parquet(cifar_dir() / f"{split}.parquet")
    if classes is not None:
        df = df[df["class_name"].isin(classes)]
    return df.groupby("class_name").sample(n=per_class, random_state=seed).reset_index(drop=True)


def write_image_folder(root: Path, frame: pd.DataFrame, split: str, subgroup_of=None) -> None:
    """Decode JPEG bytes into ROOT/<split>/<class>/[<subgroup>/]<n>.png."""
    from PIL import Image

    for i, row in enumerate(frame.itertuples()):
        parts = [root, split, row.class_name]
        if subgroup_of is not None:
            parts.append(subgroup_of(i, row))
        folder = Path(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(row.image)).save(folder / f"{i:04d}.png")


def rng_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def a_record(tid: str, **over) -> dict:
    """A finished three-stage trial's record (as ``trials/<id>.json`` holds it) with one sweep
    point at alpha 1.0."""
    base = {"trial_id": tid, "source": "trial", "status": "ok", "method": "three_stage",
            "forget_acc": 0.1, "retain_acc": 0.8, "zeroshot_acc": 0.9, "alpha": 0.5,
            "beta": 0.0, "params": {"forget.lr": 1e-3, "restore.alpha": 0.5},
            "recipe": {"method": "three_stage", "stages": {"forget": "k1"}, "alpha": 0.5,
                       "beta": 0.0},
            "sweep": [{"recipe": {"method": "three_stage", "stages": {"forget": "k1"},
                                  "alpha": 1.0, "beta": 0.0},
                       "metrics": {"forget_acc": 0.0, "retain_acc": 0.7, "zeroshot_acc": 0.8}}]}
    return {**base, **over}
