"""Shared pieces of the benchmarks: synthetic prepared inputs and timing helpers."""

from __future__ import annotations

import hashlib
import os
import platform
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

import distforget  # noqa: F401  registers distforget's architectures
from distforget.data.scenario import Scenario, Split
from distforget.model import ModelSpec, state_to_numpy
from distforget.prepare import Prepared


def synthetic_prepared(model_name: str, *, n_retain: int, n_forget: int = 64, n_eval: int = 256,
                       classes: int = 10, store_size: int = 32, seed: int = 0) -> Prepared:
    """Prepared inputs with a random-init open_clip model and random uint8 images: what the
    throughput of a stage depends on (model, batch, data path), without pretraining or data."""
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp["size"] if isinstance(pp["size"], int) else pp["size"][0]
    spec = ModelSpec(model_name, False, int(size), tuple(pp["mean"]), tuple(pp["std"]), "random")
    rng = np.random.default_rng(seed)
    n = n_forget + n_retain + 6 * n_eval
    images = rng.integers(0, 256, size=(n, store_size, store_size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, size=n)
    embed = model.text_projection.shape[1] if model.text_projection is not None else 512
    head = torch.nn.functional.normalize(torch.randn(classes, embed), dim=-1).numpy()
    bounds = np.cumsum([0, n_forget, n_retain] + [n_eval] * 6)
    names = ["forget_train", "retain_train", "val_forget", "val_retain", "val_zeroshot",
             "test_forget", "test_retain", "test_zeroshot"]
    splits = {name: Split(np.arange(a, b), labels[a:b], name)
              for name, a, b in zip(names, bounds[:-1], bounds[1:])}
    splits["calib_forget"] = splits["val_forget"]
    splits["calib_retain"] = splits["val_retain"]
    scenario = Scenario(classes=tuple(f"c{i}" for i in range(classes)), forget_class="c0",
                        forget_subgroup=None, retain_classes=(), zeroshot_classes=(),
                        subgroup_rule="synthetic", subgroups=(), splits=splits)
    return Prepared(spec=spec, base_state=state_to_numpy(model), classes=scenario.classes,
                    head=head, logit_scale=100.0, images=images, scenario=scenario,
                    teacher_logits=np.zeros((n_retain, classes), np.float32), base_metrics={},
                    synthetic=np.zeros((0, store_size, store_size, 3), np.uint8),
                    synthetic_teacher=np.zeros((0, classes), np.float32),
                    synthetic_key=(0, 0, 0),
                    fingerprint=hashlib.sha256(f"{model_name}{n}{seed}".encode()).hexdigest())


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cores = os.cpu_count()
    return (f"{platform.node()}: {cores} CPU cores, {gpu}, torch {torch.__version__}, "
            f"open_clip {open_clip.__version__}")


def steady_throughput(history: list[dict], skip: int = 1) -> float:
    """Training images per second over the epochs after the first ``skip`` (warm-up)."""
    rows = history[skip:] or history
    return sum(r["images"] for r in rows) / sum(r["train_s"] for r in rows)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now() -> float:
    return time.perf_counter()


def missing_section(path: Path, name: str) -> str | None:
    """Why ``replace_section(path, name, ...)`` would fail, or None: checked before a benchmark
    spends its time, not after. Each marker must appear exactly once: with two pairs of one
    name, a write would land in whichever comes first and overwrite another run's figures."""
    text = Path(path).read_text() if Path(path).is_file() else ""
    markers = [f"<!-- {name}:{end} -->" for end in ("begin", "end")]
    missing = [m for m in markers if m not in text]
    if missing:
        return (f"{path} has no {missing[0]} (expected both {' and '.join(markers)} to write "
                "between)")
    repeated = [(m, text.count(m)) for m in markers if text.count(m) > 1]
    if repeated:
        return (f"{path} holds {repeated[0][0]} {repeated[0][1]} times (expected once: rename "
                "one pair of markers, or the write would replace the first pair's figures)")
    if text.index(markers[1]) < text.index(markers[0]):
        return f"{path} has {markers[1]} before {markers[0]}"
    return None


def replace_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between the markers ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` of a
    Markdown file (a benchmark writes its own figures; nothing is typed by hand); refused, with
    the file untouched, unless each marker appears once and in order (``missing_section``)."""
    head, _, tail = _split_section(path, name)
    Path(path).write_text(f"{head}{body}{tail}")


def read_section(path: Path, name: str) -> str:
    """What a benchmark wrote between the markers ``<!-- NAME:begin/end -->``; refused as
    ``replace_section`` refuses."""
    return _split_section(path, name)[1]


def _split_section(path: Path, name: str) -> tuple[str, str, str]:
    """(text up to and with the begin marker and its newline, the body, the newline and end
    marker and everything after it)."""
    problem = missing_section(path, name)
    if problem:
        raise SystemExit(problem)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = Path(path).read_text().split(begin, 1)
    body, tail = rest.split(end, 1)
    return f"{head}{begin}\n", body.strip("\n"), f"\n{end}{tail}"
