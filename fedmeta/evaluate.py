"""Personalisation metrics of one client: adapt on each task's support set, score its query set.

Metric names say the split and whether they were taken before or after adaptation
(``query-acc-pre``, ``query-acc-post``, ``query-loss-pre``, ``query-loss-post``).
"""

from __future__ import annotations

import torch

from fedmeta.learners import Learner, Params
from fedmeta.tasks import Task, TaskKind


def evaluate_tasks(
    learner: Learner, params: Params, tasks: list[Task], kind: TaskKind, steps: int | None = None
) -> dict[str, list[float]]:
    """Per-task query loss (and accuracy for classification) before and after ``adapt``.

    "Before" is the learner's starting point for a new client (:meth:`Learner.eval_start`):
    the meta-parameters themselves, or, for a learner with a global head, the meta-parameters
    with a fresh ``n_way`` head.
    """
    out: dict[str, list[float]] = {"query-loss-pre": [], "query-loss-post": []}
    if kind.accuracy is not None:
        out |= {"query-acc-pre": [], "query-acc-post": []}
    for task in tasks:
        start = learner.eval_start(params, task)
        preds = learner.predict_pre_post(start, task, steps=steps)
        for tag, pred in zip(("pre", "post"), preds, strict=True):  # no graph: see the method
            out[f"query-loss-{tag}"].append(float(kind.loss(pred, task.query_y)))
            if kind.accuracy is not None:
                out[f"query-acc-{tag}"].append(kind.accuracy(pred, task.query_y))
    return out


def accuracy_by_steps(
    learner: Learner, params: Params, tasks: list[Task], kind: TaskKind, steps: list[int]
) -> dict[int, list[float]]:
    """Per-task query accuracy (or loss, for regression) after each number of adaptation
    ``steps``: one ``adapt(start, steps=s)`` call per count, so learners whose adaptation
    depends on its starting point (the proximal terms of Ditto and pFedMe) stay exact. Zero
    steps is the starting point itself, as in ``query-acc-pre``."""
    score = kind.accuracy or kind.loss
    out: dict[int, list[float]] = {s: [] for s in steps}
    for task in tasks:
        start = learner.eval_start(params, task)
        for s in steps:
            adapted = learner.adapt_to(start, task, steps=s) if s else start
            with torch.no_grad():
                out[s].append(float(score(learner.predict(adapted, task), task.query_y)))
    return out
