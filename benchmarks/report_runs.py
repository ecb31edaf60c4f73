"""Summarise finished runs: held-out accuracy, wall time, simulator overhead, and a curve.

For each run directory it prints the final held-out accuracy before/after adaptation with the
95% CI, the wall time, the first round at which accuracy after adaptation reached each of
``--targets`` (round and minutes), and the share of training-round wall time spent outside
client compute (``1 - sum(client compute) / (actors * round wall time)``). With ``--plot`` it
draws held-out accuracy after adaptation against wall-clock minutes for all runs, with the
targets marked.

Run: ``python benchmarks/report_runs.py runs/omniglot-5w1s-* --targets 0.9,0.95,0.97 --plot
docs/omniglot-curve.png``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmeta.results import RunDir
from fedmeta.study.plots import plot_vs_time
from fedmeta.study.results import run_cell


def overhead_share(run: Path, actors: int) -> float:
    recs = RunDir(run).read_metrics()
    wall = sum(r["value"] for r in recs if r["metric"] == "round-train-seconds")
    compute = sum(sum(r["value"]) for r in recs if r["metric"] == "client-compute-seconds")
    return 1.0 - compute / (actors * wall) if wall else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--targets", default="0.90", help="comma-separated accuracies, e.g. 0.9,0.95")
    p.add_argument("--actors", type=int, default=2, help="parallel client actors (2 cores)")
    p.add_argument("--plot")
    args = p.parse_args()
    targets = tuple(float(t) for t in args.targets.split(","))
    firsts = " | ".join(f"first >= {t:g}: round (min)" for t in targets)
    print(
        f"| run | rounds | wall min | acc pre | acc post (95% CI) | {firsts} "
        "| outside client compute |"
    )
    print("|---" * (6 + len(targets)) + "|")
    cells = []
    runs = [Path(r) for r in args.runs]
    names = [run_cell(r).strategy for r in runs]
    for run, name in zip(runs, names, strict=True):
        # runs of one scenario are told apart by their directories (else a plot would pool
        # them like seeds)
        cell = run_cell(run, f"{name} ({run.name})" if names.count(name) > 1 else None)
        summary, wall = cell.summary, cell.system("wall-seconds")
        h = summary["heldout"]
        hits = []
        for target in targets:
            hit = next((r for r, v in cell.curve() if v >= target), None)
            hits.append(f"{hit} ({wall[hit] / 60:.1f})" if hit is not None else "not reached")
        print(
            f"| {cell.strategy} | {summary['rounds']} | {summary['wall-seconds'] / 60:.1f} | "
            f"{h['query-acc-pre']:.3f} | {h['query-acc-post']:.3f} ± "
            f"{h['query-acc-post-ci95']:.3f} | {' | '.join(hits)} | "
            f"{100 * overhead_share(run, args.actors):.1f}% |"
        )
        cells.append(cell)
    if args.plot:
        out = plot_vs_time(cells, Path(args.plot), "Held-out hospitals, 5-way 1-shot", targets)
        print(f"plot: {out}")


if __name__ == "__main__":
    main()
