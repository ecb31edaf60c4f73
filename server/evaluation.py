"""Held-out evaluation: pool per-task results from all held-out clients, with 95% CIs.

Each held-out client replies with one value per evaluated task for every metric (lists in its
MetricRecord). The pooled mean is over tasks. Its 95% confidence interval (``<metric>-ci95``)
is taken over clients: Student's t over the clients' own means
(:func:`fedmeta.stats.clustered_ci95`), since the tasks of one client share its classes and are
not independent. The few-shot papers' interval over tasks, ``1.96 * std / sqrt(n_tasks)``
(Finn et al., 2017), is kept as ``<metric>-ci95-tasks`` for comparison; it is narrower.
"""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord, RecordDict

from fedmeta.protocol import PER_TASK
from fedmeta.stats import CLIENT_CI, clustered_ci95, mean_ci95


def pool_heldout_metrics(contents: list[RecordDict]) -> MetricRecord:
    """Pool per-task lists from the replies (ordered by partition id)."""
    groups: dict[str, list[list[float]]] = {}
    for content in contents:
        record = next(iter(content.metric_records.values()))
        for key in PER_TASK:
            if key in record:
                groups.setdefault(key, []).append([float(v) for v in record[key]])
    out = MetricRecord()
    for key, per_client in groups.items():
        mean, ci, method = clustered_ci95(per_client)
        out[key] = mean
        out[f"{key}-ci95"] = ci
        out[f"{key}-ci95-tasks"] = mean_ci95([v for g in per_client for v in g])[1]
        out[f"{key}-per-client"] = [float(np.mean(g)) for g in per_client]
        out["ci-over-clients"] = int(method == CLIENT_CI)  # the same for every key
    out["num-tasks"] = sum(len(g) for g in next(iter(groups.values()), []))
    out["num-clients"] = len(contents)
    return out
