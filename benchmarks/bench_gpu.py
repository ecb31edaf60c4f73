"""GPU benchmark: meta-steps per second and peak GPU memory per client, for a user with a GPU.

For each task-batched learner (second-order MAML, FOMAML, ANIL, ProtoNet) it runs one client's
local update (``--local-steps`` meta-steps of ``--tasks`` tasks each; Conv4-64, 5-way 1-shot,
15 query examples per class, ``--inner-steps`` inner steps) on the device, batched and with the
per-task loop, and prints:

* meta-steps per second (median over ``--repeats`` local updates after a warm-up);
* the peak device memory of one local update (``torch.cuda.max_memory_allocated``), which is
  what one client needs when clients share a GPU through Flower's client resources
  (``backend.num-gpus = 0.25`` puts four clients on one GPU).

Task tensors are copied to the device from pinned host memory (:meth:`fedmeta.tasks.Task.to`).
Without a CUDA device it says so and exits 2; ``--device cpu`` runs the same on the CPU.

Run: ``python benchmarks/bench_gpu.py [--device cuda] [--tasks 4] [--inner-steps 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmeta.learners import LEARNERS
from fedmeta.models import Conv4
from fedmeta.tasks import CLASSIFICATION, Task

LEARNER_NAMES = ("maml", "fomaml", "anil", "protonet")


def host_task(n_way: int = 5, shot: int = 1, query: int = 15) -> Task:
    return Task(
        torch.rand(n_way * shot, 1, 28, 28),
        torch.arange(n_way).repeat_interleave(shot),
        torch.rand(n_way * query, 1, 28, 28),
        torch.arange(n_way).repeat_interleave(query),
        classes=torch.arange(n_way),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, batch: bool, device: torch.device, args) -> tuple[float, float | None]:
    """Meta-steps per second and peak memory (GB, CUDA only) of one client's local update."""
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5).to(device)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    cls = LEARNERS.get(name)
    cfg = cls.Options(
        local_steps=args.local_steps,
        tasks_per_step=args.tasks,
        inner_steps=args.inner_steps,
        batch_tasks=batch,
    )
    learner = cls(model, CLASSIFICATION.loss, cfg)
    tasks = [host_task() for _ in range(args.tasks)]

    def sample(n: int) -> list[Task]:
        return [t.to(device) for t in tasks[:n]]

    learner.local_update(params, sample)  # warm-up (cuDNN autotuning, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        synchronize(device)
        t0 = time.perf_counter()
        learner.local_update(params, sample)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return args.local_steps / statistics.median(times), peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tasks", type=int, default=4, help="tasks per meta-step")
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=5, help="meta-steps per local update")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device is visible; run on a GPU machine or pass --device cpu")
        return 2
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"## {label}: Conv4-64, 5-way 1-shot, 15 query/class, {args.tasks} tasks per meta-step,")
    print(f"## {args.inner_steps} inner steps, {args.local_steps} meta-steps per local update")
    print("| learner | path | meta-steps / s | peak memory per client |")
    print("|---|---|---|---|")
    for name in LEARNER_NAMES:
        for batch in (True, False):
            rate, peak = measure(name, batch, device, args)
            memory = f"{peak:.2f} GB" if peak is not None else "-"
            path = "batched" if batch else "per-task loop"
            print(f"| {name} | {path} | {rate:.1f} | {memory} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
