"""Confidence intervals, the one place that computes them.

* over tasks, the few-shot convention (Finn et al., 2017, and later papers): the normal
  approximation ``1.96 * sd / sqrt(n)``;
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


def auc_ci95(auc: float, members: int, nonmembers: int) -> float:
    """Half-width of the 95% interval of an AUC estimate from ``members`` and ``nonmembers``
    scores (Hanley and McNeil, 1982)."""
    a, m, n = auc, members, nonmembers
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (m * n)
    return 1.96 * math.sqrt(max(var, 0.0))
