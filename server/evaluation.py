"""Held-out evaluation: pool per-task results from all held-out clients, with 95% CIs.

Each held-out client replies with one value per evaluated task for every metric (lists in its
MetricRecord). The pooled mean is over tasks and its 95% confidence interval is
``1.96 * std / sqrt(n_tasks)``, the convention of Finn et al. (2017) and later few-shot papers
(:func:`fedmeta.stats.mean_ci95`).
"""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord, RecordDict

from fedmeta.protocol import PER_TASK
from fedmeta.stats import mean_ci95


def pool_heldout_metrics(contents: list[RecordDict]) -> MetricRecord:
    """Pool per-task lists from the replies (ordered by partition id)."""
    pooled: dict[str, list[float]] = {}
    per_client: dict[str, list[float]] = {}
    for content in contents:
        record = next(iter(content.metric_records.values()))
        for key in PER_TASK:
            if key in record:
                values = list(record[key])
                pooled.setdefault(key, []).extend(values)
                per_client.setdefault(key, []).append(float(np.mean(values)))
    out = MetricRecord()
    for key, values in pooled.items():
        mean, ci = mean_ci95(values)
        out[key] = mean
        out[f"{key}-ci95"] = ci
        out[f"{key}-per-client"] = per_client[key]
    out["num-tasks"] = len(next(iter(pooled.values()), []))
    out["num-clients"] = len(contents)
    return out
