"""Core benchmark: learner meta-step times and Flower orchestration overhead.

Prints two tables:

1. The time of one client meta-step (``local_update`` with one local step) of every learner on
   the Conv4-64 5-way 1-shot task (15 query examples per class, 5 inner steps, 4 tasks per
   meta-step, 2 torch threads), median of ``--repeats`` after a warm-up. STACK.md's plain
   autograd loop measured 819 ms (second order) and 521 ms (first order) on this setup.
2. For a 20-client round of a real Flower simulation, the share of round wall time spent
   outside client compute (orchestration, serialisation, Ray): ``1 - sum(client compute) /
   (actors * round wall time)``.

Run: ``FEDMETA_DATA=../shared/data python benchmarks/bench_core.py``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from fedmeta.learners import LEARNERS, LearnerConfig
from fedmeta.models import Conv4
from fedmeta.tasks import CLASSIFICATION, Task

OMNIGLOT_TRAIN_CLASSES = 964 * 4


def random_task(n_way: int, k_shot: int, query: int) -> Task:
    return Task(
        torch.rand(n_way * k_shot, 1, 28, 28),
        torch.arange(n_way).repeat_interleave(k_shot),
        torch.rand(n_way * query, 1, 28, 28),
        torch.arange(n_way).repeat_interleave(query),
        classes=torch.arange(n_way),
    )


def bench_meta_steps(repeats: int) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = LearnerConfig(local_steps=1, tasks_per_step=4, inner_steps=5, inner_lr=0.4)
    tasks = [random_task(5, 1, 15) for _ in range(4)]
    print("## Meta-step time, Conv4-64, 5-way 1-shot, 15 query/class, 5 inner steps, 4 tasks")
    print("| learner | median ms | min ms |")
    print("|---|---|---|")
    for name in LEARNERS.names():
        cls = LEARNERS.get(name)
        # a global head has one row per training class: 964 x 4 rotations for Omniglot
        classes = np.arange(OMNIGLOT_TRAIN_CLASSES if cls.global_head else 5)
        model = Conv4((1, 28, 28), len(classes))
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        learner = cls(model, CLASSIFICATION.loss, cfg, train_classes=classes)
        learner.local_update(params, lambda n: tasks[:n])  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            learner.local_update(params, lambda n: tasks[:n])
            times.append(1000 * (time.perf_counter() - t0))
        print(f"| {name} | {statistics.median(times):.0f} | {min(times):.0f} |")


def bench_round_overhead(rounds: int) -> None:
    from fedmeta.results import RunDir
    from fedmeta.scenario import scenario_from_dict
    from runner.simulation import simulate

    raw = {
        "name": "bench-overhead",
        "data": {"name": "synthetic", "num-classes": 400},
        "task": {"n-way": 5, "k-shot": 1, "query": 15},
        "clients": {"train": 20, "heldout": 2},
        "model": {"name": "conv4", "width": 64},
        "learner": {"name": "fomaml", "local-steps": 5, "tasks-per-step": 4, "inner-steps": 1},
        "train": {"rounds": rounds, "fraction": 1.0},
        "evaluation": {"every": 1000, "at-start": False, "tasks-per-client": 1},
        "backend": {"num-cpus": 1},
    }

    class Quiet:
        def start(self, *a): ...
        def update(self, *a): ...
        def finish(self): ...

    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        simulate(scenario_from_dict(raw), run, Quiet())
        recs = run.read_metrics()
    loads = max(r["value"] for r in recs if r["metric"] == "process-data-loads")
    walls = {r["round"]: r["value"] for r in recs if r["metric"] == "round-train-seconds"}
    comps = {r["round"]: r["value"] for r in recs if r["metric"] == "client-compute-seconds"}
    actors = 2
    print(f"\n## 20-client round overhead (fomaml, Conv4-64, 5 local steps, {actors} actors)")
    print("| round | round wall s | sum client compute s | outside client compute |")
    print("|---|---|---|---|")
    shares = []
    for rnd in sorted(walls):
        wall, comp = walls[rnd], sum(comps[rnd])
        share = 1 - comp / (actors * wall)
        shares.append(share)
        print(f"| {rnd} | {wall:.2f} | {comp:.2f} | {100 * share:.1f}% |")
    later = shares[1:] or shares
    print(f"median share outside client compute (rounds 2+): {100 * statistics.median(later):.1f}%")
    print(f"data-source builds per client process (max over rounds): {loads:g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--skip-simulation", action="store_true")
    args = p.parse_args()
    bench_meta_steps(args.repeats)
    if not args.skip_simulation:
        bench_round_overhead(args.rounds)


if __name__ == "__main__":
    main()
