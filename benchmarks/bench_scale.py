"""Scale: start-up, seconds per round, per-client overhead, memory and bytes against N clients.

For every source (``sinusoid``: MAML's sine toy; ``synthetic``: the embedded stroke characters
with Conv4) and every N it runs ``fedmeta run`` in a subprocess with N training clients,
N / 10 held-out clients, 20 clients sampled per round, ``--rounds`` rounds and one held-out
evaluation of every held-out client at the end, and samples memory every 0.2 s:

* **start-up**: process start to the start of round 1 (the moment round 1's record appears,
  less that round's own seconds), and **round 1** itself (the workers' warm-up: Ray starts
  them, they import torch and build the experiment);
* **s / round**: the median ``round-train-seconds`` of rounds 2 onwards;
* **overhead / client**: ``(round seconds - slowest worker's summed client compute) / clients``,
  the median over rounds 2 onwards (a worker is one Ray actor process);
* **peak memory**: of the run's whole process tree (summed RSS, Ray workers included) and of
  the whole machine above what it used just before the run;
* **bytes**: communicated, both ways.

Measure on quiet cores. Writes ``<out>/scale.json``, ``<out>/scale.md`` and ``<out>/scale.png``.

Run: ``python benchmarks/bench_scale.py --out runs/scale [--sizes 100,1000,10000]
[--sources sinusoid,synthetic] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.procs import kill_tree, machine_used_bytes, tree_rss_bytes  # noqa: E402

PER_ROUND = 20
SOURCES = {
    # scenario, and the --set keys sizing its data to N clients (3 or 6 classes per client)
    "sinusoid": ("scenarios/sinusoid-maml.toml", "data.num-functions", 3),
    "synthetic": ("scenarios/quickstart.toml", "data.num-classes", 6),
}


def settings(source: str, n: int, rounds: int) -> list[str]:
    _, classes_key, per_client = SOURCES[source]
    heldout = max(1, n // 10)
    return [
        f"clients.train={n}",
        f"clients.heldout={heldout}",
        f"train.fraction={PER_ROUND / n}",
        f"train.rounds={rounds}",
        f"{classes_key}={per_client * (n + heldout)}",
        f"data.heldout-fraction={heldout / (n + heldout)}",
        f"evaluation.every={rounds}",
        "evaluation.at-start=false",
        "evaluation.tasks-per-client=5",
    ]


def records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return rows


def train_rounds(rows: list[dict]) -> dict[int, dict]:
    rounds: dict[int, dict] = {}
    for r in rows:
        if r["phase"] == "train":
            rounds.setdefault(r["round"], {})[r["metric"]] = r["value"]
    return rounds


def run_one(source: str, n: int, rounds: int, out: Path, timeout: float) -> dict:
    """One run, measured (``out/result.json`` caches the measurements), with its figures."""
    cached = out / "result.json"
    if cached.exists():
        return figures(out, json.loads(cached.read_text()))
    scenario = SOURCES[source][0]
    cmd = [sys.executable, "-m", "runner.cli", "run", scenario, "--out", str(out)]
    cmd += [a for s in settings(source, n, rounds) for a in ("--set", s)]
    idle = machine_used_bytes()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_tree = peak_machine = 0
    round1_seen = None
    try:
        while proc.poll() is None:
            peak_tree = max(peak_tree, tree_rss_bytes(proc.pid))
            peak_machine = max(peak_machine, machine_used_bytes() - idle)
            if round1_seen is None and 1 in train_rounds(records(out)):
                round1_seen = time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                kill_tree([proc.pid])
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            kill_tree([proc.pid])
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    measured: dict = {"source": source, "n": n, "wall": time.monotonic() - t0}
    measured |= {"finished": proc.returncode == 0, "round1-seen": round1_seen}
    measured |= {"peak-tree-bytes": peak_tree, "peak-machine-bytes": peak_machine}
    if proc.returncode != 0:
        measured["error"] = (stderr.strip().splitlines() or ["killed after the timeout"])[-1]
    if measured["finished"]:
        cached.write_text(json.dumps(measured, indent=1))
    return figures(out, measured)


def figures(out: Path, measured: dict) -> dict:
    """The table's figures from a run's measurements and its ``metrics.jsonl``."""
    result = dict(measured)
    rows = train_rounds(records(out))
    if 1 in rows:
        result["round1"] = rows[1]["round-train-seconds"]
        if result.get("round1-seen") is None and "startup" in result:  # older measurements
            result["round1-seen"] = result["startup"] + result["round1"]
        if result.get("round1-seen") is not None:
            result["startup"] = result["round1-seen"] - result["round1"]
    later = [m for r, m in rows.items() if r >= 2 and m.get("clients")]
    if later:
        result["s-per-round"] = statistics.median(m["round-train-seconds"] for m in later)
        result["overhead-per-client"] = statistics.median(
            (m["round-train-seconds"] - slowest_worker(m)) / m["clients"] for m in later
        )
    summary = out / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        result |= {"bytes": s["bytes-communicated"], "acc": s["heldout"].get("query-acc-post")}
        result["eval-seconds"] = eval_seconds(records(out))
    return result


def slowest_worker(m: dict) -> float:
    """The slowest worker's summed client compute in a round; without per-worker figures
    (older runs), the compute spread evenly over two workers."""
    if "slowest-worker-compute-seconds" in m:
        return m["slowest-worker-compute-seconds"]
    return sum(m["client-compute-seconds"]) / 2


def eval_seconds(rows: list[dict]) -> float | None:
    """Wall seconds of the final round less its training (the held-out evaluation)."""
    system = [r for r in rows if r["phase"] == "system" and r["metric"] == "wall-seconds"]
    train = train_rounds(rows)
    if len(system) < 2 or not train:
        return None
    last, before = system[-1], system[-2]
    return last["value"] - before["value"] - train[last["round"]]["round-train-seconds"]


def fmt(v, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if v is None else f"{v * scale:{spec}}{unit}"


def table(results: list[dict]) -> str:
    gb = 2**30
    lines = [
        "| source | N train + held-out | start-up | round 1 | s / round | overhead / client | "
        "held-out eval | peak memory, process tree | peak memory, machine above idle | "
        "bytes | whole run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n = r["n"]
        status = "" if r["finished"] else f" (did not finish: {r.get('error', '')})"
        lines.append(
            f"| {r['source']} | {n:,} + {max(1, n // 10):,} | "
            f"{fmt(r.get('startup'), '.1f', unit=' s')} | "
            f"{fmt(r.get('round1'), '.1f', unit=' s')} | "
            f"{fmt(r.get('s-per-round'), '.2f', unit=' s')} | "
            f"{fmt(r.get('overhead-per-client'), '.0f', 1000, ' ms')} | "
            f"{fmt(r.get('eval-seconds'), '.1f', unit=' s')} | "
            f"{r['peak-tree-bytes'] / gb:.2f} GB | {r['peak-machine-bytes'] / gb:.2f} GB | "
            f"{fmt(r.get('bytes'), '.1f', 2**-20, ' MB')} | {r['wall']:.0f} s{status} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for source in sorted({r["source"] for r in results}):
        rs = [r for r in results if r["source"] == source and "s-per-round" in r]
        ns = [r["n"] for r in rs]
        ax1.plot(ns, [r["s-per-round"] for r in rs], "o-", label=source)
        ax2.plot(ns, [r["peak-tree-bytes"] / 2**30 for r in rs], "o-", label=source)
    for ax, ylabel in ((ax1, "seconds per round"), (ax2, "peak memory, process tree (GB)")):
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"training clients N ({PER_ROUND} per round)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--sources", default=",".join(SOURCES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--table", action="store_true", help="only redo the table and plot of --out")
    args = p.parse_args()
    out = Path(args.out)
    results = []
    for source in args.sources.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            run = out / f"{source}-{n}"
            if args.table:
                if (run / "result.json").exists():
                    results.append(figures(run, json.loads((run / "result.json").read_text())))
                continue
            results.append(run_one(source, n, args.rounds, run, args.timeout))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=1))
    (out / "scale.md").write_text(table(results) + "\n")
    plot(results, out / "scale.png")
    print(table(results))


if __name__ == "__main__":
    main()
