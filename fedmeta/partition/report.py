"""``fedmeta partition``: who holds what, printed and drawn as a heatmap, without training."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedmeta.experiment import Experiment


def class_histogram(exp: Experiment) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, classes)``: ``counts[client, j]`` examples of ``classes[j]`` held by each
    client (training clients first, then held-out clients)."""
    shards = [*exp.layout.train, *exp.layout.heldout]
    classes = np.array(sorted(set().union(*(s.examples for s in shards))), dtype=np.int64)
    column = {int(c): j for j, c in enumerate(classes)}
    counts = np.zeros((len(shards), len(classes)), dtype=np.int64)
    for i, shard in enumerate(shards):
        for c, idx in shard.examples.items():
            counts[i, column[c]] = len(idx)
    return counts, classes


def describe(exp: Experiment, counts: np.ndarray) -> str:
    """One line per client: role, classes, examples, examples per class (min-max)."""
    lines = ["client  role      classes  examples  per class"]
    for i, row in enumerate(counts):
        held = row[row > 0]
        role = "held-out" if exp.is_heldout(i) else "training"
        span = f"{held.min()}-{held.max()}" if len(held) else "-"
        lines.append(f"{i:>6}  {role:<8}  {len(held):>7}  {int(row.sum()):>8}  {span}")
    train = counts[: exp.scenario.clients.train]
    sizes = train.sum(axis=1)
    lines.append(
        f"training clients: examples min {sizes.min()}, median {int(np.median(sizes))}, "
        f"max {sizes.max()}; classes per client min {(train > 0).sum(1).min()}, "
        f"max {(train > 0).sum(1).max()}"
    )
    return "\n".join(lines)


def plot_heatmap(exp: Experiment, counts: np.ndarray, out: Path) -> Path:
    """Clients (rows) by classes (columns), colour = examples held; a line separates the
    training clients from the held-out ones."""
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.12 * len(counts) + 1.5)))
    shown = np.where(counts > 0, counts, np.nan)
    im = ax.imshow(shown, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.axhline(exp.scenario.clients.train - 0.5, color="red", lw=1.2, label="held-out below")
    ax.set_xlabel(f"class (sorted id; {counts.shape[1]} classes)")
    ax.set_ylabel("client (training, then held-out)")
    sc = exp.scenario
    ax.set_title(f"{sc.name}: {sc.partition.name} partition of {sc.data.name}, seed {sc.seed}")
    fig.colorbar(im, ax=ax, label="examples held")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
