"""Partitioners: which classes and examples each client (hospital) holds.

Training clients share the source's ``"train"`` pool according to the scenario's partitioner.
Held-out clients always receive a disjoint label split of the ``"heldout"`` pool, whatever the
partitioner: a new hospital brings classes of its own, and every training setting is scored on
the same held-out tasks. Because the two pools are disjoint, no training client ever holds a
class of a held-out client.

Non-IID label splits follow McMahan et al. (2017), "Communication-Efficient Learning of Deep
Networks from Decentralized Data"; the Dirichlet split follows Hsu, Qi and Brown (2019),
"Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from fedmeta.data.base import DataSource
from fedmeta.errors import FedmetaError
from fedmeta.options import Options
from fedmeta.registry import Registry


@dataclass(frozen=True)
class Shard:
    """One client's data: example indices per class id."""

    examples: dict[int, np.ndarray]

    @property
    def classes(self) -> np.ndarray:
        return np.array(sorted(self.examples), dtype=np.int64)

    @property
    def size(self) -> int:
        return int(sum(len(v) for v in self.examples.values()))


@dataclass(frozen=True)
class Layout:
    """All clients' shards: training clients first, then held-out clients."""

    train: tuple[Shard, ...]
    heldout: tuple[Shard, ...]

    def shard(self, partition_id: int) -> Shard:
        n = len(self.train)
        return self.train[partition_id] if partition_id < n else self.heldout[partition_id - n]


class Partitioner:
    """Splits the train pool among ``n`` training clients."""

    Options: type[Options]

    def __init__(self, options: Options) -> None:
        self.options = options

    def split(self, source: DataSource, n: int, rng: np.random.Generator) -> list[Shard]:
        raise NotImplementedError


PARTITIONERS: Registry[type[Partitioner]] = Registry("partitioner")


def _whole(source: DataSource, classes) -> Shard:
    return Shard({int(c): np.arange(source.num_examples(int(c))) for c in classes})


class LabelSplitOptions(Options):
    classes_per_client: int | None = Field(None, ge=1)
    overlap: float = Field(0.0, ge=0.0, lt=1.0)
    by: Literal["class", "group"] = "class"


@PARTITIONERS.register("label-split", help="each client holds its own classes (optional overlap)")
class LabelSplit(Partitioner):
    """Each client gets whole classes. Without ``classes-per-client`` the pool is split evenly
    and disjointly; with it, client ``i`` takes a window of that many classes starting at
    ``i * stride``, where ``stride = round(classes-per-client * (1 - overlap))``, so consecutive
    clients share a fraction ``overlap`` of their classes. ``by = "group"`` orders classes by
    their natural group first (Omniglot: alphabet), so each hospital holds one alphabet or a
    part of one."""

    Options = LabelSplitOptions

    def order(self, source: DataSource, role: str, rng: np.random.Generator) -> np.ndarray:
        pool = source.pool(role)
        groups = source.groups(role) if self.options.by == "group" else None
        if self.options.by == "group" and groups is None:
            raise FedmetaError(
                "partition.by = 'group' needs a dataset with natural groups; "
                "this dataset has none: use by = 'class'"
            )
        if groups is None:
            return rng.permutation(pool)
        names = sorted(groups)
        return np.concatenate(
            [rng.permutation(groups[names[i]]) for i in rng.permutation(len(names))]
        )

    def split(self, source: DataSource, n: int, rng: np.random.Generator) -> list[Shard]:
        order = self.order(source, "train", rng)
        cpc = self.options.classes_per_client
        if cpc is None:
            if len(order) < n:
                raise FedmetaError(
                    f"the train pool has {len(order)} classes for clients.train = {n}; "
                    f"use fewer training clients or more classes"
                )
            return [_whole(source, chunk) for chunk in np.array_split(order, n)]
        stride = max(1, round(cpc * (1.0 - self.options.overlap)))
        needed = stride * (n - 1) + cpc
        if needed > len(order):
            raise FedmetaError(
                f"partition.classes-per-client = {cpc} with overlap = {self.options.overlap} "
                f"needs {needed} train classes for {n} clients but the pool has {len(order)}; "
                f"lower classes-per-client, raise overlap or use fewer clients"
            )
        return [_whole(source, order[i * stride : i * stride + cpc]) for i in range(n)]


def _split_examples(
    source: DataSource, n: int, rng: np.random.Generator, proportions
) -> list[Shard]:
    shards: list[dict[int, np.ndarray]] = [{} for _ in range(n)]
    for c in source.pool("train"):
        idx = rng.permutation(source.num_examples(int(c)))
        counts = rng.multinomial(len(idx), proportions(rng))
        for client, part in enumerate(np.split(idx, np.cumsum(counts)[:-1])):
            if len(part):
                shards[client][int(c)] = np.sort(part)
    return [Shard(s) for s in shards]


class DirichletOptions(Options):
    alpha: float = Field(0.5, gt=0)


@PARTITIONERS.register("dirichlet", help="each class's examples split by Dirichlet(alpha)")
class Dirichlet(Partitioner):
    """For every class, client proportions are drawn from ``Dirichlet(alpha * 1)`` and the
    class's examples are split accordingly: small ``alpha`` concentrates a class on few clients,
    large ``alpha`` approaches IID."""

    Options = DirichletOptions

    def split(self, source: DataSource, n: int, rng: np.random.Generator) -> list[Shard]:
        alpha = self.options.alpha
        return _split_examples(source, n, rng, lambda r: r.dirichlet(np.full(n, alpha)))


class IIDOptions(Options):
    pass


@PARTITIONERS.register("iid", help="every class's examples spread uniformly over clients")
class IID(Partitioner):
    """Every class's examples are spread uniformly at random over the training clients."""

    Options = IIDOptions

    def split(self, source: DataSource, n: int, rng: np.random.Generator) -> list[Shard]:
        return _split_examples(source, n, rng, lambda r: np.full(n, 1.0 / n))


class PooledOptions(Options):
    pass


@PARTITIONERS.register("pooled", help="every training client holds the whole train pool")
class Pooled(Partitioner):
    """No partition at all: every training client holds every class and example of the train
    pool. With one client per round this is centralised training on the pooled data (the
    ``centralized`` baseline of ``fedmeta compare``)."""

    Options = PooledOptions

    def split(self, source: DataSource, n: int, rng: np.random.Generator) -> list[Shard]:
        whole = _whole(source, source.pool("train"))
        return [whole] * n


def build_layout(
    source: DataSource, partitioner: Partitioner, n_train: int, n_heldout: int, seed: int
) -> Layout:
    """Partition ``source`` for ``n_train`` training and ``n_heldout`` held-out clients.

    The held-out split has its own random stream, so it depends only on the seed and
    ``n_heldout``: every partitioner, client count and partition setting of a study scores the
    same held-out hospitals.
    """
    train = partitioner.split(source, n_train, np.random.default_rng([seed, 0x5EED]))
    heldout_pool = np.random.default_rng([seed, 0x4E1D]).permutation(source.pool("heldout"))
    if len(heldout_pool) < n_heldout:
        raise FedmetaError(
            f"the held-out pool has {len(heldout_pool)} classes for clients.heldout = "
            f"{n_heldout}; use fewer held-out clients"
        )
    heldout = [_whole(source, chunk) for chunk in np.array_split(heldout_pool, n_heldout)]
    return Layout(tuple(train), tuple(heldout))
