"""The retrain reference: the base model pretrained again, without the forget subgroup.

Unlearning approximates the model that never saw the forget subgroup. Where distforget made the
base model itself (``model.pretrained: embedded``), that model can be built: the same small
CLIP, pretrained with the same recipe (``pretrain`` knobs, templates, seed) on the same training
images minus every image of the forget subgroup, through ``distforget.pretraining`` and its cache.
For other weights (``openai``, a local file) the pre-training data is not at hand, and
``method: retrain`` is refused.

The retrained model has its own text tower, so it is measured with its own zero-shot head (and
logit scale) on the same held-out sets as every other method. ``gap_to_retrain`` is the mean
absolute difference of forget, retain and zero-shot accuracy between a method and this model,
as SalUn reports it against retraining.

``target_note`` says when the retrained model itself misses ``search.target`` on validation (a
subgroup that shares its class text with retained images it resembles, which the model that
never saw it still names by that class): there the target asks for more forgetting than
retraining does, and a small gap to retrain and meeting the target pull in opposite directions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distforget.config import RunConfig
from distforget.errors import ConfigError
from distforget.evaluate import Evaluator, image_features
from distforget.objectives import METRICS, parse_target, shortfalls
from distforget.prepare import Prepared

GAP_METRICS = ("forget_acc", "retain_acc", "zeroshot_acc")


def check_retrain(cfg: RunConfig) -> None:
    """Refuse ``method: retrain`` for weights distforget did not pretrain itself."""
    if cfg.model.pretrained != "embedded":
        raise ConfigError(
            f"method retrain needs model.pretrained: embedded (got "
            f"{cfg.model.pretrained!r}): it pretrains distforget's own small CLIP again without "
            "the forget subgroup, and the pre-training data of other weights is not available")


def retrain(prepared: Prepared, cfg: RunConfig, *, device: torch.device,
            cache_dir: Path | None = None, log: Callable[[str], None] = print
            ) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Pretrain the model again without the forget subgroup (cached) and measure it on the
    prepared sets; returns the full state dict, a record like ``TrialResult.record()``'s, and
    the cached weights' path."""
    from distforget.data.scenario import forget_mask, needs_embeddings
    from distforget.data.load import load_data
    from distforget.model import input_size, load_pretrained, tokenizer_for
    from distforget.pretraining import ensure_pretrained, pretrained_info
    from distforget.zeroshot import build_head, templates_for

    check_retrain(cfg)
    start = time.perf_counter()
    data = load_data(cfg.data, cache_dir, model_size=input_size(cfg.model.name))
    templates = templates_for(cfg.data.templates, cfg.data.format, data.classes)
    embed = None
    if needs_embeddings(data, cfg.scenario):  # k-means subgroups: the base model's embeddings
        base = prepared.model().visual.to(device)
        prep = prepared.preprocess(device)

        def embed(images: np.ndarray) -> np.ndarray:
            return image_features(base, images, prep,
                                  precision=cfg.model.precision).cpu().numpy()
    exclude = forget_mask(data, cfg.scenario, embed)
    path = ensure_pretrained(cfg.model, cfg.pretrain, data, templates, device, cache_dir,
                             log=log, exclude=exclude,
                             holdout_fraction=cfg.scenario.holdout_fraction)
    model, spec = load_pretrained(cfg.model.name, str(path), cfg.model.quick_gelu)
    model = model.to(device).eval()
    head = build_head(model, tokenizer_for(spec), prepared.classes, templates, device)
    splits = {k: (v.indices, v.labels) for k, v in prepared.scenario.splits.items()}
    evaluator = Evaluator(prepared.images, splits, head, float(model.logit_scale.detach().exp()),
                          prepared.preprocess(device), precision=cfg.model.precision)
    # The reference is measured once, as it is: its test metrics are read with its validation
    # ones (nothing is chosen from it).
    metrics = {**evaluator.metrics(model.visual), **evaluator.metrics(model.visual, "test")}
    info = pretrained_info(path)
    record = {**metrics, **{f"base_{k}": prepared.base_metrics[k] for k in METRICS},
              "method": "retrain", "alpha": None, "beta": None,
              "wall_s": time.perf_counter() - start,
              "retrain_images": info.get("train_images"),
              "retrain_excluded": info.get("excluded_images"),
              "retrain_pretrain_s": info.get("wall_s")}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return state, record, str(path)


def gap_to_retrain(record: dict[str, Any], reference: dict[str, Any]) -> float:
    """Mean absolute difference of forget, retain and zero-shot accuracy to the retrained
    model's; test values (``test_<name>``) where both records have them, else validation."""
    def value(r: dict, k: str) -> float:
        return r[f"test_{k}"] if f"test_{k}" in record and f"test_{k}" in reference else r[k]

    return float(np.mean([abs(value(record, k) - value(reference, k)) for k in GAP_METRICS]))


def target_note(record: dict[str, Any], target: str) -> str | None:
    """A line naming each constraint of ``target`` (``search.target``) that the retrain
    reference's validation metrics miss (relative bounds from its ``base_<metric>`` values), or
    None when it meets them all. Validation only: the note describes, it chooses nothing."""
    base = {k: record[f"base_{k}"] for k in METRICS if f"base_{k}" in record}
    missed = shortfalls(record, parse_target(target), base)
    if not missed:
        return None
    return (f"the retrained model misses search.target {target!r} on validation: "
            f"{'; '.join(missed)}. The model that never saw the forget subgroup does not do "
            "what the target asks, so on this scenario a small gap_to_retrain and meeting the "
            "target pull in opposite directions")
