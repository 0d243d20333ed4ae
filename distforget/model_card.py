"""The model card (``README.md``) of an exported checkpoint: what was forgotten, how, and how well.

The card is open_clip's own Hub model card (``open_clip.push_to_hf_hub.generate_readme``: the
YAML header the Hub reads, ``library_name: open_clip``), with distforget's text as its
description, so the README written beside the weights is the one ``--push-to-hub`` uploads.
Test metrics and their 95% intervals appear when the record has them (``test_<name>``,
``test_<name>_lo``, ``test_<name>_hi``); metric names without a prefix are validation values.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

# name -> (what it measures, which way is better); the names are fixed by the design.
METRIC_ROWS = {
    "forget_acc": ("top-1 on held-out images of the forgotten subgroup", "lower"),
    "retain_acc": ("top-1 on held-out images of the kept subgroups and classes", "higher"),
    "zeroshot_acc": ("top-1 on classes no stage trained on", "higher"),
    "forget_sim": ("cosine of forget images to their class text", "lower"),
    "mia_auc": ("membership-inference AUC on the forget set", "nearer 0.5"),
}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown rows: each metric for this model and the base model, and its test value and 95%
    interval where the record has them."""
    names = [n for n in METRIC_ROWS if _number(metrics.get(n)) is not None
             or _number(metrics.get(f"test_{n}")) is not None]
    with_test = any(_number(metrics.get(f"test_{n}")) is not None for n in names)
    with_test_base = any(_number(metrics.get(f"test_base_{n}")) is not None for n in names)
    header = "| metric | what | better | this model | base model |"
    rule = "| --- | --- | --- | --- | --- |"
    if with_test:
        header += " test | test 95% interval |"
        rule += " --- | --- |"
    if with_test_base:
        header += " test, base model |"
        rule += " --- |"
    lines = [header, rule]
    for name in names:
        what, better = METRIC_ROWS[name]
        row = (f"| `{name}` | {what} | {better} | {_fmt(_number(metrics.get(name)))} | "
               f"{_fmt(_number(metrics.get(f'base_{name}')))} |")
        if with_test:
            lo, hi = (_number(metrics.get(f"test_{name}_{end}")) for end in ("lo", "hi"))
            interval = f"{lo:.3f} to {hi:.3f}" if lo is not None and hi is not None else ""
            row += f" {_fmt(_number(metrics.get(f'test_{name}')))} | {interval} |"
        if with_test_base:
            row += f" {_fmt(_number(metrics.get(f'test_base_{name}')))} |"
        lines.append(row)
    return lines


def describe(info: Mapping[str, Any]) -> str:
    """The card's text (Markdown) from a checkpoint record (``distforget.json``)."""
    model = info.get("model", {})
    config = info.get("config") or {}
    scenario = config.get("scenario", {})
    data = config.get("data", {})
    recipe = info.get("recipe") or {}
    base = info.get("base") or {}
    metrics = info.get("metrics") or {**(info.get("validation") or {}),
                                       **(info.get("test") or {}),
                                       **(base.get("validation") or {}),
                                       **(base.get("test") or {})}
    forget_class = scenario.get("forget_class", "?")
    subgroup = scenario.get("forget_subgroup")
    what = (f"subgroup `{subgroup}` of class `{forget_class}`" if subgroup is not None
            else f"the whole class `{forget_class}`")
    kept = (f"the other subgroups of `{forget_class}`" if subgroup is not None else "")
    if scenario.get("retain_classes"):
        kept += (", " if kept else "") + "classes " + ", ".join(
            f"`{c}`" for c in scenario["retain_classes"])
    lines = [
        f"`{model.get('name', '?')}` (weights: `{model.get('weights', '?')}`) after "
        f"targeted forgetting of {what}, made with distforget (the three-stage method of "
        "*Targeted Forgetting of Image Subgroups in CLIP Models*, Zhang et al., CVPR 2025, "
        "arXiv 2506.03117: forget, remind, restore by a weight-space soup). The weights derive "
        "from the base model's and carry its license.",
        "",
        "## Scenario",
        "",
        f"- forgotten: {what}",
        f"- kept: {kept or 'every other class'}; zero-shot accuracy on classes no stage "
        "trained on",
        f"- subgroups: {scenario.get('subgroups', '?')}"
        + (f" ({scenario.get('num_subgroups')} k-means clusters of the base model's image "
           "embeddings per class)" if scenario.get("subgroups") == "kmeans" else ""),
        f"- data: {data.get('format', '?')}" + (f" `{data['path']}`" if data.get("path") else ""),
        "",
        "## Recipe",
        "",
        f"- method: `{recipe.get('method', config.get('method', '?'))}`",
        f"- soup: theta = theta_0 + alpha ((1 - beta) (theta_2 - theta_0) + beta (theta_1 - "
        f"theta_0)) with alpha = {_fmt(_number(recipe.get('alpha')))}, beta = "
        f"{_fmt(_number(recipe.get('beta')))}",
    ]
    if info.get("trial_id"):
        lines.append(f"- point: trial `{info['trial_id']}`"
                     + (f", {info['why']}" if info.get("why") else ""))
    params = info.get("params") or {}
    if params:
        lines.append("- searched values: " + ", ".join(f"`{k}` = {v}"
                                                       for k, v in sorted(params.items())))
    lines += ["- the full run config is in `distforget.json` (`config`)", "",
              "## Metrics", "",
              "Metric names without a prefix are validation values (the images every choice "
              "saw); test values were read only after the choice.", "",
              *metrics_table(metrics), ""]
    target = info.get("target") or {}
    if target:
        lines += [f"Target `{target.get('rule')}`: "
                  + ("met on validation." if target.get("met_on_validation") else
                     "NOT met on validation (" + "; ".join(target.get("missed_by", [])) + ")."),
                  ""]
    confirmation = info.get("confirmation") or {}
    if confirmation.get("seeds"):
        mean, std = confirmation.get("mean", {}), confirmation.get("std", {})
        lines += [f"Over {len(confirmation['seeds'])} stage seeds (test, mean ± sd): " + ", ".join(
            f"{m} {mean[m]:.3f} ± {std[m]:.3f}" for m in mean) + "; target "
            + ("held on every seed." if confirmation.get("target_met_on_every_seed")
               else "not held on every seed."), ""]
    if info.get("sha256"):
        lines += [f"sha256 of the weights: `{info.get('sha256')}`", ""]
    return "\n".join(lines)


def usage() -> str:
    """How to load the folder with open_clip alone."""
    return ("```python\n"
            "import open_clip\n"
            "# this folder on disk; or \"hf-hub:ORG/NAME\" once pushed to the Hugging Face Hub\n"
            "model, _, preprocess = open_clip.create_model_and_transforms(\"local-dir:PATH\")\n"
            "tokenizer = open_clip.get_tokenizer(\"local-dir:PATH\")\n"
            "```\n")


def name_of(info: Mapping[str, Any]) -> str:
    """A name for the card's title: the architecture and what it forgot."""
    scenario = (info.get("config") or {}).get("scenario", {})
    parts = [info.get("model", {}).get("name", "model"), "forget",
             scenario.get("forget_class"), scenario.get("forget_subgroup")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(str(p) for p in parts if p is not None))


def card(info: Mapping[str, Any]) -> dict[str, Any]:
    """The model card in the form open_clip's Hub helpers take (``model_card=``)."""
    return {"tags": ["clip", "open_clip", "machine-unlearning", "distforget"],
            "license": "other", "description": describe(info), "usage": usage()}


def render(info: Mapping[str, Any], name: str) -> str:
    """``README.md`` text: open_clip's Hub model card with distforget's description."""
    from open_clip.push_to_hf_hub import generate_readme

    return generate_readme(card(info), name)
