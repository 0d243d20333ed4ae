"""Work every trial of a run shares, done once: data, base model, zero-shot head, splits,
teacher outputs and the base model's metrics.

``Prepared`` holds only numpy arrays and plain values, so one copy can sit in Ray's object store
(or shared memory) and every stage process maps it without copying.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distforget.config import RunConfig
from distforget.data.scenario import (SPLITS, Scenario, Split, build_scenario, check_scenario,
                                      needs_embeddings)
from distforget.data.load import load_data
from distforget.data.sources import default_cache_dir
from distforget.data.transforms import DevicePreprocess
from distforget.evaluate import Evaluator, image_features, zero_shot_logits
from distforget.model import (ModelSpec, check_model_name, create, input_size, load_pretrained,
                              state_to_numpy, tokenizer_for)
from distforget.synthetic import synthesize
from distforget.training import Parallel
from distforget.zeroshot import build_head, templates_for


@dataclass(frozen=True)
class Prepared:
    spec: ModelSpec
    base_state: dict[str, np.ndarray]  # the full base model, fp32
    classes: tuple[str, ...]
    head: np.ndarray                    # zero-shot head [num_classes, embed_dim]
    logit_scale: float
    images: np.ndarray                  # uint8 [N, S, S, 3]: the images the splits use
    scenario: Scenario                  # split indices point into `images`
    teacher_logits: np.ndarray          # base model's logits on retain_train, fp32
    base_metrics: dict[str, float]
    # BN-aligned synthetic images for the remind stage's distillation set, their teacher logits
    # and the (count, steps, seed) they were made with; empty for towers without BatchNorm.
    synthetic: np.ndarray
    synthetic_teacher: np.ndarray
    synthetic_key: tuple[int, int, int]
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)

    def model(self, state: dict | None = None) -> torch.nn.Module:
        """The base model on the CPU, or the base with ``state`` (e.g. an image tower) on top."""
        model = create(self.spec, self.base_state)
        if state:
            merged = {**model.state_dict(), **{k: torch.from_numpy(np.array(v))
                                              if isinstance(v, np.ndarray) else v
                                              for k, v in state.items()}}
            model.load_state_dict(merged, strict=True)
        return model

    def base_visual_state(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.array(v)) for k, v in self.base_state.items()
                if k.startswith("visual.")}

    def preprocess(self, device: torch.device) -> DevicePreprocess:
        return DevicePreprocess(self.spec.image_size, self.spec.mean, self.spec.std, device)

    def split(self, name: str) -> Split:
        return self.scenario.splits[name]

    def head_tensor(self, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.array(self.head)).to(device)

    def stage_start(self, device: torch.device, seed: int, parallel: Parallel | None
                    ) -> tuple[Parallel, torch.nn.Module, torch.Tensor, DevicePreprocess]:
        """What every training stage begins with: its process group, the seeded generator, and
        the base image tower, zero-shot head and preprocessing on ``device``."""
        torch.manual_seed(seed)
        return (parallel or Parallel.current(), self.model().visual.to(device),
                self.head_tensor(device), self.preprocess(device))

    def evaluator(self, device: torch.device, precision: str = "auto") -> Evaluator:
        splits = {k: (v.indices, v.labels) for k, v in self.scenario.splits.items()}
        return Evaluator(self.images, splits, self.head_tensor(device), self.logit_scale,
                         self.preprocess(device), precision=precision)


def _state_hash(state: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k]).tobytes())
    return h.hexdigest()


def _compact(images: np.ndarray, scenario: Scenario) -> tuple[np.ndarray, Scenario]:
    """Keep only the images the splits use, and point the splits at the compacted array."""
    used = np.unique(np.concatenate([scenario.splits[k].indices for k in SPLITS]))
    compact = np.ascontiguousarray(np.asarray(images[used]))
    splits = {k: Split(np.searchsorted(used, s.indices), s.labels, s.hash)
              for k, s in scenario.splits.items()}
    return compact, Scenario(**{**scenario.__dict__, "splits": splits})


def prepare(cfg: RunConfig, device: torch.device, *, cache_dir: Path | None = None,
            log: Callable[[str], None] = print) -> Prepared:
    """Load data and base model, build the zero-shot head and the scenario, and compute the
    teacher outputs and base metrics; every input error is raised before any training."""
    start = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    check_model_name(cfg.model.name)
    data = load_data(cfg.data, cache_dir, model_size=input_size(cfg.model.name), log=log)
    check_scenario(data, cfg.scenario)  # name errors surface before any pretraining
    # Splits that need no model are built (and checked: empty sets, overlaps) before any
    # pretraining; k-means subgroups need the base model's embeddings, so they come after it.
    early = None if needs_embeddings(data, cfg.scenario) else build_scenario(data, cfg.scenario)
    templates = templates_for(cfg.data.templates, cfg.data.format, data.classes)

    weights = cfg.model.pretrained
    pretrain_info: dict[str, Any] = {}
    if weights == "embedded":
        from distforget.pretraining import ensure_pretrained, pretrained_info
        path = ensure_pretrained(cfg.model, cfg.pretrain, data, templates, device, cache_dir,
                                 log=log, holdout_fraction=cfg.scenario.holdout_fraction)
        pretrain_info = pretrained_info(path)
        weights = str(path)
    model, spec = load_pretrained(cfg.model.name, weights, cfg.model.quick_gelu,
                                  cfg.model.cache_dir)
    if cfg.model.pretrained == "embedded":
        spec = ModelSpec(**{**spec.__dict__, "weights": f"embedded:{Path(weights).name}"})
    model = model.to(device)
    prep = DevicePreprocess(spec.image_size, spec.mean, spec.std, device)
    head = build_head(model, tokenizer_for(spec), data.classes, templates, device)

    def embed(images: np.ndarray) -> np.ndarray:
        return image_features(model.visual, images, prep,
                              precision=cfg.model.precision).cpu().numpy()

    scenario = early if early is not None else build_scenario(data, cfg.scenario, embed=embed)
    if scenario.shared_with_forget:
        log(f"scenario: {scenario.shared_with_forget} images labelled as retained share their "
            "content with forget images; left out of the retain sets (scenario.shared_images: "
            "forget)")
    images, scenario = _compact(data.images, scenario)
    logit_scale = float(model.logit_scale.exp().item())

    retain = scenario.splits["retain_train"]
    teacher = zero_shot_logits(model.visual, images[retain.indices], prep, head, logit_scale,
                               precision=cfg.model.precision)

    splits = {k: (v.indices, v.labels) for k, v in scenario.splits.items()}
    evaluator = Evaluator(images, splits, head, logit_scale, prep, precision=cfg.model.precision)
    base_metrics = evaluator.metrics(model.visual)
    base_metrics.update(evaluator.calibration(model.visual))

    synthetic, synthetic_teacher, synthetic_key = synthesize(
        model.visual, prep, head, logit_scale, cfg.remind, cfg.model.precision,
        size=images.shape[1])

    base_state = state_to_numpy(model)
    head_np = head.float().cpu().numpy()
    fingerprint = hashlib.sha256(json.dumps({
        "spec": spec.__dict__, "weights": _state_hash(base_state),
        "head": hashlib.sha256(head_np.tobytes()).hexdigest(),
        "scenario": scenario.fingerprint}, sort_keys=True).encode()).hexdigest()
    info = {"templates": len(templates), "weights": spec.weights, "pretrain": pretrain_info,
            "stored_size": int(images.shape[1]), "splits": scenario.summary(),
            "shared_with_forget": scenario.shared_with_forget,
            "subgroup_rule": scenario.subgroup_rule,
            "subgroups": list(scenario.subgroups), "zeroshot_classes":
            list(scenario.zeroshot_classes), "prepare_s": time.perf_counter() - start}
    return Prepared(spec=spec, base_state=base_state, classes=data.classes, head=head_np,
                    logit_scale=logit_scale, images=images, scenario=scenario,
                    teacher_logits=teacher, base_metrics=base_metrics,
                    synthetic=synthetic, synthetic_teacher=synthetic_teacher,
                    synthetic_key=synthetic_key, fingerprint=fingerprint, info=info)
