"""Episodic N-way K-shot sampling from one client's shard.

Each episode picks ``n_way`` of the client's classes, then ``k_shot`` support and ``query``
query examples per class, without replacement. Labels are remapped to the positions
``0..n_way-1`` in the order the classes were drawn (Vinyals et al., 2016; Finn et al., 2017),
or in class-id order with ``task.label-order = "sorted"`` (for labels with a fixed meaning, such
as "no disease" / "disease"). A client's :class:`~fedmeta.skew.ClientSkew`, if any, transforms
every episode.
For regression sources (one function per "class") ``n_way`` is 1 and targets come from the
source.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmeta.data.base import DataSource
from fedmeta.errors import FedmetaError
from fedmeta.partition import Shard
from fedmeta.skew import ClientSkew
from fedmeta.tasks import Task


def assemble(source: DataSource, classes: np.ndarray, picks: list[np.ndarray], k_shot: int) -> Task:
    """The episode whose position ``i`` is class ``classes[i]`` with examples ``picks[i]`` (the
    first ``k_shot`` of each to the support set, the rest to the query set). Labels are the
    positions, or the source's targets for regression."""
    sx, sy, qx, qy = [], [], [], []
    for pos, (c, pick) in enumerate(zip(classes, picks, strict=True)):
        x, y = source.examples(int(c), pick)
        if y is None:
            y = np.full(len(pick), pos, dtype=np.int64)
        sx.append(x[:k_shot])
        sy.append(y[:k_shot])
        qx.append(x[k_shot:])
        qy.append(y[k_shot:])
    return Task(
        *(torch.from_numpy(np.concatenate(a)) for a in (sx, sy, qx, qy)),
        classes=torch.from_numpy(np.asarray(classes).astype(np.int64)),
    )


class EpisodeSampler:
    """Samples tasks from ``shard`` of ``source``.

    Raises
    ------
    FedmetaError
        If fewer than ``n_way`` of the shard's classes have at least ``k_shot + query`` examples.
    """

    def __init__(
        self,
        source: DataSource,
        shard: Shard,
        n_way: int,
        k_shot: int,
        query: int,
        who: str = "client",
        skew: ClientSkew | None = None,
        sorted_labels: bool = False,
        way_key: str = "task.n-way",
    ) -> None:
        self.source, self.shard, self.skew = source, shard, skew
        self.sorted_labels = sorted_labels
        self.n_way, self.k_shot, self.query = n_way, k_shot, query
        need = k_shot + query
        self.eligible = np.array(
            [c for c, idx in sorted(shard.examples.items()) if len(idx) >= need], dtype=np.int64
        )
        if len(self.eligible) < n_way:
            raise FedmetaError(
                f"{who} has {len(self.eligible)} classes with at least k-shot + query = {need} "
                f"examples, but {way_key} = {n_way}; lower {way_key}, task.k-shot or "
                f"task.query, or give clients more data (partition settings, fewer clients)"
            )

    def sample_one(self, rng: np.random.Generator) -> Task:
        classes = rng.choice(self.eligible, size=self.n_way, replace=False)
        if self.sorted_labels:
            classes = np.sort(classes)
        need = self.k_shot + self.query
        picks = [rng.choice(self.shard.examples[int(c)], size=need, replace=False) for c in classes]
        task = assemble(self.source, classes, picks, self.k_shot)
        return self.skew(task, self.n_way, rng) if self.skew is not None else task

    def inclusion_probability(self) -> float:
        """The largest chance that one task contains a given example: its class is among the
        ``n_way`` drawn, then it is among the ``k_shot + query`` drawn from its class. Examples
        of classes too small to be eligible are never drawn. (DP-SGD's sampling rate.)"""
        need = self.k_shot + self.query
        smallest = min(len(self.shard.examples[int(c)]) for c in self.eligible)
        return min(1.0, self.n_way / len(self.eligible) * need / smallest)

    def sample(self, rng: np.random.Generator, n: int) -> list[Task]:
        return [self.sample_one(rng) for _ in range(n)]
