"""Privacy audit: membership inference against the released meta-parameters.

The attacker holds the final meta-parameters and, like any new hospital, adapts them to a task's
support set before scoring examples. Members and non-members come from the *same* training
clients and the *same* classes: with ``privacy.audit`` every training client holds back a random
``audit-holdout`` fraction of each class's examples, which never enter training (see
:meth:`fedmeta.experiment.Experiment.shard`). An audit task of a client takes ``n_way`` of its
classes, a support set from its training examples, and as query an equal number of further
training examples (members) and held-back examples (non-members) per class. Both sides are thus
scored by the same adapted model, and only membership separates them.

Two attacks:

* **loss threshold** (Yeom, Giacomelli, Fredrikson and Jha, 2018, "Privacy Risk in Machine
  Learning: Analyzing the Connection to Overfitting", CSF): score ``-loss(x)`` after adaptation;
* **calibrated** (Watson, Guo, Cormode and Sablayrolles, 2022, "On the Importance of Difficulty
  Calibration in Membership Inference Attacks", ICLR): score ``loss_ref(x) - loss(x)``, where
  the reference model is the run's *initial* meta-parameters adapted the same way. The initial
  model has seen no example, so it calibrates per-example difficulty without a shadow training
  run (a weaker reference than the paper's shadow models).

Reported: ROC AUC and the true-positive rate at 1% false-positive rate (Carlini et al., 2022,
"Membership Inference Attacks From First Principles", S&P). AUC 0.5 is chance; its 95% interval
(Hanley and McNeil, 1982) treats examples as independent, so it is a lower bound on the real
uncertainty (examples of one task share a support set). "Members" are
the client's training examples; with many examples per client some were never sampled in
training, which makes the attack's task harder, as in any real audit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from fedmeta.episodes import assemble
from fedmeta.experiment import Experiment
from fedmeta.learners import Learner, Params
from fedmeta.protocol import Stream, rng_for
from fedmeta.stats import auc_ci95
from fedmeta.tasks import Task, TaskKind


def audit_task(
    exp: Experiment, partition_id: int, rng: np.random.Generator
) -> tuple[Task, np.ndarray] | None:
    """One audit task of a training client and its query's membership (True: member), or
    ``None`` when the client has fewer than ``n_way`` classes with a held-back example and
    ``k_shot + 1`` training examples."""
    t = exp.scenario.task
    train, held = exp.shard(partition_id), exp.audit_holdout(partition_id)
    eligible = [
        c for c in train.classes if len(held.examples[c]) and len(train.examples[c]) > t.k_shot
    ]
    if len(eligible) < t.n_way:
        return None
    classes = rng.choice(eligible, size=t.n_way, replace=False)
    if t.label_order == "sorted":
        classes = np.sort(classes)
    picks, member = [], []
    for c in (int(c) for c in classes):
        m = min(len(held.examples[c]), len(train.examples[c]) - t.k_shot, t.query)
        seen = rng.choice(train.examples[c], size=t.k_shot + m, replace=False)
        unseen = rng.choice(held.examples[c], size=m, replace=False)
        picks.append(np.concatenate([seen, unseen]))
        member.append(np.repeat([True, False], m))
    task = assemble(exp.source, classes, picks, t.k_shot)
    skew = exp.sampler(partition_id).skew  # the client's own feature shift, if any
    if skew is not None:
        task = skew(task, t.n_way, rng)
    return task.to(exp.device), np.concatenate(member)


def example_losses(
    learner: Learner, params: Params, tasks: list[Task], kind: TaskKind, steps: int | None
) -> np.ndarray:
    """Loss of every query example of ``tasks`` after adapting ``params`` to its support set."""
    out = []
    for task in tasks:
        start = learner.eval_start(params, task)
        adapted = learner.adapt_to(start, task, steps=steps)
        with torch.no_grad():
            pred = learner.predict(adapted, task)
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


def audit_clients(exp: Experiment) -> list[int]:
    """The audited training clients: a seeded choice of ``privacy.audit-clients``."""
    n = exp.scenario.clients.train
    k = min(n, exp.scenario.privacy.audit_clients)
    picked = rng_for(exp.scenario.seed, Stream.AUDIT).choice(n, size=k, replace=False)
    return sorted(int(p) for p in picked)


def run_audit(exp: Experiment, final: Params, initial: Params) -> dict[str, Any]:
    """Both attacks on ``final`` meta-parameters (``initial`` is the calibration reference)."""
    sc = exp.scenario
    if not sc.privacy.audit:
        raise ValueError("the audit needs privacy.audit = true (it holds back the non-members)")
    tasks, member = [], []
    for pid in audit_clients(exp):
        rng = rng_for(sc.seed, Stream.AUDIT, pid, 1)
        for _ in range(sc.privacy.audit_tasks):
            got = audit_task(exp, pid, rng)
            if got is None:
                break
            tasks.append(got[0])
            member.append(got[1])
    if not tasks:
        raise ValueError(
            "no audited client has task.n-way classes with held-back examples; raise "
            "privacy.audit-holdout"
        )
    is_member = np.concatenate(member)
    steps, kind = sc.evaluation.inner_steps, exp.source.kind
    target = example_losses(exp.learner, exp.to_device(final), tasks, kind, steps)
    ref = example_losses(exp.learner, exp.to_device(initial), tasks, kind, steps)
    out: dict[str, Any] = {
        "members": int(is_member.sum()),
        "nonmembers": int((~is_member).sum()),
        "tasks": len(tasks),
        "member-loss-mean": float(target[is_member].mean()),
        "nonmember-loss-mean": float(target[~is_member].mean()),
    }
    for attack, score in (("loss", -target), ("calibrated", ref - target)):
        out |= attack_metrics(attack, score[is_member], score[~is_member])
        auc = out[f"{attack}-auc"]
        out[f"{attack}-auc-ci95"] = auc_ci95(auc, out["members"], out["nonmembers"])
    return out
