"""Non-IID knobs: quantity skew, divided label splits, per-client feature skew and label noise,
client dropout, natural per-hospital data (Heart Disease, RetinaMNIST) and `fedmeta partition`."""

from __future__ import annotations

import numpy as np
import pytest
import tomli_w
import torch

from fedmeta.experiment import build_experiment
from fedmeta.partition import power_law_sizes
from fedmeta.scenario import scenario_from_dict
from fedmeta.skew import ClientSkew, SkewOptions
from fedmeta.strategies import STRATEGIES
from fedmeta.tasks import Task
from runner.cli import run_cli
from server.roster import Roster
from server.strategies import build_strategy
from tests.conftest import data_root
from tests.test_partition import Toy, layout


def test_quantity_skew_gives_power_law_client_sizes():
    rng = np.random.default_rng(0)
    sizes = power_law_sizes(1000, 10, 1.5, rng)
    assert sizes.sum() == 1000 and sizes.min() >= 1
    assert sorted(sizes)[-1] > 10 * sorted(sizes)[0]
    even = layout(n_train=8)
    skewed = layout(n_train=8, **{"quantity-skew": 1.0})
    n_even = sorted(len(s.examples) for s in even.train)
    n_skew = sorted(len(s.examples) for s in skewed.train)
    assert sum(n_skew) == sum(n_even) == 48 and n_even[0] == n_even[-1]
    assert n_skew[-1] >= 3 * n_skew[0]
    iid = layout("iid", n_train=4, **{"quantity-skew": 2.0})
    totals = sorted(s.size for s in iid.train)
    assert sum(totals) == 48 * 10 and totals[-1] > 4 * totals[0]


def test_divided_label_split_wraps_and_never_duplicates_an_example():
    src = Toy(n_classes=17, n_examples=12, heldout=12)  # 5 train classes, as in RetinaMNIST
    opts = {"classes-per-client": 3, "overlap": 0.67, "divide": True}
    lay = layout(n_train=10, source=src, **opts)
    assert all(len(s.examples) == 3 for s in lay.train)
    for c in range(5):
        parts = [s.examples[c] for s in lay.train if c in s.examples]
        assert len(parts) == 6  # 10 clients x 3 classes / 5 classes
        every = np.concatenate(parts)
        assert len(every) == len(set(every.tolist())) == 12  # divided, not copied


def test_heldout_split_by_examples_gives_every_new_client_all_heldout_classes():
    spec_layout = layout(n_train=4, n_heldout=3)
    assert all(len(s.examples) == 4 for s in spec_layout.heldout)  # default: own classes
    from fedmeta.partition import PARTITIONERS, build_layout

    spec = PARTITIONERS.get("label-split")
    lay = build_layout(Toy(), spec(spec.Options()), 4, 3, 0, heldout_split="examples")
    held = Toy().pool("heldout").tolist()
    for c in held:
        every = np.concatenate([s.examples[c] for s in lay.heldout])
        assert sorted(every.tolist()) == list(range(10))
    assert all(sorted(s.examples) == held for s in lay.heldout)


def _task(n_way=3, shot=4, shape=(1, 8, 8)) -> Task:
    x = torch.rand(n_way * shot, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n_way).repeat_interleave(shot)
    return Task(x, y, x.clone(), y.clone(), classes=torch.arange(n_way))


def test_client_skew_is_drawn_once_per_client_and_transforms_features():
    opts = SkewOptions(rotation=30, contrast=0.5, blur=1.0, noise=0.2, label_noise=0.5)
    a = ClientSkew.draw(opts, np.random.default_rng([1, 4, 0]), heldout=False)
    b = ClientSkew.draw(opts, np.random.default_rng([1, 4, 0]), heldout=False)
    c = ClientSkew.draw(opts, np.random.default_rng([1, 4, 1]), heldout=False)
    assert a == b and a != c
    assert abs(a.angle) <= 30 and 0.5 <= a.contrast <= 1.5 and 0 <= a.noise_std <= 0.2
    task = _task()
    out = a(task, 3, np.random.default_rng(0))
    assert out.support_x.shape == task.support_x.shape
    assert not torch.allclose(out.support_x, task.support_x)
    held = ClientSkew.draw(opts, np.random.default_rng([1, 4, 0]), heldout=True)
    assert held.flip_prob == 0.0 and held.angle == a.angle  # same scanner, clean labels
    with pytest.raises(ValueError, match="image data"):
        ClientSkew(angle=10.0)(_task(shape=(5,)), 3, np.random.default_rng(0))


def test_label_noise_flips_the_expected_share_to_other_classes():
    y = torch.arange(5).repeat(2000)
    flipped = ClientSkew(flip_prob=0.3).labels(y, 5, np.random.default_rng(0))
    changed = flipped != y
    assert 0.28 < changed.float().mean().item() < 0.32
    assert flipped.min() >= 0 and flipped.max() < 5


def test_skew_reaches_the_sampler_and_stays_deterministic(tiny_raw):
    tiny_raw["skew"] = {"rotation": 45.0, "noise": 0.1, "label-noise": 0.4}
    exp = build_experiment(scenario_from_dict(tiny_raw))
    plain = build_experiment(scenario_from_dict({k: v for k, v in tiny_raw.items() if k != "skew"}))
    a, b = exp.eval_tasks(4)[0], plain.eval_tasks(4)[0]
    assert torch.equal(a.classes, b.classes) and torch.equal(a.support_y, b.support_y)
    assert not torch.allclose(a.support_x, b.support_x)
    again = build_experiment(scenario_from_dict(tiny_raw))
    assert exp is not again
    assert torch.equal(again.eval_tasks(4)[0].support_x, a.support_x)
    flips = sum(
        int((t.query_y != u.query_y).sum())
        for t, u in zip(
            exp.sampler(0).sample(np.random.default_rng(0), 20),
            plain.sampler(0).sample(np.random.default_rng(0), 20),
            strict=True,
        )
    )
    assert flips > 0  # training labels are noisy


def test_rotation_on_tabular_data_is_a_scenario_error(tiny_raw, tmp_path, capsys):
    tiny_raw["data"] = {"name": "sinusoid"}
    tiny_raw["task"] = {"n-way": 1, "k-shot": 5, "query": 5}
    tiny_raw["model"] = {"name": "mlp"}
    tiny_raw["skew"] = {"rotation": 10.0}
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_raw))
    assert run_cli(["validate", str(path)]) == 2
    assert "skew.rotation" in capsys.readouterr().err


def test_dropout_drops_the_expected_share_deterministically():
    strategy = build_strategy("fedavg", STRATEGIES.get("fedavg").Options())
    strategy.bind(Roster(pool=list(range(100))), 100, 0, 0.5, 7, set(), dropout=0.3)
    kept = [len(strategy.sample_train(r)) for r in range(1, 201)]
    assert 0.66 < np.mean(kept) / 50 < 0.74
    assert kept == [len(strategy.sample_train(r)) for r in range(1, 201)]
    strategy.bind(Roster(pool=[0, 1]), 2, 0, 0.5, 7, set(), dropout=0.99)
    assert all(len(strategy.sample_train(r)) == 1 for r in range(1, 20))  # at least one


@pytest.fixture
def shared_data(monkeypatch):
    root = data_root()
    if root is None or not (root / "heart_disease").is_dir():
        pytest.skip("../shared/data (heart_disease, medmnist) not found: set FEDMETA_DATA")
    monkeypatch.setenv("FEDMETA_DATA", str(root))
    return root


def test_heart_disease_leave_one_hospital_out(shared_data):
    from fedmeta.scenario import load_scenario

    counts = {"cleveland": (164, 139), "hungarian": (188, 106), "switzerland": (8, 115)}
    counts["va"] = (51, 149)
    for hospital, (healthy, sick) in counts.items():
        sc = load_scenario("scenarios/heart-loho.toml", [f"data.heldout={hospital}"])
        exp = build_experiment(sc, check_all=True)
        (held,) = exp.layout.heldout
        assert [len(v) for _, v in sorted(held.examples.items())] == [healthy, sick]
        train_classes = set().union(*(s.examples for s in exp.layout.train))
        assert not train_classes & set(held.examples)
        assert all(len(s.examples) == 2 for s in exp.layout.train)  # one hospital each
        task = exp.eval_tasks(3)[0]
        assert task.support_x.shape == (10, 13)
        assert task.support_y.tolist() == [0] * 5 + [1] * 5  # sorted: 0 healthy, 1 disease
        assert task.classes.tolist()[1] == task.classes.tolist()[0] + 1


def test_retinamnist_heldout_patients_and_label_split(shared_data):
    from fedmeta.scenario import load_scenario

    exp = build_experiment(load_scenario("scenarios/retinamnist-labelsplit.toml"), check_all=True)
    assert exp.source.feature_shape == (3, 28, 28)
    assert sum(exp.source.num_examples(c) for c in exp.source.pool("heldout")) == 400
    assert all(len(s.examples) == 3 for s in exp.layout.train)
    assert all(sorted(s.examples) == list(range(5, 10)) for s in exp.layout.heldout)


def test_partition_command_prints_and_plots(tmp_path, tiny_raw, capsys):
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_raw))
    out = tmp_path / "p.png"
    assert run_cli(["partition", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("training") >= 4 and printed.count("held-out") >= 2
    assert out.exists() and out.stat().st_size > 5000


def test_rotation_and_blur_are_geometric():
    from fedmeta.skew import gaussian_blur, rotate

    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6] = 1.0  # two pixels right of the centre
    r = rotate(x, 90.0)
    assert r.flatten().argmax().item() in (2 * 9 + 4, 6 * 9 + 4)  # now above or below it
    torch.testing.assert_close(rotate(x, 0.0), x)
    y = torch.zeros(1, 1, 15, 15)
    y[0, 0, 7, 7] = 1.0
    b = gaussian_blur(y, 1.0)
    assert b.sum().item() == pytest.approx(1.0, abs=1e-5) and b.max() < 0.5
    assert (
        b[0, 0, 7, 8] == pytest.approx(b[0, 0, 6, 7].item()) and b[0, 0, 7, 8] > b[0, 0, 7, 9] > 0
    )
