"""Shared test inputs, built small: a tiny generated data set, a quickly pretrained small CLIP,
prepared inputs, and CIFAR-10 slices written under tmp_path.

Every test runs with ``DISTFORGET_CACHE`` pointing at one temporary folder for the session, so
nothing is read from or written to the user's cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from distforget.threads import set_torch_threads
from tests.factories import TINY, cifar_frame


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("distforget-cache")
    old = os.environ.get("DISTFORGET_CACHE")
    os.environ["DISTFORGET_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DISTFORGET_CACHE", None)
    else:
        os.environ["DISTFORGET_CACHE"] = old


@pytest.fixture(scope="session")
def cpu() -> torch.device:
    # Two threads at most, fewer where the machine has fewer CPUs or OMP_NUM_THREADS says so
    # (beside a running search, OMP_NUM_THREADS=1 keeps the tests off the busy core).
    set_torch_threads(2)
    return torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_cfg():
    from distforget.config import load_config

    return load_config(None, TINY)


@pytest.fixture(scope="session")
def tiny_prepared(tiny_cfg, cpu):
    from distforget.prepare import prepare

    return prepare(tiny_cfg, cpu, log=lambda msg: None)


@pytest.fixture(scope="session")
def cifar_manifest(tmp_path_factory) -> Path:
    """A small Parquet manifest of real CIFAR-10 images: 40 train + 40 test per class (enough
    held-out images of a k-means subgroup for 5 validation and 5 test images)."""
    folder = tmp_path_factory.mktemp("cifar-manifest")
    train = cifar_frame("train", 40).assign(split="train")
    test = cifar_frame("test", 40).assign(split="test")
    path = folder / "cifar_small.parquet"
    pd.concat([train, test], ignore_index=True)[["image", "class_name", "split", "path"]] \
        .to_parquet(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised DF-RN-Tiny-32, saved as open_clip loads local weights."""
    import open_clip
    from safetensors.torch import save_file

    import distforget.model  # noqa: F401  (registers DF-RN-Tiny-32 with open_clip)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_file(open_clip.create_model("DF-RN-Tiny-32").state_dict(), str(path))
    return path
