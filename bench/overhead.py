"""What the Ray search costs over its in-process twin, and where the difference goes.

One call runs the same N trials of the embedded default twice, each as its own process on the
same machine, the same cache (``DISTFORGET_CACHE``) and the same config and seed:

- **Ray**: ``python -m distforget.search`` with ``search.num_trials=N``, no baselines and no
  confirmation runs (the trials, then the test measurements, report and export), in a fresh
  output folder;
- **twin**: ``prepare`` then ``bench/local_search.py``'s ``local_search`` over the same space,
  sampler and seed (no Ray, one process, trials one after the other).

It prints both walls (whole process, from start to exit), their ratio, the Ray run's phases
against the twin's, and per trial where its time went. Trial timings come from the records the
trials write (``trials/<id>.json``, key ``timing``: wall-clock start and end, setup, time in
launch and in evaluate, the actor's pid); the driver's phases from the time each line of its
output arrived. A warm-up process (untimed) first makes sure the embedded CLIP and the decoded
data are in the cache. It writes its section of bench/RESULTS.md itself.

    python bench/overhead.py                 # 8 trials, 2 CPU cores, a few minutes
    python bench/overhead.py --trials 4 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The driver lines whose arrival marks a phase (distforget.distributed.tuner.run_search's log).
RAY_UP, PREPARED, FRONT = "distforget search ", "base model: ", "front: "


def overrides(trials: int, seed: int) -> list[str]:
    return [f"search.num_trials={trials}", f"search.seed={seed}", "search.baselines=[]",
            "search.confirm_seeds=0"]


# --- the twin (runs in its own process: python bench/overhead.py --twin ...) --------------------

def twin(trials: int, seed: int, out: str, warm_only: bool = False) -> None:
    t0 = time.perf_counter()
    import torch

    from bench.local_search import local_search
    from distforget.config import load_config
    from distforget.prepare import prepare
    from distforget.search_space import load_space
    from distforget.threads import set_torch_threads

    threads = set_torch_threads()
    cfg = load_config(None, overrides(trials, seed))
    device = torch.device("cpu")
    t_imports = time.perf_counter()
    prepared = prepare(cfg, device, log=lambda m: None)
    t_prepared = time.perf_counter()
    if warm_only:
        return
    space = load_space(cfg.search.space, cfg)
    records = []
    local_search(prepared, cfg, space, trials=trials, sampler=cfg.search.sampler,
                 seed=cfg.search.seed, device=device,
                 on_trial=lambda i, record: records.append(record))
    t_end = time.perf_counter()
    Path(out).write_text(json.dumps({
        "threads": threads, "imports_s": t_imports - t0, "prepare_s": t_prepared - t_imports,
        "trials_s": t_end - t_prepared, "trials": [trial_timing(r) for r in records]}))


# --- the parent -------------------------------------------------------------------------------

def trial_timing(record: dict) -> dict:
    """A record's timings: total, stage compute (trained stages' own wall), launch and evaluate
    seconds, and the Ray trial's extras when present."""
    timing = record.get("timing", {})
    compute = sum(s.get("wall_s", 0.0) for s in record.get("stages", {}).values()
                  if not s.get("cached"))
    return {"trial_id": record["trial_id"], "status": record["status"],
            "wall_s": record.get("wall_s", 0.0), "compute_s": compute,
            "launch_s": timing.get("launch_s", 0.0), "evaluate_s": timing.get("evaluate_s", 0.0),
            **{k: timing[k] for k in ("path", "setup_s", "started", "ended", "pid")
               if k in timing}}


def run_timed(cmd: list[str], env: dict) -> tuple[float, float, list[tuple[float, str]]]:
    """Run ``cmd``; returns its start (epoch seconds), wall seconds and output lines with the
    epoch time each arrived."""
    lines = []
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
        lines.append((time.time(), line.rstrip("\n")))
    proc.wait()
    wall = time.time() - start
    if proc.returncode != 0:
        tail = "\n".join(text for _, text in lines[-40:])
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    return start, wall, lines


def first(lines: list[tuple[float, str]], prefix: str) -> float:
    for t, text in lines:
        if text.startswith(prefix):
            return t
    raise SystemExit(f"the search printed no line starting {prefix!r}")


def fmt(x: float) -> str:
    return f"{x:.1f}"


def measure(trials: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    me = [sys.executable, str(Path(__file__).resolve())]
    work = Path(tempfile.mkdtemp(prefix="df-overhead-"))
    try:
        run_timed(me + ["--twin", "--warm-only", "--trials", str(trials), "--seed", str(seed),
                        "--json", str(work / "warm.json")], env)
        _, twin_wall, _ = run_timed(me + ["--twin", "--trials", str(trials), "--seed", str(seed),
                                          "--json", str(work / "twin.json")], env)
        twin_info = json.loads((work / "twin.json").read_text())
        cmd = [sys.executable, "-m", "distforget.search", *overrides(trials, seed),
               f"output.storage={work}", "output.name=ray"]
        ray_start, ray_wall, lines = run_timed(cmd, env)
        records = [json.loads(p.read_text()) for p in sorted((work / "ray" / "trials").glob(
            "*.json"))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ray_trials = sorted((trial_timing(r) for r in records if r.get("source") == "trial"),
                        key=lambda t: t["started"])
    reported = {}
    for t, text in lines:  # ResultsWriter's line per trial: "trial k/N <id> (...)"
        words = text.split()
        if len(words) > 2 and words[0] == "trial" and "/" in words[1]:
            reported[words[2]] = t
    return {"twin_wall": twin_wall, "twin": twin_info, "ray_wall": ray_wall,
            "ray_start": ray_start, "ray_up": first(lines, RAY_UP),
            "prepared": first(lines, PREPARED), "front": first(lines, FRONT),
            "ray_trials": ray_trials, "reported": reported}


def report(m: dict, trials: int, seed: int) -> str:
    tw, rt = m["twin"], m["ray_trials"]
    t0 = m["ray_start"]
    first_start = min(t["started"] for t in rt)
    last_end = max(m["reported"].get(t["trial_id"], t["ended"]) for t in rt)
    ratio = m["ray_wall"] / m["twin_wall"]
    paths = sorted({t.get("path", "?") for t in rt})
    pids = {t.get("pid") for t in rt}
    out = [f"Ray search {fmt(m['ray_wall'])} s, in-process twin {fmt(m['twin_wall'])} s: "
           f"**ratio {ratio:.2f}** ({trials} trials, seed {seed}; trial path: "
           f"{', '.join(paths)}; {len(pids)} trial actor processes for {len(rt)} trials).", ""]
    out += ["| phase | Ray search (s) | twin (s) | what |", "| --- | --- | --- | --- |"]
    phases = [
        ("start, imports, Ray start", m["ray_up"] - t0, tw["imports_s"],
         "process start to the first log line; the twin's: its imports"),
        ("prepare", m["prepared"] - m["ray_up"], tw["prepare_s"],
         "shared inputs (in the search's process on one node, else a Ray task), run folder "
         "written"),
        ("Tune start to first trial", first_start - m["prepared"], 0.0,
         "Tuner, searcher, the first trial actors and their imports"),
        ("trials", last_end - first_start, tw["trials_s"],
         "first trial start to the last trial's result line (Ray runs trials concurrently)"),
        ("after the trials", m["front"] - last_end, 0.0,
         "Tune's end, test measurements, front, report, export"),
        ("exit", t0 + m["ray_wall"] - m["front"], 0.0, "Ray shutdown, interpreter exit"),
    ]
    for name, ray_s, twin_s, what in phases:
        out.append(f"| {name} | {fmt(ray_s)} | {fmt(twin_s)} | {what} |")
    out.append(f"| **whole process** | **{fmt(m['ray_wall'])}** | **{fmt(m['twin_wall'])}** | |")
    out += ["", "Per trial (seconds). Ray: *gap* is the time since the trial before it in the "
            "same slot ended (Tune scheduling, actor start or reuse), *setup* the trial's "
            "config and inputs, *stages* the trained stages' own compute, *launch* what "
            "starting them added, *eval* the soups' evaluations, *report* from the trial's "
            "end to the driver's result line (record, result transfer, results.parquet).", ""]
    out += ["| trial | path | gap | setup | stages | launch | eval | report | total |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ends: list[float] = []
    sums = dict.fromkeys(("gap", "setup", "stages", "launch", "eval", "report", "total"), 0.0)
    for t in rt:
        # The slot this trial took: the one freed last before it started (Tune starts the next
        # trial when one ends); the first trials of each slot count from the prepared inputs.
        freed = [e for e in ends if e <= t["started"]]
        if freed:
            ends.remove(max(freed))
        gap = t["started"] - (max(freed) if freed else m["prepared"])
        row = {"gap": gap, "setup": t.get("setup_s", 0.0), "stages": t["compute_s"],
               "launch": t["launch_s"] - t["compute_s"], "eval": t["evaluate_s"],
               "report": m["reported"].get(t["trial_id"], t["ended"]) - t["ended"],
               "total": m["reported"].get(t["trial_id"], t["ended"]) - t["started"] + gap}
        ends.append(m["reported"].get(t["trial_id"], t["ended"]))
        for k in sums:
            sums[k] += row[k]
        out.append(f"| {t['trial_id']} | {t.get('path', '?')} | "
                   + " | ".join(fmt(row[k]) for k in sums) + " |")
    out.append("| **sum** | | " + " | ".join(f"**{fmt(v)}**" for v in sums.values()) + " |")
    tt = tw["trials"]
    tsum = {"stages": sum(t["compute_s"] for t in tt),
            "launch": sum(t["launch_s"] - t["compute_s"] for t in tt),
            "eval": sum(t["evaluate_s"] for t in tt), "total": sum(t["wall_s"] for t in tt)}
    out.append(f"| twin, sum over its {len(tt)} trials | in-process | | | "
               f"{fmt(tsum['stages'])} | {fmt(tsum['launch'])} | {fmt(tsum['eval'])} | | "
               f"{fmt(tsum['total'])} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--twin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.twin:
        twin(args.trials, args.seed, args.json, args.warm_only)
        return

    from bench.common import machine, replace_section

    load = os.getloadavg()[0]
    m = measure(args.trials, args.seed)
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    header = (f"`python bench/overhead.py --trials {args.trials} --seed {args.seed}` on "
              f"{machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
              f"average {load:.2f} at the start, OMP_NUM_THREADS {omp} (twin: "
              f"{m['twin']['threads']} torch thread(s); Ray: resources.cpus_per_worker per "
              "trial). Embedded default, no baselines, no confirmation runs, CLIP cached.")
    text = header + "\n\n" + report(m, args.trials, args.seed)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "bench" / "RESULTS.md", "overhead", text)


if __name__ == "__main__":
    main()
