"""Scenario building: from a forget spec to seeded, disjoint, content-hashed splits.

Splits (indices into the ImageTable, labels as ids into ``Scenario.classes``):

- ``forget_train`` / ``retain_train``: what the stages train on;
- ``calib_forget`` / ``calib_retain``: the calibration set D_m, held out from the training images
  of the same subgroups, used only to choose soup coefficients;
- ``val_forget`` / ``val_retain`` / ``val_zeroshot``: held-out images behind every metric that a
  choice sees (search objectives, soup sweeps, the front, the pick);
- ``test_forget`` / ``test_retain`` / ``test_zeroshot``: held-out images read only after the
  search has chosen, to report the chosen points (``test_<metric>``).

Training and calibration images come from the data's ``train`` split, held-out images from its
``test``/``val`` split; data without a split column is divided by a hash of each image's content
alone (``held_out_mask``: the same rule pretraining uses, so a pretrained small CLIP never saw a
held-out image, whatever the scenario seed). Within a pool, rows are ordered by content hash and
then shuffled by ``scenario.seed``, so the same data and config give the same splits. Each set's
held-out images (at most ``scenario.max_eval``) are then divided into validation and test by a
hash of content and seed: the ``scenario.test_fraction`` with the lowest hashes are test. Each
side must hold at least ``MIN_HELD_OUT`` images of each set.

Subgroup rule when the data has no subgroup labels (``scenario.subgroups: kmeans``, or ``auto``
without a subgroup column): the forget class's training images are embedded with the base
model's image tower (L2-normalised), clustered with k-means (``num_subgroups`` clusters,
``random_state = scenario.seed``, 10 initialisations), and every image of the class, held-out
ones included, takes the nearest centre. Clusters are named ``k0``, ``k1``, ... in decreasing
size (ties by the smallest content hash in the cluster).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from distforget.config import ScenarioConfig
from distforget.data.sources import EVAL_SPLITS, SPLIT_NAMES, ImageTable
from distforget.errors import DataError, did_you_mean

HELD_OUT_SETS = ("forget", "retain", "zeroshot")
SPLITS = ("forget_train", "retain_train", "calib_forget", "calib_retain",
          *(f"{part}_{s}" for part in ("val", "test") for s in HELD_OUT_SETS))
# The fewest held-out images of one set on either side of the validation/test division: fewer
# make an accuracy whose 95% interval spans most of [0, 1].
MIN_HELD_OUT = 5


@dataclass(frozen=True)
class Split:
    indices: np.ndarray  # rows of the ImageTable
    labels: np.ndarray   # class ids into Scenario.classes
    hash: str

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class Scenario:
    classes: tuple[str, ...]
    forget_class: str
    forget_subgroup: str | None
    retain_classes: tuple[str, ...]
    zeroshot_classes: tuple[str, ...]
    subgroup_rule: str
    subgroups: tuple[str, ...]  # the forget class's subgroups
    splits: Mapping[str, Split]
    # Retained-labelled images left out because their content is a forget image's
    # (scenario.shared_images: forget).
    shared_with_forget: int = 0

    @property
    def forget_label(self) -> int:
        return self.classes.index(self.forget_class)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(repr(self.classes).encode())
        for name in SPLITS:
            h.update(f"{name}:{self.splits[name].hash}".encode())
        return h.hexdigest()

    def summary(self) -> dict[str, int]:
        return {name: len(self.splits[name]) for name in SPLITS}



def _unit_hash(shas, salt: str) -> np.ndarray:
    """A number in [0, 1) per image from its content hash and a salt."""
    return np.array([int(hashlib.sha256(f"{salt}:{s}".encode()).hexdigest()[:13], 16) / 16**13
                     for s in shas])


def held_out_mask(data: ImageTable, holdout_fraction: float) -> np.ndarray:
    """Rows held out of all training, pretraining included: the data's ``test``/``val`` split,
    or, without a split column, the images whose content hash alone falls below
    ``holdout_fraction`` (no seed, so every scenario seed and the pretraining agree)."""
    table = data.table
    if data.has_splits:
        values = set(table["split"])
        unknown = sorted(values - set(SPLIT_NAMES))
        if unknown:
            raise DataError(f"split value {unknown[0]!r} in the data is not one of "
                            f"{', '.join(SPLIT_NAMES)}")
        return table["split"].isin(EVAL_SPLITS).to_numpy()
    return _unit_hash(table["sha"], "holdout") < holdout_fraction


def _pools(data: ImageTable, cfg: ScenarioConfig) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of training-pool and held-out-pool rows."""
    held_out = held_out_mask(data, cfg.holdout_fraction)
    if data.has_splits:
        return (data.table["split"] == "train").to_numpy(), held_out
    return ~held_out, held_out


def kmeans_subgroups(embeddings: np.ndarray, fit_mask: np.ndarray, shas: np.ndarray, k: int,
                     seed: int) -> np.ndarray:
    """Subgroup names (``k0``...) by the documented k-means rule; see the module docstring."""
    from sklearn.cluster import KMeans

    if fit_mask.sum() < k:
        raise DataError(f"scenario.num_subgroups is {k} but the forget class has only "
                        f"{int(fit_mask.sum())} training images to cluster")
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(x[fit_mask].astype(np.float64))
    assign = km.predict(x.astype(np.float64))
    fit_assign = assign[fit_mask]
    order = sorted(range(k), key=lambda c: (-(fit_assign == c).sum(),
                                            min(shas[fit_mask][fit_assign == c], default="")))
    names = {c: f"k{rank}" for rank, c in enumerate(order)}
    return np.array([names[c] for c in assign], dtype=object)


def _synset_classes(cfg: ScenarioConfig, classes: tuple[str, ...]) -> tuple[str, ...]:
    """The data's classes under ``scenario.retain_synset`` (ImageNet-1K's WordNet hierarchy),
    minus the forget class and the classes ``retain_classes`` names already."""
    if cfg.retain_synset is None:
        return ()
    from distforget.data.imagenet import classes_under

    try:
        under = classes_under(cfg.retain_synset)
    except DataError as exc:
        raise DataError(f"scenario.retain_synset: {exc}") from None
    present = tuple(c for c in under if c in classes)
    if not any(c != cfg.forget_class for c in present):
        raise DataError(f"scenario.retain_synset {cfg.retain_synset!r} holds no class of the data "
                        f"besides the forget class (its ImageNet-1K classes: "
                        f"{', '.join(under[:20])})")
    return tuple(c for c in present if c != cfg.forget_class and c not in cfg.retain_classes)


def _split(table: pd.DataFrame, rows: np.ndarray, classes: tuple[str, ...], name: str) -> Split:
    labels = np.array([classes.index(c) for c in table["class_name"].to_numpy()[rows]],
                      dtype=np.int64)
    h = hashlib.sha256(name.encode())
    for sha, label in zip(table["sha"].to_numpy()[rows], labels):
        h.update(f"{sha}:{label};".encode())
    return Split(indices=np.asarray(rows, dtype=np.int64), labels=labels, hash=h.hexdigest())


def _ordered(table: pd.DataFrame, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``mask`` in content-hash order, then shuffled by ``rng``."""
    rows = np.flatnonzero(mask)
    rows = rows[np.lexsort((rows, table["sha"].to_numpy()[rows]))]
    return rows[rng.permutation(len(rows))]


def held_out(table: pd.DataFrame, mask: np.ndarray, rng: np.random.Generator,
             cfg: ScenarioConfig, name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One set's held-out images (at most ``max_eval``), divided into (validation, test) by a
    hash of content and seed; too few on either side is an error that says what to change."""
    rows = _ordered(table, mask, rng)[:cfg.max_eval]
    if len(rows) == 0:
        raise DataError(f"no held-out images for the {name} metric: the data's test/val split "
                        f"has none of {what if name == 'forget' else 'these classes'}")
    u = _unit_hash(table["sha"].to_numpy()[rows], f"test:{cfg.seed}")
    n_test = int(round(cfg.test_fraction * len(rows)))
    is_test = np.zeros(len(rows), bool)
    is_test[np.argsort(u, kind="stable")[:n_test]] = True
    val, test = rows[~is_test], rows[is_test]
    if min(len(val), len(test)) < MIN_HELD_OUT:
        raise DataError(
            f"too few held-out images of the {name} set ({what if name == 'forget' else name}) "
            f"to divide into validation and test: {len(rows)} held out gives {len(val)} "
            f"validation and {len(test)} test images (scenario.test_fraction "
            f"{cfg.test_fraction:g}); each side needs at least {MIN_HELD_OUT}: add held-out "
            "images or change scenario.test_fraction")
    return val, test


def check_scenario(data: ImageTable, cfg: ScenarioConfig) -> None:
    """Every check that needs no model: class names, retained and zero-shot classes, and the
    forget subgroup when subgroups come from labels. Run before any pretraining or training."""
    classes = data.classes
    if cfg.forget_class not in classes:
        raise DataError(f"scenario.forget_class {cfg.forget_class!r} is not a class of the data"
                        f"{did_you_mean(cfg.forget_class, classes)}; classes: "
                        f"{', '.join(classes[:30])}")
    for c in cfg.retain_classes:
        if c == cfg.forget_class:
            raise DataError(f"scenario.retain_classes contains the forget class {c!r}: its other "
                            "subgroups are retained already")
        if c not in classes:
            raise DataError(f"scenario.retain_classes names {c!r}, which is not a class of the "
                            f"data{did_you_mean(c, classes)}")
    trained = {cfg.forget_class, *cfg.retain_classes, *_synset_classes(cfg, classes)}
    for c in cfg.zeroshot_classes:
        if c not in classes:
            raise DataError(f"scenario.zeroshot_classes names {c!r}, which is not a class of "
                            f"the data{did_you_mean(c, classes)}")
        if c in trained:
            raise DataError(f"scenario.zeroshot_classes names {c!r}, which a stage trains on")
    table = data.table
    is_class = (table["class_name"] == cfg.forget_class).to_numpy()
    has_column = "subgroup" in table and table.loc[is_class, "subgroup"].notna().all()
    if cfg.forget_subgroup is not None and (cfg.subgroups == "column"
                                            or (cfg.subgroups == "auto" and has_column)):
        if not has_column:
            raise DataError(f"scenario.subgroups is 'column' but images of class "
                            f"{cfg.forget_class!r} have no subgroup label")
        labels = sorted(set(table.loc[is_class, "subgroup"]))
        if cfg.forget_subgroup not in labels:
            raise DataError(f"scenario.forget_subgroup {cfg.forget_subgroup!r} is not a subgroup "
                            f"of class {cfg.forget_class!r}"
                            f"{did_you_mean(cfg.forget_subgroup, labels)}"
                            f"; subgroups (column): {', '.join(labels)}")


def needs_embeddings(data: ImageTable, cfg: ScenarioConfig) -> bool:
    """Whether the forget class's subgroups come from k-means on the base model's embeddings
    (so the splits can only be built once there is a base model)."""
    if cfg.forget_subgroup is None:
        return False
    table = data.table
    is_class = (table["class_name"] == cfg.forget_class).to_numpy()
    has_column = "subgroup" in table and table.loc[is_class, "subgroup"].notna().all()
    return cfg.subgroups == "kmeans" or (cfg.subgroups == "auto" and not has_column)


def assign_subgroups(data: ImageTable, cfg: ScenarioConfig, train_pool: np.ndarray,
                     embed: Callable[[np.ndarray], np.ndarray] | None
                     ) -> tuple[np.ndarray, str]:
    """Each row's subgroup within the forget class (None elsewhere) and the rule that gave it:
    the data's labels, or k-means on the base model's embeddings (module docstring)."""
    table = data.table
    is_class = (table["class_name"] == cfg.forget_class).to_numpy()
    has_column = "subgroup" in table and table.loc[is_class, "subgroup"].notna().all()
    mode = cfg.subgroups if cfg.subgroups != "auto" else ("column" if has_column else "kmeans")
    subgroup = np.array([None] * len(table), dtype=object)
    if cfg.forget_subgroup is None:  # the whole class: no subgroups needed
        return subgroup, "none (the whole class is forgotten)"
    if mode == "column":
        if not has_column:
            raise DataError(f"scenario.subgroups is 'column' but images of class "
                            f"{cfg.forget_class!r} have no subgroup label")
        subgroup[is_class] = table.loc[is_class, "subgroup"].to_numpy()
        return subgroup, "column"
    if embed is None:
        raise DataError("the k-means subgroup rule needs the base model's image embeddings")
    rows = np.flatnonzero(is_class)
    emb = embed(np.asarray(data.images[rows]))
    subgroup[rows] = kmeans_subgroups(emb, train_pool[rows], table["sha"].to_numpy()[rows],
                                      cfg.num_subgroups, cfg.seed)
    return subgroup, f"kmeans(k={cfg.num_subgroups}, seed={cfg.seed}, base-model image embeddings)"


def forget_mask(data: ImageTable, cfg: ScenarioConfig,
                embed: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Every image of the forget subgroup (or of the forget class when it has none), in every
    split and uncapped by ``max_forget``: what a model retrained without it must not see."""
    check_scenario(data, cfg)
    train_pool, _ = _pools(data, cfg)
    subgroup, _ = assign_subgroups(data, cfg, train_pool, embed)
    is_class = (data.table["class_name"] == cfg.forget_class).to_numpy()
    mask = is_class if cfg.forget_subgroup is None else is_class & (subgroup == cfg.forget_subgroup)
    # Copies of a forget image under another label are forgotten too (scenario.shared_images).
    return _same_content(data.table, mask)


def _same_content(table, mask: np.ndarray) -> np.ndarray:
    """Every row whose content (``sha``) is that of a row in ``mask``."""
    shas = table["sha"].to_numpy()
    return np.isin(shas, shas[mask])


def _shared_content(table, forget_mask: np.ndarray, retain_mask: np.ndarray,
                    cfg: ScenarioConfig) -> np.ndarray:
    """The retain-side images whose content is also a forget image's; refused under
    ``shared_images: error``."""
    shared = retain_mask & _same_content(table, forget_mask)
    if shared.any() and cfg.shared_images == "error":
        count = len(set(table["sha"].to_numpy()[shared]))
        example = table["source"].to_numpy()[forget_mask & _same_content(table, shared)][0]
        raise DataError(f"the forget and retain sets overlap: {count} images appear in both "
                        f"(same content), e.g. {example}; scenario.shared_images: forget leaves "
                        "their retained copies out instead")
    return shared


def build_scenario(data: ImageTable, cfg: ScenarioConfig,
                   embed: Callable[[np.ndarray], np.ndarray] | None = None) -> Scenario:
    """Derive every split of the scenario; ``embed`` maps uint8 images to embeddings and is
    needed only for the k-means subgroup rule."""
    check_scenario(data, cfg)
    table = data.table
    classes = data.classes
    retain_classes = tuple(cfg.retain_classes) + _synset_classes(cfg, classes)
    train_pool, eval_pool = _pools(data, cfg)
    is_class = (table["class_name"] == cfg.forget_class).to_numpy()

    subgroup, rule = assign_subgroups(data, cfg, train_pool, embed)
    subgroups = tuple(sorted({s for s in subgroup[is_class] if s is not None}))

    if cfg.forget_subgroup is None:
        forget_mask = is_class
        retain_mask = table["class_name"].isin(retain_classes).to_numpy()
        if not retain_classes:
            raise DataError("forgetting the whole class (scenario.forget_subgroup: null) needs "
                            "scenario.retain_classes or scenario.retain_synset: there is no "
                            "subgroup of it left to keep")
    else:
        if cfg.forget_subgroup not in subgroups:
            hint = did_you_mean(cfg.forget_subgroup, subgroups)
            raise DataError(f"scenario.forget_subgroup {cfg.forget_subgroup!r} is not a subgroup "
                            f"of class {cfg.forget_class!r}{hint}"
                            f"; subgroups ({rule}): {', '.join(subgroups)}")
        forget_mask = is_class & (subgroup == cfg.forget_subgroup)
        retain_mask = ((is_class & (subgroup != cfg.forget_subgroup))
                       | table["class_name"].isin(retain_classes).to_numpy())
    shared = _shared_content(table, forget_mask, retain_mask, cfg)
    retain_mask = retain_mask & ~shared

    trained = {cfg.forget_class, *retain_classes}
    if cfg.zeroshot_classes:
        zeroshot = tuple(cfg.zeroshot_classes)
    else:
        zeroshot = tuple(c for c in classes if c not in trained)
    if not zeroshot:
        raise DataError("no zero-shot classes are left: every class is trained on; remove some "
                        "from scenario.retain_classes (or scenario.retain_synset)")
    zeroshot_mask = table["class_name"].isin(zeroshot).to_numpy()

    rng = np.random.default_rng(cfg.seed)
    what = (f"subgroup {cfg.forget_subgroup!r} of class {cfg.forget_class!r}"
            if cfg.forget_subgroup is not None else f"class {cfg.forget_class!r}")

    def train_and_calibration(mask, cap, label):
        rows = _ordered(table, mask & train_pool, rng)
        if len(rows) < 2:
            raise DataError(f"the {label} set is empty or too small: {len(rows)} training images "
                            f"({'of ' + what if label == 'forget' else 'to retain'}); "
                            "at least 2 are needed")
        n_cal = min(len(rows) - 1, max(1, round(cfg.calibration_fraction * len(rows))))
        return rows[n_cal:n_cal + cap], rows[:n_cal]

    forget_train, calib_forget = train_and_calibration(forget_mask, cfg.max_forget, "forget")
    retain_train, calib_retain = train_and_calibration(retain_mask, cfg.max_retain, "retain")

    held = {name: held_out(table, mask & eval_pool, rng, cfg, name, what)
            for name, mask in (("forget", forget_mask), ("retain", retain_mask),
                               ("zeroshot", zeroshot_mask))}

    rows = {"forget_train": forget_train, "retain_train": retain_train,
            "calib_forget": calib_forget, "calib_retain": calib_retain,
            **{f"val_{name}": val for name, (val, _) in held.items()},
            **{f"test_{name}": test for name, (_, test) in held.items()}}
    return Scenario(
        classes=classes, forget_class=cfg.forget_class, forget_subgroup=cfg.forget_subgroup,
        retain_classes=retain_classes, zeroshot_classes=zeroshot, subgroup_rule=rule,
        subgroups=subgroups, splits={k: _split(table, v, classes, k) for k, v in rows.items()},
        shared_with_forget=int(shared.sum()))
