"""Partitioners, client roles and the episodic sampler."""

from __future__ import annotations

import numpy as np
import pytest

from fedmeta.data.base import DataSource
from fedmeta.episodes import EpisodeSampler
from fedmeta.errors import FedmetaError
from fedmeta.partition import PARTITIONERS, build_layout


class Toy(DataSource):
    """Class c, example i has the constant feature value ``1000 * c + i``."""

    feature_shape = (1, 2, 2)

    def __init__(self, n_classes=60, n_examples=10, heldout=12, groups=None):
        self.num_classes, self.n, self.h, self._groups = n_classes, n_examples, heldout, groups

    def pool(self, role):
        ids = np.arange(self.num_classes)
        return ids[: -self.h] if role == "train" else ids[-self.h :]

    def num_examples(self, c):
        return self.n

    def examples(self, c, idx):
        x = (1000.0 * c + np.asarray(idx, dtype=np.float32))[:, None, None, None]
        return np.broadcast_to(x, (len(idx), 1, 2, 2)).astype(np.float32), None

    def groups(self, role):
        if self._groups is None:
            return None
        pool = self.pool(role)
        return {f"g{g}": pool[pool % self._groups == g] for g in range(self._groups)}


def layout(name="label-split", n_train=8, n_heldout=4, seed=0, source=None, **opts):
    spec = PARTITIONERS.get(name)
    return build_layout(source or Toy(), spec(spec.Options(**opts)), n_train, n_heldout, seed)


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("label-split", {}),
        ("label-split", {"classes-per-client": 10, "overlap": 0.5}),
        ("dirichlet", {"alpha": 0.1}),
        ("iid", {}),
    ],
)
def test_heldout_classes_disjoint_from_every_training_client(name, opts):
    lay = layout(name, **opts)
    held = set().union(*(set(s.examples) for s in lay.heldout))
    assert held, "held-out clients must hold classes"
    for shard in lay.train:
        assert not held & set(shard.examples)
    # held-out clients are disjoint from each other and hold whole classes
    sizes = [len(s.examples) for s in lay.heldout]
    assert sum(sizes) == len(held) == 12
    assert all(len(v) == 10 for s in lay.heldout for v in s.examples.values())


def test_label_split_even_and_disjoint():
    lay = layout(n_train=8)
    sets = [set(s.examples) for s in lay.train]
    assert sum(len(s) for s in sets) == 48 == len(set().union(*sets))
    assert {len(s) for s in sets} == {6}


def test_label_split_overlap_shares_classes_between_neighbours():
    lay = layout(n_train=4, **{"classes-per-client": 8, "overlap": 0.5})
    a, b = set(lay.train[0].examples), set(lay.train[1].examples)
    assert len(a) == len(b) == 8 and len(a & b) == 4


def test_label_split_impossible_request_is_user_error():
    with pytest.raises(FedmetaError, match="classes-per-client"):
        layout(n_train=8, **{"classes-per-client": 10})


def test_label_split_by_group_keeps_groups_together():
    src = Toy(groups=4)
    lay = layout(n_train=4, source=src, by="group")
    for shard in lay.train:
        assert len({c % 4 for c in shard.examples}) == 1


def test_dirichlet_conserves_examples_and_small_alpha_is_skewed():
    for alpha, expect_skewed in ((0.05, True), (1000.0, False)):
        lay = layout("dirichlet", alpha=alpha)
        per_class = {}
        for s in lay.train:
            for c, idx in s.examples.items():
                per_class.setdefault(c, []).append(idx)
        for parts in per_class.values():
            allidx = np.concatenate(parts)
            assert sorted(allidx) == list(range(10))  # every example exactly once
        top_share = np.mean([max(len(p) for p in parts) / 10 for parts in per_class.values()])
        assert (top_share > 0.7) == expect_skewed, top_share


def test_partitions_are_deterministic_by_seed():
    a, b, c = layout(seed=1), layout(seed=1), layout(seed=2)
    assert [sorted(s.examples) for s in a.train] == [sorted(s.examples) for s in b.train]
    assert [sorted(s.examples) for s in a.train] != [sorted(s.examples) for s in c.train]


def test_sampler_shapes_and_label_remapping():
    lay = layout()
    shard = lay.train[0]
    sampler = EpisodeSampler(Toy(), shard, n_way=5, k_shot=2, query=3)
    task = sampler.sample_one(np.random.default_rng(0))
    assert task.support_x.shape == (10, 1, 2, 2) and task.query_x.shape == (15, 1, 2, 2)
    assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert task.query_y.tolist() == sorted([0, 1, 2, 3, 4] * 3)
    classes_s = (task.support_x[:, 0, 0, 0] // 1000).long()
    classes_q = (task.query_x[:, 0, 0, 0] // 1000).long()
    for label in range(5):  # one class per label, the same in support and query
        cs = set(classes_s[task.support_y == label].tolist())
        cq = set(classes_q[task.query_y == label].tolist())
        assert len(cs) == 1 and cs == cq and cs <= set(shard.examples)
    ids = (task.support_x[:, 0, 0, 0] % 1000).tolist() + (task.query_x[:, 0, 0, 0] % 1000).tolist()
    pairs = list(zip(classes_s.tolist() + classes_q.tolist(), ids, strict=True))
    assert len(set(pairs)) == len(pairs)  # support and query never share an example


def test_sampler_rejects_impossible_ways_and_shots():
    shard = layout().train[0]  # 6 classes x 10 examples
    with pytest.raises(FedmetaError, match="n-way = 7"):
        EpisodeSampler(Toy(), shard, n_way=7, k_shot=1, query=1)
    with pytest.raises(FedmetaError, match="k-shot \\+ query = 11"):
        EpisodeSampler(Toy(), shard, n_way=2, k_shot=5, query=6)
