"""Plots from saved run directories (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedmeta.results import RunDir  # noqa: E402


def heldout_curve(
    run: str | Path, metric: str = "query-acc-post"
) -> list[tuple[int, float, float, float]]:
    """``(round, wall seconds, value, ci95)`` of a held-out metric over a run."""
    records = RunDir(run).read_metrics()
    wall = {r["round"]: r["value"] for r in records if r["metric"] == "wall-seconds"}
    value = {
        r["round"]: r["value"] for r in records if r["phase"] == "heldout" and r["metric"] == metric
    }
    ci = {
        r["round"]: r["value"]
        for r in records
        if r["phase"] == "heldout" and r["metric"] == f"{metric}-ci95"
    }
    return [(rnd, wall.get(rnd, 0.0), value[rnd], ci.get(rnd, 0.0)) for rnd in sorted(value)]


def plot_heldout_vs_time(
    runs: dict[str, str | Path], out: str | Path, metric: str = "query-acc-post", title: str = ""
) -> Path:
    """Held-out ``metric`` (mean and 95% CI band) against wall-clock minutes, one line per run."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, run in runs.items():
        pts = heldout_curve(run, metric)
        if not pts:
            continue
        minutes = [p[1] / 60 for p in pts]
        mean = [p[2] for p in pts]
        lo = [p[2] - p[3] for p in pts]
        hi = [p[2] + p[3] for p in pts]
        ax.plot(minutes, mean, marker="o", ms=3, label=label)
        ax.fill_between(minutes, lo, hi, alpha=0.2)
    ax.set_xlabel("wall-clock time (minutes)")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(title or f"held-out {metric} vs wall time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
