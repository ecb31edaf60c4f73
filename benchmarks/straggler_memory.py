"""Memory over a long run with stragglers: late replies must not pile up.

Runs ``fedmeta run`` (its own Ray instance) with ``faults.straggle`` for many rounds and samples
memory every second: the whole machine's use above what it used just before the run
(``MemTotal - MemAvailable``), and the summed RSS of the run's process tree (fedmeta, Ray and
its workers; shared pages count once per process). Prints both at the first round, the middle
round and the last, with the stragglers counted in ``summary.json``.

Run: ``python benchmarks/straggler_memory.py scenarios/quickstart.toml --rounds 300
--straggle 0.05 --timeout 10 --out runs/straggler-memory``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.procs import machine_used_bytes, tree_rss_bytes


def last_round(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return -1
    lines = path.read_text().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["round"])
        except (ValueError, KeyError):
            continue
    return -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario")
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--straggle", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    sets = [
        f"train.rounds={args.rounds}",
        f"train.timeout={args.timeout}",
        f"faults.straggle={args.straggle}",
        f"evaluation.every={max(1, args.rounds // 6)}",
    ]
    cmd = [sys.executable, "-m", "runner.cli", "run", args.scenario, "--out", str(out)]
    cmd += [a for s in sets for a in ("--set", s)]
    idle = machine_used_bytes()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marks = {1: "start", args.rounds // 2: "middle", args.rounds: "end"}
    seen: dict[str, tuple[int, int, int]] = {}
    while proc.poll() is None:
        rnd = last_round(out)
        for at, label in marks.items():
            if rnd >= at and label not in seen:
                seen[label] = (rnd, machine_used_bytes() - idle, tree_rss_bytes(proc.pid))
        time.sleep(1.0)
    if proc.returncode != 0:
        raise SystemExit(f"the run failed with exit code {proc.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    gb = 2**30
    print("| point | round | machine above idle | process tree RSS |")
    print("|---|---|---|---|")
    for label in ("start", "middle", "end"):
        if label in seen:
            rnd, machine, tree = seen[label]
            print(f"| {label} | {rnd} | {machine / gb:.2f} GB | {tree / gb:.2f} GB |")
    faults = summary.get("faults", {})
    print(
        f"stragglers injected {faults.get('injected-straggle', 0)}, timed out "
        f"{faults.get('timed-out', 0)}, late replies drained {faults.get('late', 0)}; "
        f"{summary['rounds']} rounds in {summary['wall-seconds'] / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
