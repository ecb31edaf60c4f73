"""Confidence intervals, the one place that computes them.

* over tasks, the few-shot convention (Finn et al., 2017, and later papers): the normal
  approximation ``1.96 * sd / sqrt(n)``. It treats tasks as independent, which tasks of one
  client are not (they share its classes), so held-out results use the next one;
* over clients (:func:`clustered_ci95`): the mean over tasks, with Student's interval over the
  clients' own means (a cluster-level interval: clients are the independent units);
* over seeds, where ``n`` is small: Student's ``t(0.975, n - 1) * sd / sqrt(n)``;
* an attack's ROC AUC: Hanley and McNeil (1982), "The Meaning and Use of the Area under a
  Receiver Operating Characteristic (ROC) Curve", Radiology.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np


def mean_ci95(values, dist: Literal["normal", "t"] = "normal") -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (``nan`` for fewer than two values;
    the mean is ``nan`` for none)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    if dist == "t":
        from scipy import stats  # only studies need it; keep scipy off the simulation path

        z = float(stats.t.ppf(0.975, len(v) - 1))
    else:
        z = 1.96
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(len(v)))


CLIENT_CI = "t over client means"
TASK_CI = "normal over tasks (one client)"


def clustered_ci95(groups: list[list[float]]) -> tuple[float, float, str]:
    """Mean over every value of ``groups`` (one list of task values per client), the half-width
    of its 95% interval over clients, and the method's name.

    With two or more clients the half-width is Student's ``t(0.975, m - 1) * sd / sqrt(m)`` over
    the ``m`` client means. With one client there is no between-client variation to measure;
    the interval is then the task-level one, and the method says so.
    """
    groups = [g for g in groups if len(g)]
    pooled = [v for g in groups for v in g]
    if len(groups) < 2:
        mean, half = mean_ci95(pooled)
        return mean, half, TASK_CI
    _, half = mean_ci95([float(np.mean(g)) for g in groups], "t")
    return float(np.mean(pooled)), half, CLIENT_CI


def auc_ci95(auc: float, members: int, nonmembers: int) -> float:
    """Half-width of the 95% interval of an AUC estimate from ``members`` and ``nonmembers``
    scores (Hanley and McNeil, 1982)."""
    a, m, n = auc, members, nonmembers
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (m * n)
    return 1.96 * math.sqrt(max(var, 0.0))
