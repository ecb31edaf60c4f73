"""One scenario under each of Flower's engines: wall time, seconds per round, accuracy, and the
orchestration overhead per client exchange.

Engines: ``simulation`` (``fedmeta run``), ``flwr-run`` (``fedmeta deploy --simulation``:
``flwr run`` on a simulation SuperLink), ``deployment`` (``fedmeta deploy``: a SuperLink and one
SuperNode per client on loopback) and ``ray-2node`` (``fedmeta run`` attached to a Ray head and a
second Ray node on this machine, one CPU each). Every run is a subprocess; measure on quiet cores.

The overhead per exchange (one instruction and one reply) of a training round is its wall time
less the clients' own compute spread over the cores, divided by the clients of the round:
``(round-train-seconds - sum(client-compute-seconds) / cores) / clients``, the median over rounds.

Run: ``python benchmarks/engines.py scenarios/quickstart.toml --out runs/engines
[--engines simulation,flwr-run,deployment,ray-2node] [--set train.rounds=10]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmeta.results import RunDir  # noqa: E402
from runner.ray_head import RayHead  # noqa: E402

ENGINES = ("simulation", "flwr-run", "deployment", "ray-2node")


def run_engine(engine: str, scenario: str, out: Path, sets: list[str]) -> float:
    """Run one engine (unless ``out`` already holds its summary); returns the wall seconds."""
    if (out / "summary.json").exists():
        return json.loads((out / "engine.json").read_text())["wall"]
    cli = [sys.executable, "-m", "runner.cli"]
    args = [a for s in sets for a in ("--set", s)] + ["--out", str(out)]
    cmd = {
        "simulation": [*cli, "run", scenario, *args],
        "flwr-run": [*cli, "deploy", scenario, "--simulation", *args],
        "deployment": [*cli, "deploy", scenario, *args],
        "ray-2node": [*cli, "run", scenario, *args],
    }[engine]
    env, head = dict(os.environ), None
    env.pop("FEDMETA_RAY_ADDRESS", None)
    if engine == "ray-2node":
        head = RayHead(num_cpus=1)
        head.add_node(num_cpus=1)
        env["FEDMETA_RAY_ADDRESS"] = head.address
    t0 = time.monotonic()
    try:
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    finally:
        if head is not None:
            head.stop()
    wall = time.monotonic() - t0
    (out / "engine.json").write_text(json.dumps({"engine": engine, "wall": wall}))
    return wall


def overhead_per_exchange(run: Path, cores: int) -> float:
    rounds: dict[int, dict] = {}
    for r in RunDir(run).read_metrics():
        if r["phase"] == "train":
            rounds.setdefault(r["round"], {})[r["metric"]] = r["value"]
    per = [
        (m["round-train-seconds"] - sum(m["client-compute-seconds"]) / cores) / m["clients"]
        for m in rounds.values()
        if m.get("clients")
    ]
    return statistics.median(per)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario")
    p.add_argument("--out", required=True)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    print(
        "| engine | wall (command) | run wall | s / round | acc after adaptation | "
        "overhead per exchange | clients per Ray node |"
    )
    print("|---|---|---|---|---|---|---|")
    for engine in args.engines.split(","):
        out = Path(args.out) / engine
        wall = run_engine(engine, str(Path(args.scenario).resolve()), out, args.set)
        s = json.loads((out / "summary.json").read_text())
        h = s["heldout"]
        nodes = s.get("clients-per-node")
        print(
            f"| {engine} | {wall:.1f} s | {s['wall-seconds']:.1f} s | "
            f"{s['wall-seconds'] / max(s['rounds'], 1):.2f} s | "
            f"{h['query-acc-post']:.4f} ± {h['query-acc-post-ci95']:.4f} | "
            f"{overhead_per_exchange(out, args.cores) * 1000:.0f} ms | "
            f"{'/'.join(str(v) for v in nodes.values()) if nodes else '-'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
