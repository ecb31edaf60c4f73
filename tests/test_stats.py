"""Held-out confidence intervals over clients (``fedmeta.stats.clustered_ci95``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmeta.stats import CLIENT_CI, TASK_CI, clustered_ci95, mean_ci95


def test_the_interval_is_over_client_means_with_students_t():
    groups = [[0.9, 0.9, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5], [0.7, 0.8, 0.6, 0.7]]
    mean, half, method = clustered_ci95(groups)
    assert method == CLIENT_CI
    assert mean == pytest.approx(np.mean([v for g in groups for v in g]))
    means = [0.9, 0.5, 0.7]
    t = 4.302652729911275  # t(0.975, 2)
    assert half == pytest.approx(t * np.std(means, ddof=1) / math.sqrt(3))


def test_correlated_tasks_give_a_wider_interval_than_the_task_level_one():
    """Tasks of one client share its classes: here every client's tasks agree with each other,
    so the task-level interval pretends to 40 independent values where there are 4."""
    rng = np.random.default_rng(0)
    groups = [[float(level)] * 10 for level in rng.uniform(0.4, 0.9, size=4)]
    _, clients, _ = clustered_ci95(groups)
    _, tasks = mean_ci95([v for g in groups for v in g])
    assert clients > 3 * tasks


def test_one_client_falls_back_to_the_task_interval_and_says_so():
    mean, half, method = clustered_ci95([[0.2, 0.4, 0.6], []])
    assert method == TASK_CI
    assert (mean, half) == pytest.approx(mean_ci95([0.2, 0.4, 0.6]))
