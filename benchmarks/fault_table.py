"""Accuracy and cost of a scenario under injected faults: clean against fault rates.

For each rate ``p``, every sampled training client draws ``crash``, ``nan`` or ``straggle`` with
probability ``p / 3`` each, and every held-out client draws ``heldout-crash`` with probability
``p`` per attempt (``[faults]``). Each run is an ordinary ``fedmeta run`` in a subprocess; the
table gives the final held-out accuracy after adaptation (and how many held-out clients it
covers), every fault counted by kind, and the wall time. Measure on quiet cores.

Run: ``python benchmarks/fault_table.py scenarios/quickstart.toml --rates 0,0.1,0.2,0.4
--timeout 10 --out runs/faults-quickstart [--set train.rounds=50]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

KINDS = ("failed", "rejected", "timed-out", "late", "heldout-retried", "heldout-missing")


def run(scenario: str, rate: float, timeout: float, out: Path, extra: list[str]) -> dict:
    if not (out / "summary.json").exists():
        sets = [f"train.timeout={timeout}", *extra]
        if rate:
            third = rate / 3
            sets += [f"faults.{k}={third}" for k in ("crash", "nan", "straggle")]
            sets.append(f"faults.heldout-crash={rate}")
        args = ["run", scenario, "--out", str(out)]
        args += [a for s in sets for a in ("--set", s)]
        cmd = [sys.executable, "-m", "runner.cli", *args]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario")
    p.add_argument("--rates", default="0,0.1,0.2,0.4")
    p.add_argument("--timeout", type=float, default=10.0, help="train.timeout (seconds)")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    print("| faults | acc after adaptation | held-out clients | " + " | ".join(KINDS) + " | wall |")
    print("|---|---|---|" + "---|" * len(KINDS) + "---|")
    for rate in (float(r) for r in args.rates.split(",")):
        s = run(args.scenario, rate, args.timeout, Path(args.out) / f"p{rate:g}", args.set)
        h, f = s["heldout"], s.get("faults", {})
        acc = f"{h['query-acc-post']:.4f} ± {h['query-acc-post-ci95']:.4f}"
        cover = f"{h['num-clients']}/{h.get('num-clients-expected', h['num-clients'])}"
        counts = " | ".join(str(f.get(k, 0)) for k in KINDS)
        label = "clean" if rate == 0 else f"{rate:.0%}"
        print(f"| {label} | {acc} | {cover} | {counts} | {s['wall-seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
