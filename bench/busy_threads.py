"""torch's intra-op threads on a machine whose cores are partly busy: pretraining throughput.

distforget's commands take every CPU the process may run on (``distforget.threads``), capped by
``OMP_NUM_THREADS``. That count does not see other jobs on the machine. This measures what the
choice costs when some cores are held by another process: it pretrains the embedded default's
small CLIP (``pretrain_clip``, a fixed number of training images and epochs; the rate its last
progress line prints, the training loop alone) with 1 thread and with every CPU, while 0, 1, ...
every core is held by a busy process (a pure-Python loop, one core each, started before and
stopped after each measurement). Each cell is measured ``--repeats`` times, interleaved, and
reported as images/s, mean (min-max); the last column is the cell's mean over the 1-thread mean
at the same number of busy cores.

    python bench/busy_threads.py             # about 3 minutes on 2 idle cores; writes its section
    python bench/busy_threads.py --no-write  # print only

Run it on an otherwise idle machine: the busy processes are the only load it accounts for.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
from datetime import date
from statistics import mean
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import machine, missing_section, replace_section  # noqa: E402
from distforget.config import PretrainConfig, load_config  # noqa: E402
from distforget.data.load import load_data  # noqa: E402
from distforget.pretraining import pretrain_clip, split_rows  # noqa: E402
from distforget.threads import machine_cpus  # noqa: E402
from distforget.zeroshot import GENERATED_TEMPLATES  # noqa: E402

SECTION = "busy-threads"


def burn(ready, stop) -> None:
    """Say so on ``ready``, then hold one core until ``stop`` is set."""
    ready.put(os.getpid())
    while not stop.is_set():
        for _ in range(100_000):
            pass


def measure(data, rows, threads: int, busy: int, epochs: int) -> float:
    """Pretraining images/s with ``threads`` torch threads beside ``busy`` busy processes."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    burners = [ctx.Process(target=burn, args=(ready, stop), daemon=True) for _ in range(busy)]
    for p in burners:
        p.start()
    try:
        for _ in burners:
            ready.get(timeout=60)  # every burner is in its loop before the clock starts
        torch.set_num_threads(threads)
        lines: list[str] = []
        pretrain_clip(data, rows, name="DF-RN-Tiny-32", cfg=PretrainConfig(epochs=epochs),
                      templates=GENERATED_TEMPLATES, device=torch.device("cpu"),
                      log=lines.append)
        # The training loop's own rate over every epoch (model building left out).
        return float(re.search(r", ([0-9.]+) images/s,", lines[-1]).group(1))
    finally:
        stop.set()
        for p in burners:
            p.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="training images (1024)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (2)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per cell (3)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    for name, value in (("--images", args.images), ("--epochs", args.epochs),
                        ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    if not args.no_write and (problem := missing_section(ROOT / "bench" / "RESULTS.md", SECTION)):
        parser.error(problem)
    cpus = machine_cpus()
    data = load_data(load_config(None, []).data)
    rows = split_rows(data)[0][:args.images]
    cells = [(busy, threads) for busy in range(cpus + 1) for threads in sorted({1, cpus})]
    seen: dict[tuple[int, int], list[float]] = {cell: [] for cell in cells}
    measure(data, rows[:64], 1, 0, 1)  # warm-up: first-call costs stay out of the cells
    for _ in range(args.repeats):
        for busy, threads in cells:
            seen[busy, threads].append(measure(data, rows, threads, busy, args.epochs))
            print(f"busy {busy} threads {threads}: {seen[busy, threads][-1]:.0f} images/s",
                  flush=True)
    lines = ["| busy cores | torch threads | images/s, mean (min-max) | x the 1-thread mean |",
             "| --- | --- | --- | --- |"]
    for busy, threads in cells:
        v = seen[busy, threads]
        lines.append(f"| {busy} | {threads} | {mean(v):.0f} ({min(v):.0f}-{max(v):.0f}) | "
                     f"{mean(v) / mean(seen[busy, 1]):.2f} |")
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    body = (f"`python bench/busy_threads.py` ({date.today().isoformat()}; {machine()}; "
            f"{cpus} CPUs for this process; OMP_NUM_THREADS={omp}): pretraining the embedded "
            f"CLIP on {len(rows)} images x {args.epochs} epochs per measurement, "
            f"{args.repeats} measurements per cell.\n\n" + "\n".join(lines))
    print(body)
    if not args.no_write:
        replace_section(ROOT / "bench" / "RESULTS.md", SECTION, body)


if __name__ == "__main__":
    main()
