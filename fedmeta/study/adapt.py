"""Accuracy against the number of adaptation steps, for a finished run's meta-parameters."""

from __future__ import annotations

import json

import torch

from fedmeta.evaluate import accuracy_by_steps
from fedmeta.experiment import build_experiment
from fedmeta.results import RunDir, atomic_write_text
from fedmeta.scenario import Scenario
from fedmeta.stats import mean_ci95


def write_adapt_steps(run: RunDir, scenario: Scenario, steps: list[int], tasks: int) -> None:
    """Evaluate the run's final meta-parameters on the first ``tasks`` evaluation tasks of every
    held-out client after each number of adaptation ``steps``; writes ``adapt-steps.json``
    (pooled mean and 95% CI per step count)."""
    exp = build_experiment(scenario)
    params = exp.to_device(torch.load(run.path / "final.pt", weights_only=True))
    pooled: dict[int, list[float]] = {s: [] for s in steps}
    first = scenario.clients.train
    for pid in range(first, first + scenario.clients.heldout):
        tasks_of = exp.eval_tasks(pid)[:tasks]
        scores = accuracy_by_steps(exp.learner, params, tasks_of, exp.source.kind, steps)
        for s, values in scores.items():
            pooled[s].extend(values)
    stats = [mean_ci95(pooled[s]) for s in steps]
    metric = "query-acc" if exp.source.kind.accuracy is not None else "query-loss"
    result = {
        "metric": metric,
        "steps": steps,
        "mean": [m for m, _ in stats],
        "ci95": [c for _, c in stats],
        "tasks": tasks,
        "num-tasks": len(pooled[steps[0]]),
    }
    atomic_write_text(run.path / "adapt-steps.json", json.dumps(result, indent=2) + "\n")
