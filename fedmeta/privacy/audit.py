"""Privacy audit: membership inference against the released meta-parameters.

The attacker holds the final meta-parameters and, like any new hospital, adapts them to a task's
support set; it then scores each query example. Members are examples of the training clients'
shards (which the federation trained on); non-members are examples of held-out clients, which
never trained. Each side gets the same number of tasks (``privacy.audit-tasks`` per client, from
as many training clients as there are held-out ones), and each query example is one sample.

Two attacks:

* **loss threshold** (Yeom, Giacomelli, Fredrikson and Jha, 2018, "Privacy Risk in Machine
  Learning: Analyzing the Connection to Overfitting", CSF): score ``-loss(x)`` after adaptation;
* **calibrated** (Watson, Guo, Cormode and Sablayrolles, 2022, "On the Importance of Difficulty
  Calibration in Membership Inference Attacks", ICLR): score ``loss_ref(x) - loss(x)``, where
  the reference model is the run's *initial* meta-parameters adapted the same way. The initial
  model has seen neither members nor non-members, so it calibrates per-example difficulty
  without a shadow training run (a weaker reference than the paper's shadow models).

Reported: ROC AUC and the true-positive rate at 1% false-positive rate (Carlini et al., 2022,
"Membership Inference Attacks From First Principles", S&P). AUC 0.5 is chance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from fedmeta.experiment import Experiment, rng_for
from fedmeta.learners import Learner, Params
from fedmeta.tasks import Task, TaskKind

AUDIT = 7
"""Random-stream key of the choice of audited training clients."""


def example_losses(
    learner: Learner, params: Params, tasks: list[Task], kind: TaskKind, steps: int | None
) -> np.ndarray:
    """Loss of every query example of ``tasks`` after adapting ``params`` to its support set."""
    out = []
    for task in tasks:
        start = learner.eval_start(params, task)
        adapted = learner.adapt(start, task.support_x, task.support_y, steps=steps)
        with torch.no_grad():
            pred = learner.forward(adapted, task.query_x)
            y = task.query_y
            out += [float(kind.loss(pred[i : i + 1], y[i : i + 1])) for i in range(len(pred))]
    return np.asarray(out, dtype=np.float64)


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counting one half
    (the Mann-Whitney statistic)."""
    ranks = rankdata(np.concatenate([members, nonmembers]))
    m, n = len(members), len(nonmembers)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float = 0.01) -> float:
    """Fraction of members scoring above the threshold that only ``fpr`` of non-members pass."""
    threshold = np.quantile(nonmembers, 1 - fpr, method="higher")
    return float((members > threshold).mean())


def attack_metrics(prefix: str, members: np.ndarray, nonmembers: np.ndarray) -> dict[str, float]:
    return {
        f"{prefix}-auc": roc_auc(members, nonmembers),
        f"{prefix}-tpr-at-1pct-fpr": tpr_at_fpr(members, nonmembers),
    }


def audit_clients(exp: Experiment) -> tuple[list[int], list[int]]:
    """Partition ids of the audited training clients (a seeded choice, as many as there are
    held-out clients) and of the held-out clients."""
    c = exp.scenario.clients
    rng = rng_for(exp.scenario.seed, AUDIT)
    k = min(c.train, c.heldout)
    members = sorted(int(p) for p in rng.choice(c.train, size=k, replace=False))
    return members, list(range(c.train, c.train + c.heldout))


def _tasks(exp: Experiment, pids: list[int], per_client: int) -> list[Task]:
    return [t for p in pids for t in exp.eval_tasks(p)[:per_client]]


def run_audit(exp: Experiment, final: Params, initial: Params) -> dict[str, Any]:
    """Both attacks on ``final`` meta-parameters (``initial`` is the calibration reference)."""
    sc = exp.scenario
    steps = sc.evaluation.inner_steps
    per_client = min(sc.privacy.audit_tasks, sc.evaluation.tasks_per_client)
    member_pids, outsider_pids = audit_clients(exp)
    kind = exp.source.kind
    scores: dict[str, dict[str, np.ndarray]] = {}
    for side, pids in (("members", member_pids), ("nonmembers", outsider_pids)):
        tasks = _tasks(exp, pids, per_client)
        target = example_losses(exp.learner, exp.to_device(final), tasks, kind, steps)
        ref = example_losses(exp.learner, exp.to_device(initial), tasks, kind, steps)
        scores[side] = {"loss": -target, "calibrated": ref - target, "raw": target}
    out: dict[str, Any] = {
        "members": int(len(scores["members"]["loss"])),
        "nonmembers": int(len(scores["nonmembers"]["loss"])),
        "member-loss-mean": float(scores["members"]["raw"].mean()),
        "nonmember-loss-mean": float(scores["nonmembers"]["raw"].mean()),
    }
    for attack in ("loss", "calibrated"):
        out |= attack_metrics(attack, scores["members"][attack], scores["nonmembers"][attack])
    return out
