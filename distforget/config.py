"""Run configuration: one frozen dataclass per concern, composed into ``RunConfig``.

A config is built from YAML (or a plain dict) and dotted ``key=value`` overrides, validated at
the boundary: unknown keys, wrong types and out-of-range numbers raise ``ConfigError`` naming
the key and the expected form. Nothing changes a config after it is built; stages take the part
they need and return what they derive. The dataclass defaults are the embedded default run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from distforget.errors import ConfigError
from distforget.objectives import DEFAULT_TARGET, parse_rule, parse_target

# Method names, declared once: the types check config values; the tuples serve everything else.
# retrain: the small CLIP pretrained again without the forget subgroup (the reference that
# unlearning approximates; only for model.pretrained: embedded).
Baseline = Literal["ft", "ga", "rl", "neggrad", "salun"]
Tracker = Literal["tensorboard", "mlflow", "wandb"]
Method = Literal["three_stage", "ft", "ga", "rl", "neggrad", "salun", "base", "retrain"]
BASELINES: tuple[str, ...] = typing.get_args(Baseline)
METHODS: tuple[str, ...] = typing.get_args(Method)


def knob(default: Any, *, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None):
    """A dataclass field with an allowed numeric range, checked when the config is built."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"bounds": bounds})


@dataclass(frozen=True)
class ModelConfig:
    """Which open_clip model is the base model ``g``."""

    name: str = "DF-RN-Tiny-32"
    # An open_clip pretrained tag ("openai", "laion2b_s34b_b79k", ...), a local checkpoint file
    # (.safetensors, or a torch state dict loaded with weights_only=True), or "embedded": the
    # small CLIP that distforget pretrains on the run's own training images and caches.
    pretrained: str = "embedded"
    # None follows the weights: tags trained with QuickGELU (openai) get it, as open_clip's
    # "-quickgelu" model names do; true/false force it.
    quick_gelu: bool | None = None
    # Autocast dtype for training and evaluation; "auto" is bf16 on a GPU that has it, else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    cache_dir: str | None = None


@dataclass(frozen=True)
class PretrainConfig:
    """Contrastive pretraining of the small CLIP (used when ``model.pretrained`` is "embedded")."""

    epochs: int = knob(12, ge=1)
    batch_size: int = knob(128, ge=2)
    lr: float = knob(1e-3, gt=0)
    weight_decay: float = knob(0.05, ge=0)
    seed: int = 0


@dataclass(frozen=True)
class GeneratedConfig:
    """The generated shapes data set of the embedded default."""

    train_per_subgroup: int = knob(160, ge=4)
    test_per_subgroup: int = knob(60, ge=2)
    image_size: int = knob(32, ge=16, le=256)
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from; every source becomes the same internal form."""

    # generated: the embedded shapes; parquet: a manifest (image bytes or paths, class_name,
    # optional subgroup and split); folder: ROOT/<split>/<class>/[<subgroup>/]<image>;
    # cifar10: torchvision's download into `path` (default <cache>/cifar10), or a Parquet copy
    # of CIFAR-10 when `path` holds one; imagenet: ROOT/{train,val}/<wnid>/*.JPEG.
    format: Literal["generated", "parquet", "folder", "cifar10", "imagenet"] = "generated"
    path: str | None = None
    # Resolution the decoded cache stores (square); None keeps the native size where every image
    # has one square size, else stores the model's input size. The model's own input size is
    # reached on the device.
    image_size: int | None = knob(None, ge=8, le=1024)
    # Prompt templates for the zero-shot head: "auto" picks by format, or one of the named sets.
    templates: Literal["auto", "cifar10", "imagenet", "simple", "generated"] = "auto"
    # Only these classes (all when empty).
    classes: tuple[str, ...] = ()
    generated: GeneratedConfig = field(default_factory=GeneratedConfig)


@dataclass(frozen=True)
class ScenarioConfig:
    """What to forget and what must be kept."""

    forget_class: str = "circle"
    # The subgroup to forget; null forgets the whole class.
    forget_subgroup: str | None = "red"
    # Where subgroups come from: a `subgroup` column or folder level ("column"), k-means on the
    # base model's image embeddings within each class ("kmeans"), or "auto" (column if present).
    subgroups: Literal["auto", "column", "kmeans"] = "auto"
    num_subgroups: int = knob(3, ge=2, le=64)
    # Classes (besides the forget class's other subgroups) that the remind stage trains on;
    # they are then not part of the zero-shot set.
    retain_classes: tuple[str, ...] = ()
    # ImageNet-1K: also retain every class of the data under this WordNet synset (a wnid such
    # as "n02484322", or a lemma such as "monkey"), the forget class excepted; see
    # distforget.data.imagenet for the shipped hierarchy.
    retain_synset: str | None = None
    # Classes measured by zeroshot_acc; empty means every class not trained on in any stage.
    zeroshot_classes: tuple[str, ...] = ()
    # An image of the forget subgroup whose content is also labelled as a retained image (the
    # same picture under two labels, which real data sets hold): "forget" leaves every such
    # retained copy out of the retain sets and the retrain reference's training images (the
    # picture is forgotten, never kept; the log says how many), "error" refuses the scenario.
    shared_images: Literal["forget", "error"] = "forget"
    max_forget: int = knob(512, ge=1)
    max_retain: int = knob(2048, ge=1)
    max_eval: int = knob(1000, ge=1)
    # Part of the training forget/retain images held out as the calibration set D_m.
    calibration_fraction: float = knob(0.2, gt=0, lt=1)
    # Held-out evaluation part, used only when the data has no split column: an image is held
    # out when a hash of its content alone falls below this, so pretraining (model.pretrained:
    # embedded) and every scenario seed agree on which images are held out.
    holdout_fraction: float = knob(0.25, gt=0, lt=1)
    # The held-out images of each set (forget, retain, zero-shot) are divided, by content hash
    # and seed, into validation (every choice sees it) and test (read only after the choice);
    # this is the test part. Each side must hold at least distforget.data.scenario.MIN_HELD_OUT
    # images of each set.
    test_fraction: float = knob(0.5, gt=0, lt=1)
    seed: int = 0


@dataclass(frozen=True)
class ForgetConfig:
    """Stage 1: relative-Fisher layer selection, then fine-tuning away from the class text."""

    lr: float = knob(1e-3, gt=0, le=1)
    epochs: int = knob(10, ge=1)
    batch_size: int = knob(64, ge=1)
    weight_decay: float = knob(0.0, ge=0)
    # Number of image-tower layers (blocks) fine-tuned, by relative Fisher rank; 0 = all layers.
    top_k: int = knob(2, ge=0)
    # similarity: lower the cosine to the class text; margin: hinge until another class leads
    # by `margin`; ce_away: -log(1 - p(class)).
    loss: Literal["similarity", "margin", "ce_away"] = "margin"
    margin: float = knob(0.05, ge=0)
    lora_rank: int = knob(0, ge=0)
    lora_alpha: float = knob(8.0, gt=0)
    # Stop once top-1 accuracy on the training forget images is at or below this.
    target_acc: float = knob(0.0, ge=0, le=1)
    fisher_samples: int = knob(64, ge=1)
    seed: int = 0


@dataclass(frozen=True)
class RemindConfig:
    """Stage 2: cross-entropy on retained images plus distillation from the base model."""

    lr: float = knob(1e-4, gt=0, le=1)
    # 32 (16 before, 8 and 4 before that): the forget stage can leave zero-shot accuracy near
    # chance (the per-stage diagnostics of `distforget unlearn`), and the remind stage needs the
    # longer run to bring retained and zero-shot accuracy back while the forget term keeps the
    # subgroup away; at 16 epochs a subgroup of a class crept back (README "The method").
    epochs: int = knob(32, ge=1)
    batch_size: int = knob(64, ge=1)
    weight_decay: float = knob(0.0, ge=0)
    lambda_kd: float = knob(10.0, ge=0)
    temperature: float = knob(2.0, gt=0)
    # Weight of feature distillation on the retained and synthetic images: 1 - cosine between
    # each image's embedding and the base model's; 0 disables it.
    feature_kd: float = knob(0.0, ge=0)
    # Weight EMA decay per step; null disables it.
    ema_decay: float | None = knob(0.9, gt=0, lt=1)
    # Learning rate over the stage: constant, or cosine (from lr down to 0 at the last step).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # Which layers the remind stage trains: those the forget stage chose, or the whole tower.
    layers: Literal["forget", "all"] = "forget"
    # Weight of a forget term on the forget images during remind (per image, beside a retained
    # image's cross-entropy and lambda_kd-weighted distillation). On by default: the paper's
    # remind stage (0, configs/presets/paper.yaml), which sees retained images only, gives a
    # forget subgroup that shares its class text with the retained ones its class back. 100
    # (10 before): at 10 held-out images of subgroups nobody had tuned on came back (README
    # "The method").
    forget_weight: float = knob(100.0, ge=0)
    # The forget term: one of the forget stage's losses (with forget_margin as its margin), or
    # distill: distillation towards the base model's logits with the forget class taken out.
    forget_loss: Literal["similarity", "margin", "ce_away", "distill"] = "distill"
    forget_margin: float = knob(0.05, ge=0)
    # Synthetic images whose batch statistics match the stored BatchNorm statistics, added to the
    # distillation set (BatchNorm backbones such as RN50 only); 0 disables it, null means 256
    # for an image tower with BatchNorm layers and 0 for one without.
    bn_align_images: int | None = knob(None, ge=0)
    bn_align_steps: int = knob(50, ge=1)
    seed: int = 0


@dataclass(frozen=True)
class RestoreConfig:
    """Stage 3: weight-space soup of the base, forgotten and reminded models.

    theta = theta_0 + alpha * ((1 - beta) * (theta_2 - theta_0) + beta * (theta_1 - theta_0));
    beta = 0 is the line between base and reminded model, beta > 0 a point of the simplex.
    """

    alpha: float = knob(1.0, ge=0, le=1)
    beta: float = knob(0.0, ge=0, le=1)
    # fixed: use alpha/beta as given; calibration: choose alpha on the calibration set D_m.
    choose: Literal["fixed", "calibration"] = "calibration"
    grid: tuple[float, ...] = knob((0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), ge=0, le=1)
    # Calibration rule: the alpha with the best retain accuracy whose forget accuracy is at or
    # below forget_target and whose retain accuracy is at least retain_floor times the base
    # model's; if none is, the alpha nearest to both bounds (the sum of its two shortfalls).
    forget_target: float = knob(0.05, ge=0, le=1)
    # The calibration rule's retain bound as a share of the base model's calibration retain
    # accuracy (0.9: the default target's). 0 is the rule before it existed: the lowest forget
    # accuracy when none meets forget_target, however few retained images that soup keeps.
    retain_floor: float = knob(0.9, ge=0, le=1)


@dataclass(frozen=True)
class BaselineConfig:
    """Knobs shared by the baselines (FT, GA, RL, NegGrad+, SalUn)."""

    lr: float = knob(5e-4, gt=0, le=1)
    epochs: int = knob(6, ge=1)
    batch_size: int = knob(64, ge=1)
    weight_decay: float = knob(0.0, ge=0)
    # NegGrad+: loss = (1 - w) * CE(retain) - w * CE(forget).
    neggrad_weight: float = knob(0.5, gt=0, lt=1)
    # SalUn: fraction of image-tower weights, by forget-gradient magnitude, that RL may change.
    salun_sparsity: float = knob(0.5, gt=0, le=1)
    # Methods with a forgetting term (GA, RL, NegGrad+, SalUn) stop once top-1 accuracy on the
    # training forget images is at or below this, as the forget stage does.
    target_acc: float = knob(0.0, ge=0, le=1)
    seed: int = 0


@dataclass(frozen=True)
class SearchConfig:
    """The Ray Tune + Optuna search."""

    # A file path, or the name of a space shipped in search_spaces/ ("embedded", "cifar10", ...).
    space: str = "embedded"
    # 16: the budget at which the scenario suite checks the stage defaults and the default
    # space (bench/suite.py, bench/RESULTS.md section 7).
    num_trials: int = knob(16, ge=1)
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int = 0
    # Constraints on validation metrics that a good point meets, absolute or relative to the
    # base model's validation value ("*base"). Handed to Optuna's sampler as constraints (with
    # pick "target", each asked to hold by pick_margin standard errors, as that pick asks), and
    # what pick "target" picks by.
    target: str = DEFAULT_TARGET
    # Rule that picks the exported point among validation points: "target" (meets the target
    # by pick_margin, then the highest zeroshot_acc, then retain_acc; else the nearest to it,
    # said plainly), "knee", or constraints then an objective, e.g.
    # "forget_acc<=0.05, max zeroshot_acc".
    pick: str = "target"
    # For pick "target": how many standard errors (of the unit pick_margin_unit names; binomial
    # proportions at the threshold, distforget.objectives.margin_sizes) a point must clear every
    # constraint by to be chosen for its zero-shot accuracy; a value at the metric's bound
    # (forget 0) clears it by any margin. When none does, the feasible point with the largest
    # margin is chosen. 0: any point that meets the target.
    # The sampler's constraint values carry the same margin (distforget.study.Steering).
    pick_margin: float = knob(1.0, ge=0)
    # What pick_margin's standard errors are of: "validation-test" (the difference between a
    # metric's validation and test estimates, over both splits' sizes), or "validation" (the
    # validation estimate alone, the unit before; bench/RESULTS.md section 7 sets the two side
    # by side on the suite).
    pick_margin_unit: Literal["validation", "validation-test"] = "validation-test"
    # The first trial is this config's own value of each searched key (the stage defaults
    # where the config sets none; a key whose value lies outside the space is sampled), so a
    # search measures its config's settings and their soup sweep before it explores (Optuna's
    # enqueue_trial, as Ray Tune's points_to_evaluate). false: every trial is sampled.
    start_from_config: bool = True
    # The chosen recipe is trained again with this many further stage seeds (its test metrics
    # per seed, their mean and spread, and whether the target holds on each, are reported).
    confirm_seeds: int = knob(2, ge=0)
    # Baselines compared with the method. With baseline_trials 1 each runs once at its default
    # settings; with more, each is searched over its own space (search_spaces/baseline-<name>)
    # with that many trials, and its weights get the same soup sweep with the base model.
    baselines: tuple[Baseline, ...] = BASELINES
    baseline_trials: int = knob(1, ge=1)
    # null: derived from the cluster's resources and the resources per trial.
    max_concurrent_trials: int | None = knob(None, ge=1)

    def __post_init__(self):
        parse_target(self.target)
        parse_rule(self.pick)


@dataclass(frozen=True)
class ResourcesConfig:
    """Resources per trial; they drive Tune's concurrency and each stage's ScalingConfig."""

    workers: int = knob(1, ge=1)
    # The defaults make one trial (its own process plus one worker) hold exactly one CPU, so a
    # 2-core machine runs two trials at once.
    cpus_per_worker: float = knob(0.95, gt=0)
    gpus_per_worker: float = knob(0.0, ge=0)
    # The trial's own process: with one worker it also runs the stages (and asks for this plus
    # the worker's resources); with several it only drives the worker group and waits.
    trial_cpus: float = knob(0.05, gt=0)
    # Restarts after a process or node dies, each resuming the running stage from its last
    # epoch: of a trial's actor (one worker: the stages run in it; on a lost node Tune retries
    # the trial under the same id, reusing the stages it finished) or of a stage's worker group
    # (several workers).
    max_failures: int = knob(2, ge=0)


@dataclass(frozen=True)
class OutputConfig:
    """Where a run's files go: <storage>/<name>/."""

    storage: str = "distforget_runs"
    name: str = "embedded-default"
    # The storage path is a shared filesystem mounted at the same path on every node (NFS), so
    # a multi-node cluster may use it although it is not a URI.
    shared: bool = False
    # Ray Tune logger callbacks the search also sends every trial's results to, per-epoch stage
    # metrics included: tensorboard (event files in each trial's folder under the run folder),
    # mlflow (MLFLOW_TRACKING_URI, else sqlite:///<run>/mlflow.db), wandb (WANDB_* settings).
    # Each needs its extra: pip install 'distforget[tensorboard]' (or mlflow, wandb).
    callbacks: tuple[Tracker, ...] = ()
    # Ray Train's own lines (worker groups, checkpoints, one per epoch) on the console as well
    # (``--verbose``); otherwise only its warnings.
    verbose: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Everything one run (a single trial or a search) needs; saved beside every result."""

    method: Method = "three_stage"
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    remind: RemindConfig = field(default_factory=RemindConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# The learning rates, the remind stage's length and the search space that the defaults set for
# the small CLIP distforget pretrains from scratch (model.pretrained: embedded); see
# small_clip_settings_note.
SMALL_CLIP_SETTINGS = ("search.space", "forget.lr", "remind.lr", "remind.epochs", "baseline.lr")


def small_clip_settings_note(cfg: RunConfig) -> str | None:
    """A line for the run's log when the model is not one of distforget's small CLIPs (its own
    architectures, ``model_configs/DF-*.json``) but the learning rates, the remind stage's
    length or the search space are still the defaults chosen for them
    (``SMALL_CLIP_SETTINGS``); else None."""
    if cfg.model.pretrained == "embedded" or cfg.model.name.startswith("DF-"):
        return None
    default = RunConfig()
    left = [key for key in SMALL_CLIP_SETTINGS if _knob(cfg, key) == _knob(default, key)]
    if not left:
        return None
    return (f"note: model.pretrained is {cfg.model.pretrained!r}, but "
            + ", ".join(f"{key} {_knob(cfg, key)!r}" for key in left)
            + (" is the default" if len(left) == 1 else " are the defaults")
            + " chosen for the small CLIP "
            "distforget pretrains from scratch (model.pretrained: embedded); for pretrained "
            "open_clip weights start from the stage settings and search space of "
            "configs/cifar10-vit-b-32.yaml (search.space=vit-b-32, learning rates near 1e-5, "
            "remind.epochs 4)")


def _knob(cfg: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON-ready values (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


# --- building and validating -------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
        item_tp = typing.get_args(tp)[0]
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping of {tp.__name__} keys")
        return build(tp, value, prefix=key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {value!r}, expected a string")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _check_bounds(value: Any, bounds: dict[str, float], key: str) -> None:
    if value is None or not bounds:
        return
    items = list(enumerate(value)) if isinstance(value, tuple) else [(None, value)]
    checks = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
              "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for i, v in items:
        for name, bound in bounds.items():
            ok, sign = checks[name]
            if not ok(v, bound):
                expected = " and ".join(f"{checks[n][1]} {b}" for n, b in bounds.items())
                where = key if i is None else f"{key}[{i}]"
                raise ConfigError(f"{where}: got {v!r}, expected a value {expected}")


def build(cls: type, data: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key, type and range."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}: expected one of {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        coerced = _coerce(value, hints[name], key)
        _check_bounds(coerced, names[name].metadata.get("bounds", {}), key)
        kwargs[name] = coerced
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse ``key=value`` overrides; values are read as YAML scalars (numbers, lists, null)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. forget.lr=1e-4")
        try:
            out[key.strip()] = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"override {item!r}: value is not valid YAML ({problem})") from None
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``data`` with dotted-key overrides set."""
    tree = json.loads(json.dumps(data)) if data else {}
    for dotted, value in overrides.items():
        _set_dotted(tree, dotted, value)
    return tree


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping naming a key twice is an error (PyYAML would
    keep the last value silently). Keys merged in with ``<<`` may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}): "
                        "expected each key once per mapping", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: "
                          f"{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level, "
                          f"got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | list[str] | None = None) -> RunConfig:
    """The run config from a YAML file (or the embedded default) plus overrides."""
    data = read_yaml(path) if path is not None else {}
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
    return build(RunConfig, data)


def replace(cfg: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """A new config: ``cfg`` with dotted overrides applied and validated."""
    return build(RunConfig, apply_overrides(cfg.to_dict(), overrides))


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    return build(RunConfig, data)
