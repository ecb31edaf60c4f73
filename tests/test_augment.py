"""Training-time augmentation: geometry of the distortions, only training episodes touched,
the same tasks with and without it, determinism, and one-line scenario errors."""

from __future__ import annotations

import numpy as np
import tomli_w
import torch

from fedmeta.augment import Augment, AugmentOptions, affine_matrices
from fedmeta.experiment import build_experiment
from fedmeta.scenario import scenario_from_dict
from runner.cli import run_cli


class Ones:
    """A stand-in generator whose uniform draws are all at their upper end."""

    def uniform(self, low, high, size):
        return np.full(size, float(high))


def test_a_full_shift_moves_the_image_by_that_many_pixels():
    x = torch.zeros(1, 1, 12, 12)
    x[0, 0, 3:6, 2:5] = 1.0
    moved = Augment(AugmentOptions(shift=2.0)).images(x, Ones())
    expect = torch.zeros_like(x)
    expect[0, 0, 5:8, 4:7] = 1.0  # two pixels down and two to the right
    torch.testing.assert_close(moved, expect, atol=1e-5, rtol=0)


def test_a_full_rotation_turns_the_image_and_no_distortion_is_the_identity():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6] = 1.0  # two pixels right of the centre
    turned = Augment(AugmentOptions(rotation=90.0)).images(x, Ones())
    assert turned.flatten().argmax().item() in (2 * 9 + 4, 6 * 9 + 4)  # above or below it
    same = Augment(AugmentOptions()).images(x, np.random.default_rng(0))
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)


def test_scale_and_shear_stay_within_their_ranges():
    def dets(**options):
        theta = affine_matrices(AugmentOptions(**options), 2000, (28, 28), np.random.default_rng(0))
        assert np.abs(theta[:, :, 2]).max() == 0  # no shift asked for
        return np.linalg.det(np.linalg.inv(theta[:, :, :2]))  # the forward map's area factor

    scale = dets(scale=0.2)  # scale_x * scale_y
    assert 0.64 - 1e-9 < scale.min() < 0.7 and 1.35 < scale.max() < 1.44 + 1e-9
    shear = dets(shear=0.3)  # 1 - shear_x * shear_y
    assert 0.91 - 1e-9 < shear.min() < 0.93 and 1.07 < shear.max() < 1.09 + 1e-9
    assert len({round(d, 6) for d in scale}) > 1900  # a fresh draw per image


def _augmented(tiny_raw):
    tiny_raw["augment"] = {"rotation": 10.0, "shift": 1.0, "scale": 0.1, "shear": 0.1}
    return build_experiment(scenario_from_dict(tiny_raw))


def test_only_training_episodes_are_distorted_and_the_tasks_stay_the_same(tiny_raw):
    plain = build_experiment(scenario_from_dict(tiny_raw))
    exp = _augmented(tiny_raw)
    a, b = exp.train_sampler(0, 1)(3), plain.train_sampler(0, 1)(3)
    for t, u in zip(a, b, strict=True):
        assert torch.equal(t.classes, u.classes) and torch.equal(t.query_y, u.query_y)
        assert t.support_x.shape == u.support_x.shape
        assert not torch.allclose(t.support_x, u.support_x)
        assert not torch.allclose(t.query_x, u.query_x)
    heldout = exp.n_clients - 1
    assert torch.equal(exp.eval_tasks(heldout)[0].query_x, plain.eval_tasks(heldout)[0].query_x)
    again = build_experiment(scenario_from_dict(tiny_raw))
    assert all(
        torch.equal(t.query_x, u.query_x)
        for t, u in zip(again.train_sampler(0, 1)(3), a, strict=True)
    )
    later = exp.train_sampler(0, 2)(3)  # another round: other tasks, other distortions
    assert not torch.equal(later[0].support_x, a[0].support_x)


def test_augment_on_tabular_data_or_a_huge_shift_is_one_line(tiny_raw, tmp_path, capsys):
    path = tmp_path / "s.toml"
    tiny_raw["augment"] = {"shift": 50.0}
    path.write_text(tomli_w.dumps(tiny_raw))
    assert run_cli(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "augment.shift = 50.0" in err and len(err.strip().splitlines()) == 1
    tiny_raw["data"] = {"name": "sinusoid"}
    tiny_raw["task"] = {"n-way": 1, "k-shot": 5, "query": 5}
    tiny_raw["model"] = {"name": "mlp"}
    tiny_raw["augment"] = {"rotation": 10.0}
    path.write_text(tomli_w.dumps(tiny_raw))
    assert run_cli(["validate", str(path)]) == 2
    assert "augment needs image data" in capsys.readouterr().err
    tiny_raw["augment"] = {"rotate": 10.0}
    path.write_text(tomli_w.dumps(tiny_raw))
    assert run_cli(["validate", str(path)]) == 2
    assert "augment.rotate" in capsys.readouterr().err
