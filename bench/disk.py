"""Disk and console of the embedded default search: the run folder against its stage cache.

Runs ``python -m distforget.search output.storage=<folder>`` (the embedded default, Ray started
by the command), counts the lines it printed, and measures what the run folder holds on disk:
the stage cache (``stages/``, the stage outputs trials share), Ray Train's checkpoints
(``train/``, deleted once a stage is cached), Tune's experiment folders, the trial records, the
base weights and ``best/``. Target: the whole run folder under 3 times the stage cache.

    python bench/disk.py                      # run the search, print, write bench/RESULTS.md
    python bench/disk.py --run FOLDER         # measure a finished run folder (and the
                                              # console.txt beside it, if this script ran it)
    python bench/disk.py --no-write           # print only

Writes the table into bench/RESULTS.md's ``disk`` section (nothing typed by hand).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import replace_section  # noqa: E402

TARGET = 3.0  # the run folder under this many times the stage cache


def size(path: Path) -> int:
    """Bytes of the files under ``path`` (hard links counted once)."""
    if path.is_file():
        return path.stat().st_size
    seen, total = set(), 0
    for folder, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def parts(run: Path) -> dict[str, int]:
    """The run folder's size by part."""
    groups: dict[str, int] = {}
    for entry in sorted(run.iterdir()):
        name = entry.name
        key = (f"{name.split('-')[0]}-NNN/ (Tune)" if name.split("-")[0] in
               ("tune", "baselines", "confirm") and entry.is_dir() else
               name + ("/" if entry.is_dir() else ""))
        groups[key] = groups.get(key, 0) + size(entry)
    return groups


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def console_sources(text: str) -> dict[str, int]:
    """Lines by where they came from: a Ray process's output is prefixed "(Name pid=...)";
    everything else the driver printed (distforget's lines, Tune's table, Ray's start-up)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"(?:\x1b\[\d+m)?\((\w+) pid=", line)
        key = match.group(1) if match else "the driver"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def table(run: Path, console: str | None, wall_s: float | None) -> str:
    by_part = parts(run)
    total = sum(by_part.values())
    stages = by_part.get("stages/", 0)
    ratio = total / stages if stages else float("inf")
    lines = ["| part | size | share |", "| --- | --- | --- |"]
    for name, n in sorted(by_part.items(), key=lambda kv: -kv[1]):
        lines.append(f"| `{name}` | {mb(n)} | {n / total:.0%} |")
    lines.append(f"| **run folder** | **{mb(total)}** | 100% |")
    summary = (f"Run folder {mb(total)}, stage cache {mb(stages)}: **{ratio:.2f} times** the "
               f"stage cache (target: under {TARGET:g}; {'met' if ratio < TARGET else 'NOT met'})"
               ".")
    if console is not None:
        summary += f" The command printed {len(console.splitlines())} lines"
        summary += f" in {wall_s:.0f} s" if wall_s is not None else ""
        summary += ": " + ", ".join(f"{n} from {name}" for name, n in
                                    console_sources(console).items()) + "."
    return "\n".join(lines) + "\n\n" + summary


def run_search(storage: Path) -> tuple[str, float]:
    """The embedded default into ``storage``; returns (what it printed, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "distforget.search",
                           f"output.storage={storage}"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the search failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    (storage / "console.txt").write_text(proc.stdout)
    return proc.stdout, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="measure this finished run folder only")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.run is not None:
        run, wall = args.run, None
        saved = args.run.parent / "console.txt"  # written beside it by a run of this script
        lines = saved.read_text() if saved.is_file() else None
        how = f"`python bench/disk.py --run {args.run}`"
    else:
        storage = Path(tempfile.mkdtemp(prefix="distforget-disk-"))
        lines, wall = run_search(storage)
        run = storage / "embedded-default"
        how = "`python bench/disk.py` (`python -m distforget.search`, the embedded default)"
    body = (f"{date.today().isoformat()}, {os.cpu_count()} cores, {how}:\n\n"
            + table(run, lines, wall))
    print(body)
    if not args.no_write:
        replace_section(ROOT / "bench" / "RESULTS.md", "disk", body)


if __name__ == "__main__":
    main()
