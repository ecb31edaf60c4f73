"""Core benchmark: the task-batched meta-step against a plain per-task loop, and Flower's
orchestration overhead.

Prints four tables:

1. **Meta-step**, Conv4-64, 5-way 1-shot, 15 query examples per class, 4 tasks, 2 torch
   threads: for second-order MAML, FOMAML, ANIL and ProtoNet with 1 and 5 inner steps, the
   median time of the meta-gradient of

   * a plain per-task autograd loop written here, independently of fedmeta (the reference);
   * fedmeta's own per-task loop (:meth:`~fedmeta.learners.base.Learner.loop_gradient`);
   * fedmeta's meta-step (:meth:`~fedmeta.learners.base.Learner.meta_gradient`, task-batched);

   measured in one process, interleaved repeat by repeat on the same tasks, with the ratio
   batched / plain loop, and the largest absolute difference between fedmeta's meta-gradient
   and the plain loop's in float64.
2. The arithmetic floor: forward and backward of Conv4-64 over the 320 images of one meta-batch,
   as one batch and as four, in contiguous and channels-last memory order.
3. Precision: fedmeta's meta-step in float32 against bfloat16 autocast
   (``backend.precision``), with the cosine between the two meta-gradients; ProtoNet also on
   one 40-way, 5-query episode, as ``scenarios/omniglot-5w1s-protonet.toml`` trains.
4. For a 20-client round of a real Flower simulation, the share of round wall time spent
   outside client compute (orchestration, serialisation, Ray): ``1 - sum(client compute) /
   (actors * round wall time)``.

Measure on quiet cores. Run: ``FEDMETA_DATA=../shared/data python benchmarks/bench_core.py
[--repeats 7] [--skip-simulation]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmeta.learners import LEARNERS
from fedmeta.models import Conv4
from fedmeta.tasks import CLASSIFICATION, Task

Params = dict[str, Tensor]
LEARNER_NAMES = ("maml", "fomaml", "anil", "protonet")
HEAD = ("head.weight", "head.bias")


def random_task(n_way: int, k_shot: int, query: int, dtype: torch.dtype) -> Task:
    return Task(
        torch.rand(n_way * k_shot, 1, 28, 28, dtype=dtype),
        torch.arange(n_way).repeat_interleave(k_shot),
        torch.rand(n_way * query, 1, 28, 28, dtype=dtype),
        torch.arange(n_way).repeat_interleave(query),
        classes=torch.arange(n_way),
    )


# -- the plain per-task loop: the reference, written without fedmeta ---------------------------
def _features(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    inner = {k[len("features.") :]: v for k, v in params.items() if k.startswith("features.")}
    return functional_call(model.features, inner, (x,))


def plain_maml(model, params, tasks, steps, lr, first_order) -> tuple[Params, float]:
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    loss_sum = 0.0
    for t in tasks:
        fast = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (t.support_x,)), t.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads, strict=True)}
        query = F.cross_entropy(functional_call(model, fast, (t.query_x,)), t.query_y)
        wrt = fast if first_order else params
        for k, g in zip(wrt, torch.autograd.grad(query, list(wrt.values())), strict=True):
            total[k] += g
        loss_sum += query.item()
    return {k: v / len(tasks) for k, v in total.items()}, loss_sum / len(tasks)


def plain_anil(model, params, tasks, steps, lr, first_order=False) -> tuple[Params, float]:
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    loss_sum = 0.0
    for t in tasks:
        support = _features(model, params, t.support_x)
        w, b = params[HEAD[0]], params[HEAD[1]]
        for _ in range(steps):
            loss = F.cross_entropy(F.linear(support, w, b), t.support_y)
            gw, gb = torch.autograd.grad(loss, [w, b], create_graph=True)
            w, b = w - lr * gw, b - lr * gb
        query = F.cross_entropy(F.linear(_features(model, params, t.query_x), w, b), t.query_y)
        for k, g in zip(params, torch.autograd.grad(query, list(params.values())), strict=True):
            total[k] += g
        loss_sum += query.item()
    return {k: v / len(tasks) for k, v in total.items()}, loss_sum / len(tasks)


def plain_protonet(model, params, tasks, steps=0, lr=0.0, first_order=False):
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    loss_sum = 0.0
    features = {k: v for k, v in params.items() if k not in HEAD}
    for t in tasks:
        feats = _features(model, params, torch.cat([t.support_x, t.query_x]))  # one batch
        support, query = feats[: len(t.support_x)], feats[len(t.support_x) :]
        n_way = len(t.classes)
        protos = torch.stack([support[t.support_y == c].mean(0) for c in range(n_way)])
        logits = -((query[:, None, :] - protos[None, :, :]) ** 2).sum(-1)
        loss = F.cross_entropy(logits, t.query_y)
        for k, g in zip(features, torch.autograd.grad(loss, list(features.values())), strict=True):
            total[k] += g
        loss_sum += loss.item()
    return {k: v / len(tasks) for k, v in total.items()}, loss_sum / len(tasks)


PLAIN: dict[str, Callable] = {
    "maml": lambda *a: plain_maml(*a, first_order=False),
    "fomaml": lambda *a: plain_maml(*a, first_order=True),
    "anil": plain_anil,
    "protonet": plain_protonet,
}


def setup(
    name: str,
    steps: int,
    dtype: torch.dtype,
    seed: int = 0,
    n_way: int = 5,
    query: int = 15,
    n_tasks: int = 4,
):
    torch.manual_seed(seed)
    model = Conv4((1, 28, 28), n_way).to(dtype)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    cls = LEARNERS.get(name)
    cfg = cls.Options(inner_steps=steps, inner_lr=0.4, tasks_per_step=n_tasks)
    learner = cls(model, CLASSIFICATION.loss, cfg)
    tasks = [random_task(n_way, 1, query, dtype) for _ in range(n_tasks)]
    return model, params, learner, tasks


def agreement(name: str, steps: int) -> float:
    """Largest absolute difference, float64, between fedmeta's meta-gradient and the plain
    loop's."""
    model, params, learner, tasks = setup(name, steps, torch.float64)
    ours, _ = learner.meta_gradient(params, tasks)
    ref, _ = PLAIN[name](model, params, tasks, steps, 0.4)
    return max((ours[k] - ref.get(k, torch.zeros_like(ours[k]))).abs().max().item() for k in ours)


def median_times(name: str, steps: int, repeats: int) -> dict[str, float]:
    """Median ms of the plain loop, fedmeta's loop and fedmeta's meta-step, interleaved."""
    model, params, learner, tasks = setup(name, steps, torch.float32)
    runs = {
        "plain": lambda: PLAIN[name](model, params, tasks, steps, 0.4),
        "loop": lambda: learner.loop_gradient(params, tasks),
        "batched": lambda: learner.meta_gradient(params, tasks),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(repeats + 1):  # the first repeat is a warm-up
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if rep:
                times[key].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_meta_steps(repeats: int) -> None:
    torch.set_num_threads(2)
    print("## Meta-step, Conv4-64, 5-way 1-shot, 15 query/class, 4 tasks, 2 threads (median ms)")
    print(
        "| learner | inner steps | plain loop | fedmeta loop | fedmeta batched | batched / plain "
        "| max abs grad difference (float64) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in LEARNER_NAMES:
        for steps in (1, 5) if name != "protonet" else (0,):
            med = median_times(name, steps, repeats)
            print(
                f"| {name} | {steps} | {med['plain']:.0f} | {med['loop']:.0f} | "
                f"{med['batched']:.0f} | {med['batched'] / med['plain']:.2f} | "
                f"{agreement(name, steps):.1e} |",
                flush=True,
            )


def compute_floor(repeats: int) -> None:
    """Forward and backward of Conv4-64 over one meta-batch's query and support images
    (4 x 80), as one batch and as four: how much of a meta-step is arithmetic."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5)
    x, y = torch.rand(320, 1, 28, 28), torch.arange(320) % 5

    def run(batches: int, channels_last: bool) -> float:
        m = model.to(memory_format=torch.channels_last) if channels_last else model
        xs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        times = []
        for rep in range(repeats + 1):
            t0 = time.perf_counter()
            for xb, yb in zip(xs.chunk(batches), y.chunk(batches), strict=True):
                F.cross_entropy(m(xb), yb).backward()
            if rep:
                times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)

    print("\n## Arithmetic floor: Conv4-64 forward + backward over 320 images (median ms)")
    print("| batches | contiguous | channels-last |")
    print("|---|---|---|")
    for batches in (1, 4):
        plain, last = run(batches, False), run(batches, True)
        print(f"| {batches} x {320 // batches} | {plain:.0f} | {last:.0f} |")


def bench_precision(repeats: int) -> None:
    """fedmeta's meta-step in float32 against bfloat16 autocast (``backend.precision``),
    interleaved, and the cosine between the two meta-gradients."""
    torch.set_num_threads(2)
    cases = [(n, 1, 5, 15, 4) for n in ("maml", "fomaml", "anil")]
    cases += [("protonet", 0, 5, 15, 4), ("protonet", 0, 40, 5, 1)]  # the second as trained
    print("\n## Precision: fedmeta's meta-step, float32 against bfloat16 autocast (median ms)")
    print("| learner | inner steps | tasks | float32 | bfloat16 | bfloat16 / float32 | cosine |")
    print("|---|---|---|---|---|---|---|")
    for name, steps, n_way, query, n_tasks in cases:
        _, params, learner, tasks = setup(name, steps, torch.float32, 0, n_way, query, n_tasks)
        times: dict[bool, list[float]] = {False: [], True: []}
        grads: dict[bool, Tensor] = {}
        for rep in range(repeats + 1):  # the first repeat is a warm-up
            for bf16 in (False, True):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    g, _ = learner.meta_gradient(params, tasks)
                if rep:
                    times[bf16].append(1000 * (time.perf_counter() - t0))
                grads[bf16] = torch.cat([g[k].flatten() for k in sorted(g)])
        exact, mixed = (statistics.median(times[b]) for b in (False, True))
        cosine = F.cosine_similarity(grads[True], grads[False], dim=0).item()
        shape = f"{n_tasks} x {n_way}-way, {query} queries"
        print(
            f"| {name} | {steps or '-'} | {shape} | {exact:.0f} | {mixed:.0f} | "
            f"{mixed / exact:.2f} | {cosine:.4f} |",
            flush=True,
        )


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
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--skip-simulation", action="store_true")
    args = p.parse_args()
    bench_meta_steps(args.repeats)
    compute_floor(args.repeats)
    bench_precision(args.repeats)
    if not args.skip_simulation:
        bench_round_overhead(args.rounds)


if __name__ == "__main__":
    main()
