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
from fedmeta.protocol import Stream, rng_for
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


def holdout_split(shard: Shard, fraction: float, rng: np.random.Generator) -> tuple[Shard, Shard]:
    """``shard`` cut in two per class: the rest, and a random ``fraction`` of each class's
    examples (rounded down, so a class of one example keeps it)."""
    kept, held = {}, {}
    for c, idx in sorted(shard.examples.items()):
        perm = rng.permutation(idx)
        h = int(fraction * len(perm))
        kept[c], held[c] = np.sort(perm[h:]), np.sort(perm[:h])
    return Shard(kept), Shard(held)


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


def power_law_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Client shares proportional to ``rank ** -exponent`` (ranks shuffled over clients):
    ``exponent = 0`` is equal shares; larger values give a few large and many small clients
    (quantity skew, e.g. Li, Diao, Chen and He, 2022, "Federated Learning on Non-IID Data
    Silos: An Experimental Study")."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(w / w.sum())


def power_law_sizes(total: int, n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """``total`` items split into ``n`` power-law sizes, each at least 1."""
    sizes = np.maximum(1, np.floor(power_law_weights(n, exponent, rng) * total)).astype(int)
    while sizes.sum() > total:  # the floors of 1 can overshoot: take from the largest
        sizes[np.argmax(sizes)] -= 1
    sizes[np.argmax(sizes)] += total - sizes.sum()
    return sizes


class LabelSplitOptions(Options):
    classes_per_client: int | None = Field(None, ge=1)
    overlap: float = Field(0.0, ge=0.0, lt=1.0)
    by: Literal["class", "group"] = "class"
    quantity_skew: float = Field(0.0, ge=0.0)
    divide: bool = False


@PARTITIONERS.register("label-split", help="each client holds its own classes (optional overlap)")
class LabelSplit(Partitioner):
    """Each client gets whole classes. Without ``classes-per-client`` the pool is split evenly
    and disjointly; with it, client ``i`` takes a window of that many classes starting at
    ``i * stride``, where ``stride = round(classes-per-client * (1 - overlap))``, so consecutive
    clients share a fraction ``overlap`` of their classes (the same examples, unless ``divide``:
    then windows wrap around the class order and a class's examples are divided among the
    clients holding it, as in the "#C = k" label skew of Li et al., 2022, for datasets with few
    classes such as RetinaMNIST). ``by = "group"`` orders classes by
    their natural group first (Omniglot: alphabet), so each hospital holds one alphabet or a
    part of one. ``quantity-skew`` (without ``classes-per-client``) gives client ``i`` a
    power-law share of the classes instead of an equal one (:func:`power_law_sizes`)."""

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
            if self.options.quantity_skew:
                sizes = power_law_sizes(len(order), n, self.options.quantity_skew, rng)
                return [_whole(source, c) for c in np.split(order, np.cumsum(sizes)[:-1])]
            return [_whole(source, chunk) for chunk in np.array_split(order, n)]
        if self.options.quantity_skew:
            raise FedmetaError(
                "partition.quantity-skew needs an even label split: remove "
                "partition.classes-per-client, or set quantity-skew = 0"
            )
        stride = max(1, round(cpc * (1.0 - self.options.overlap)))
        if self.options.divide:
            return self._divided(source, order, n, cpc, stride, rng)
        needed = stride * (n - 1) + cpc
        if needed > len(order):
            raise FedmetaError(
                f"partition.classes-per-client = {cpc} with overlap = {self.options.overlap} "
                f"needs {needed} train classes for {n} clients but the pool has {len(order)}; "
                f"lower classes-per-client, raise overlap, use fewer clients or set "
                f"partition.divide = true"
            )
        return [_whole(source, order[i * stride : i * stride + cpc]) for i in range(n)]

    @staticmethod
    def _divided(
        source: DataSource, order: np.ndarray, n: int, cpc: int, stride: int, rng
    ) -> list[Shard]:
        """Windows that wrap around the class order; a class's examples are divided among the
        clients that hold it, so no example is at two clients."""
        if cpc > len(order):
            raise FedmetaError(
                f"partition.classes-per-client = {cpc} but the train pool has {len(order)} "
                f"classes; lower classes-per-client"
            )
        holders: dict[int, list[int]] = {}
        for i in range(n):
            for j in range(cpc):
                holders.setdefault(int(order[(i * stride + j) % len(order)]), []).append(i)
        shards: list[dict[int, np.ndarray]] = [{} for _ in range(n)]
        for c, clients in holders.items():
            parts = np.array_split(rng.permutation(source.num_examples(c)), len(clients))
            for client, part in zip(clients, parts, strict=True):
                if len(part):
                    shards[client][c] = np.sort(part)
        return [Shard(s) for s in shards]


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
    quantity_skew: float = Field(0.0, ge=0.0)


@PARTITIONERS.register("iid", help="every class's examples spread uniformly over clients")
class IID(Partitioner):
    """Every class's examples are spread uniformly at random over the training clients; with
    ``quantity-skew``, in power-law proportions drawn once (:func:`power_law_weights`)."""

    Options = IIDOptions

    def split(self, source: DataSource, n: int, rng: np.random.Generator) -> list[Shard]:
        shares = power_law_weights(n, self.options.quantity_skew, rng)
        return _split_examples(source, n, rng, lambda r: shares)


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
    source: DataSource,
    partitioner: Partitioner,
    n_train: int,
    n_heldout: int,
    seed: int,
    heldout_split: str = "classes",
) -> Layout:
    """Partition ``source`` for ``n_train`` training and ``n_heldout`` held-out clients.

    The held-out split has its own random stream, so it depends only on the seed and
    ``n_heldout``: every partitioner, client count and partition setting of a study scores the
    same held-out hospitals. ``heldout_split = "examples"`` gives every held-out client all the
    held-out classes with their examples divided (new patients of known kinds, for datasets
    with few classes); the default gives each its own classes.
    """
    train = partitioner.split(source, n_train, rng_for(seed, Stream.PARTITION))
    rng = rng_for(seed, Stream.HELDOUT)
    if heldout_split == "examples":
        shards: list[dict[int, np.ndarray]] = [{} for _ in range(n_heldout)]
        for c in source.pool("heldout"):
            parts = np.array_split(rng.permutation(source.num_examples(int(c))), n_heldout)
            for shard, part in zip(shards, parts, strict=True):
                if len(part):
                    shard[int(c)] = np.sort(part)
        return Layout(tuple(train), tuple(Shard(s) for s in shards))
    heldout_pool = rng.permutation(source.pool("heldout"))
    if len(heldout_pool) < n_heldout:
        raise FedmetaError(
            f"the held-out pool has {len(heldout_pool)} classes for clients.heldout = "
            f"{n_heldout}; use fewer held-out clients"
        )
    heldout = [_whole(source, chunk) for chunk in np.array_split(heldout_pool, n_heldout)]
    return Layout(tuple(train), tuple(heldout))
