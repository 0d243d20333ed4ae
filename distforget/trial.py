"""One trial, without Ray: run the stages (through a content-addressed stage cache), make the
soup, and measure it.

How stages are *launched* is the caller's choice: in-process here (``local_launcher``), or as
Ray Train jobs by the adapter in ``distforget.distributed``. Either way a stage's output is
stored in a ``StageCache`` under a key that hashes everything it depends on (the shared inputs'
fingerprint, the stage, its knobs, the key of its upstream stage and the precision), so a trial
whose forget settings equal an earlier trial's reuses that forget stage without a step.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from distforget import storage
from distforget.config import BASELINES, RunConfig, to_dict
from distforget.objectives import METRICS
from distforget.prepare import Prepared
from distforget.restore import calibration_retain_bound, choose_alpha, interpolate, soup
from distforget.training import Parallel, StageHooks, StageOutput


@dataclass(frozen=True)
class Recipe:
    """How a model is made from stage outputs: the method, its stages' cache keys, the soup."""

    method: str
    stages: tuple[tuple[str, str], ...] = ()
    alpha: float = 1.0
    beta: float = 0.0

    def with_soup(self, alpha: float, beta: float | None = None) -> "Recipe":
        return Recipe(self.method, self.stages, float(alpha),
                      self.beta if beta is None else float(beta))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "stages": dict(self.stages), "alpha": self.alpha,
                "beta": self.beta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        return cls(d["method"], tuple(d.get("stages", {}).items()), float(d.get("alpha", 1.0)),
                   float(d.get("beta", 0.0)))


def stage_key(fingerprint: str, stage: str, method: str, knobs: dict, upstream: str | None,
              precision: str) -> str:
    payload = json.dumps({"inputs": fingerprint, "stage": stage, "method": method,
                          "knobs": knobs, "upstream": upstream, "precision": precision},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class StageCache:
    """Stage outputs by key: in memory, and under ``root`` (a path or URI) when given, as
    ``<root>/<stage>-<key>/model.safetensors`` plus ``meta.json`` (written last)."""

    def __init__(self, root: str | None = None):
        self.root = root
        self._memory: dict[str, StageOutput] = {}

    def _dir(self, stage: str, key: str) -> str:
        return storage.join(self.root, f"{stage}-{key[:24]}")

    def has(self, stage: str, key: str) -> bool:
        if key in self._memory:
            return True
        return self.root is not None and storage.exists(
            storage.join(self._dir(stage, key), "meta.json"))

    def meta(self, stage: str, key: str) -> dict | None:
        """A stage output's JSON record alone (its weights are not read), or None."""
        if key in self._memory:
            return self._memory[key].meta
        if self.root is None:
            return None
        meta_uri = storage.join(self._dir(stage, key), "meta.json")
        if not storage.exists(meta_uri):
            return None
        return json.loads(storage.read_bytes(meta_uri))

    def get(self, stage: str, key: str) -> StageOutput | None:
        if key in self._memory:
            return self._memory[key]
        meta = self.meta(stage, key)
        if meta is None:
            return None
        folder = self._dir(stage, key)
        state = load_safetensors(storage.read_bytes(storage.join(folder, "model.safetensors")))
        out = StageOutput(state=state, meta=meta)
        self._memory[key] = out
        return out

    def put(self, stage: str, key: str, output: StageOutput) -> None:
        self._memory[key] = output
        if self.root is None:
            return
        folder = self._dir(stage, key)
        tensors = {k: v.contiguous() for k, v in output.state.items()}
        storage.write_bytes(storage.join(folder, "model.safetensors"), save_safetensors(tensors))
        storage.write_bytes(storage.join(folder, "meta.json"),
                            json.dumps(output.meta, indent=1, default=float).encode())


def run_stage(prepared: Prepared, cfg: RunConfig, stage: str, upstream: StageOutput | None, *,
              device: torch.device, parallel: Parallel | None = None,
              hooks: StageHooks = StageHooks()) -> StageOutput:
    """Run one stage in this process (one rank of its group)."""
    common = {"device": device, "precision": cfg.model.precision,
              "compile": cfg.model.compile, "parallel": parallel, "hooks": hooks}
    if stage == "forget":
        from distforget.forget import run_forget
        return run_forget(prepared, cfg.forget, **common)
    if stage == "remind":
        from distforget.remind import run_remind
        return run_remind(prepared, cfg.remind, upstream, **common)
    if stage == "baseline":
        from distforget.baselines import run_baseline
        return run_baseline(prepared, cfg.method, cfg.baseline, **common)
    raise ValueError(f"unknown stage {stage!r}")


UPSTREAM = {"remind": "forget"}  # the stage whose output a stage starts from


def stage_plan(cfg: RunConfig) -> list[tuple[str, dict]]:
    """The stages a method runs, with the knobs each depends on."""
    if cfg.method == "three_stage":
        return [("forget", to_dict(cfg.forget)), ("remind", to_dict(cfg.remind))]
    if cfg.method == "base":
        return []
    return [("baseline", to_dict(cfg.baseline))]


def recipe_state(base: dict[str, torch.Tensor], cache: StageCache, recipe: Recipe
                 ) -> dict[str, torch.Tensor]:
    """The image tower's weights for a recipe ("visual." keys), from the base tower's."""
    stages = dict(recipe.stages)
    if recipe.method == "base":
        return base
    if recipe.method == "three_stage":
        forgotten = cache.get("forget", stages["forget"]).state
        reminded = cache.get("remind", stages["remind"]).state
        return soup(base, forgotten, reminded, recipe.alpha, recipe.beta)
    trained = cache.get("baseline", stages["baseline"]).state
    if recipe.alpha == 1.0:
        return trained
    return interpolate([base, trained], [1.0 - recipe.alpha, recipe.alpha])


@torch.no_grad()
def evaluate_recipes(prepared: Prepared, cache: StageCache, recipes: Sequence[Recipe],
                     which: str, device: torch.device, precision: str = "auto") -> list[dict]:
    """Metrics for each recipe: ``which`` is ``"val"`` (validation: what choices see),
    ``"test"`` (read only after the choice) or ``"calibration"``."""
    visual = prepared.model().visual.to(device)
    evaluator = prepared.evaluator(device, precision)
    base = prepared.base_visual_state()
    out = []
    for recipe in recipes:
        state = recipe_state(base, cache, recipe)
        visual.load_state_dict({k[len("visual."):]: v for k, v in state.items()})
        out.append(evaluator.calibration(visual) if which == "calibration"
                   else evaluator.metrics(visual, which))
    return out


@dataclass(frozen=True)
class StageTask:
    """A stage to run: its name, its cache key and its upstream stage's key."""

    stage: str
    key: str
    upstream: str | None


# launch(cfg, tasks) runs the stages in order, leaves each output in the stage cache under its
# key, and returns the outputs by key.
Launch = Callable[[RunConfig, Sequence[StageTask]], dict[str, StageOutput]]
Evaluate = Callable[[Sequence[Recipe], str], list[dict]]


# on_epoch(metrics) after every epoch of a stage; metrics carry "stage" and "epoch".
EpochCallback = Callable[[dict], None]
SNAPSHOT = "snapshot.pt"


def local_launcher(prepared: Prepared, cache: StageCache, device: torch.device, *,
                   snapshots: str | None = None, on_epoch: EpochCallback | None = None
                   ) -> Launch:
    """Run stages in this process (no Ray): one rank, the given device.

    ``snapshots``: a folder (path or URI) where the running stage's state is written after
    every epoch (one file, replaced each time), so that the same launch run again after this
    process died resumes that stage from its last epoch; stages that finished are in the stage
    cache and are not launched again. The folder is removed when the launch ends.
    ``on_epoch``: called on every epoch's metrics (as the Ray Train path reports them)."""
    snapshot_uri = storage.join(snapshots, SNAPSHOT) if snapshots is not None else None

    def launch(cfg: RunConfig, tasks: Sequence[StageTask]) -> dict[str, StageOutput]:
        resume = None
        if snapshot_uri is not None and storage.exists(snapshot_uri):
            resume = torch.load(io.BytesIO(storage.read_bytes(snapshot_uri)), weights_only=True)
        out = {}
        for task in tasks:
            def after_epoch(epoch: int, metrics: dict, snapshot, task=task) -> None:
                if snapshot_uri is not None:
                    buffer = io.BytesIO()
                    torch.save({**snapshot(), "stage_key": task.key}, buffer)
                    storage.write_bytes(snapshot_uri, buffer.getvalue())
                if on_epoch is not None:
                    on_epoch({**metrics, "epoch": epoch, "stage": task.stage})

            upstream = cache.get(UPSTREAM[task.stage], task.upstream) if task.upstream else None
            own = resume if resume is not None and resume.get("stage_key") == task.key else None
            hooks = (StageHooks(on_epoch=after_epoch, resume=own)
                     if snapshot_uri is not None or on_epoch is not None else StageHooks())
            out[task.key] = run_stage(prepared, cfg, task.stage, upstream, device=device,
                                      hooks=hooks)
            cache.put(task.stage, task.key, out[task.key])
        if snapshots is not None:
            # Every stage is in the stage cache now; its snapshot resumes nothing any more.
            storage.remove_tree(snapshots)
        return out
    return launch


def local_evaluator(prepared: Prepared, cache: StageCache, device: torch.device,
                    precision: str) -> Evaluate:
    def evaluate(recipes: Sequence[Recipe], which: str) -> list[dict]:
        return evaluate_recipes(prepared, cache, recipes, which, device, precision)
    return evaluate


@dataclass
class TrialResult:
    metrics: dict[str, float]
    recipe: Recipe
    stages: dict[str, dict] = field(default_factory=dict)
    calibration: list[dict] = field(default_factory=list)
    sweep: list[tuple[Recipe, dict[str, float]]] = field(default_factory=list)
    wall_s: float = 0.0
    # The three-stage method's metrics after each stage and for each soup (diagnose_soups).
    diagnostics: dict[str, Any] = field(default_factory=dict)
    # Seconds spent in launch (the stages, with whatever starting them costs) and in evaluate.
    timing: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """A flat record: every metric, the soup, stage cache use and timing."""
        rec: dict[str, Any] = dict(self.metrics)
        rec.update({"method": self.recipe.method, "alpha": self.recipe.alpha,
                    "beta": self.recipe.beta, "wall_s": self.wall_s,
                    "stage_cache_hits": sum(1 for s in self.stages.values() if s["cached"]),
                    "stage_cache_misses": sum(1 for s in self.stages.values() if not s["cached"]),
                    "train_steps": sum(s.get("steps", 0) for s in self.stages.values()
                                       if not s["cached"])})
        return rec


def trial_record(*, trial_id: str, source: str, method: str, params: dict[str, Any],
                 result: TrialResult | None = None, error: str | None = None,
                 parent_id: str | None = None, node_id: str | None = None) -> dict[str, Any]:
    """A trial's record (what ``trials/<id>.json`` holds and ``results.parquet`` rows come
    from): identity, status, params, and with a result every metric, the recipe, the stages and
    the extra soups measured. ``parent_id`` names the point a confirmation run repeats;
    ``node_id`` the cluster node the trial's own process ran on (its last attempt's)."""
    record: dict[str, Any] = {"trial_id": trial_id, "parent_id": parent_id, "source": source,
                              "status": "ok" if error is None else "failed", "error": error,
                              "method": method, "params": params, "node_id": node_id}
    if result is not None:
        record.update(result.record())
        record.update(recipe=result.recipe.to_dict(), stages=result.stages,
                      sweep=[{"recipe": r.to_dict(), "metrics": m} for r, m in result.sweep])
        if result.diagnostics:
            record["diagnostics"] = result.diagnostics
        if result.timing:
            record["timing"] = dict(result.timing)
    return record


def run_trial(prepared: Prepared, cfg: RunConfig, *, launch: Launch, cache: StageCache,
              evaluate: Evaluate, sweep: Sequence[tuple[float, float]] = (),
              log: Callable[[str], None] | None = None, diagnose: bool = False) -> TrialResult:
    """Run ``cfg.method`` on the prepared inputs; ``sweep`` lists extra (alpha, beta) soups to
    measure as well (evaluations only, no training). ``diagnose``: also measure the
    three-stage method after forget, after remind and at every alpha of the calibration grid
    (evaluations only; see ``diagnose_soups``)."""
    start = time.perf_counter()
    timing = {"launch_s": 0.0, "evaluate_s": 0.0}
    launch, evaluate = _timed(launch, timing, "launch_s"), _timed(evaluate, timing, "evaluate_s")
    tasks: list[StageTask] = []
    upstream: str | None = None
    for stage, knobs in stage_plan(cfg):
        key = stage_key(prepared.fingerprint, stage, cfg.method, knobs, upstream,
                        cfg.model.precision)
        tasks.append(StageTask(stage, key, upstream))
        upstream = key
    outputs = {t.key: cache.get(t.stage, t.key) for t in tasks}
    missing = [t for t in tasks if outputs[t.key] is None]
    if missing:
        outputs.update(launch(cfg, missing))
    stages: dict[str, dict] = {}
    for task in tasks:
        cached = task not in missing
        output = outputs[task.key]
        if log:
            log(f"stage {task.stage} {'reused from cache' if cached else 'trained'} "
                f"({task.key[:12]})")
        stages[task.stage] = {"key": task.key, "cached": cached,
                              **{k: output.meta[k] for k in ("steps", "epochs_run", "layers",
                                                             "wall_s") if k in output.meta}}
    keys = [(t.stage, t.key) for t in tasks]
    # The three-stage method always ends in a soup with the base model; a baseline does when it
    # is searched with a sweep (it then gets the method's soups, so the soup's share of a gain
    # shows). Baseline soups lie on the line to the base model (beta 0).
    soups = cfg.method == "three_stage" or (cfg.method in BASELINES and bool(sweep))
    beta = cfg.restore.beta if cfg.method == "three_stage" else 0.0
    recipe = Recipe(cfg.method, tuple(keys), cfg.restore.alpha, beta) if soups \
        else Recipe(cfg.method, tuple(keys))

    calibration: list[dict] = []
    retain_bound = calibration_retain_bound(cfg.restore, prepared.base_metrics)
    if soups and cfg.restore.choose == "calibration":
        grid = [float(a) for a in cfg.restore.grid]
        rows = dict(zip(grid, evaluate([recipe.with_soup(a) for a in grid], "calibration")))
        alpha, calibration = choose_alpha(lambda a: rows[a], grid, cfg.restore.forget_target,
                                          retain_bound)
        recipe = recipe.with_soup(alpha)

    points = [recipe]
    if soups:
        wanted = dict.fromkeys((float(a), float(b) if cfg.method == "three_stage" else 0.0)
                               for a, b in sweep)
        points += [recipe.with_soup(a, b) for a, b in wanted if (a, b) != (recipe.alpha,
                                                                        recipe.beta)]
    extra: list[Recipe] = []
    if diagnose and cfg.method == "three_stage":
        seen = {(p.alpha, p.beta) for p in points}
        for a, b in [(1.0, 1.0), (1.0, 0.0)] + [(c["alpha"], recipe.beta) for c in calibration]:
            if (a, b) not in seen:
                seen.add((a, b))
                extra.append(recipe.with_soup(a, b))
    measured = evaluate(points + extra, "val")
    diagnostics = (diagnose_soups(cfg, recipe, calibration, points + extra, measured,
                                  retain_bound)
                   if diagnose and cfg.method == "three_stage" else {})
    measured = measured[:len(points)]
    base = {f"base_{k}": prepared.base_metrics[k] for k in METRICS}
    chosen = next((c for c in calibration if c["alpha"] == recipe.alpha), {})
    metrics = {**measured[0], **base,
               **{k: v for k, v in chosen.items() if k.startswith("calib_")}}
    return TrialResult(metrics=metrics, recipe=recipe, stages=stages, calibration=calibration,
                       sweep=[(p, {**m, **base}) for p, m in zip(points[1:], measured[1:])],
                       wall_s=time.perf_counter() - start, diagnostics=diagnostics,
                       timing=timing)


def _timed(fn: Callable, into: dict[str, float], name: str) -> Callable:
    """``fn`` that adds the seconds each call takes to ``into[name]``."""
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[name] += time.perf_counter() - start
    return call


def diagnose_soups(cfg: RunConfig, recipe: Recipe, calibration: list[dict],
                   points: Sequence[Recipe], measured: Sequence[dict],
                   retain_bound: float = 0.0) -> dict[str, Any]:
    """The three-stage method stage by stage: held-out metrics after forget (the soup at
    alpha 1, beta 1), after remind (alpha 1, beta 0) and at every measured soup (with its
    calibration row when the grid was used), the chosen point and why, and plain notes on
    which stage fell short of the forget target."""
    from distforget.restore import explain_choice

    by_point = {(p.alpha, p.beta): m for p, m in zip(points, measured)}
    calib = {c["alpha"]: c for c in calibration}
    soups = [{"alpha": a, "beta": b, **by_point[(a, b)],
              **({k: v for k, v in calib[a].items() if k != "alpha"}
                 if b == recipe.beta and a in calib else {})}
             for a, b in sorted(by_point) if (a, b) != (1.0, 1.0) or b == recipe.beta]
    after_forget, after_remind = by_point[(1.0, 1.0)], by_point[(1.0, 0.0)]
    target = cfg.restore.forget_target
    notes = []
    if after_forget["forget_acc"] > target:
        notes.append(f"the forget stage left forget_acc at {after_forget['forget_acc']:.3f} "
                     f"(> {target}): it did not forget; raise forget.lr, forget.epochs or "
                     "forget.top_k")
    elif after_remind["forget_acc"] > target:
        fix = ("remind.forget_weight > 0 (with remind.forget_loss: distill) keeps it away"
               if not cfg.remind.forget_weight else
               f"remind.forget_weight {cfg.remind.forget_weight:g} ({cfg.remind.forget_loss}) "
               "did not keep it away: raise it, or lower remind.lr or remind.epochs")
        notes.append(f"the remind stage brought forget_acc back to "
                     f"{after_remind['forget_acc']:.3f} (> {target}): training on the retained "
                     f"images restored the forget subgroup; {fix}")
    if recipe.alpha == 0.0:
        notes.append("the chosen soup is the base model (alpha 0): none of the stages' change "
                     "is kept")
    return {"after_forget": after_forget, "after_remind": after_remind, "soups": soups,
            "alpha": recipe.alpha, "beta": recipe.beta,
            "why": explain_choice(cfg.restore, recipe.alpha, recipe.beta, calibration,
                                  retain_bound),
            "notes": notes}
