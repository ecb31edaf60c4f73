"""``backend.precision``: training clients' local updates under bfloat16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch

from fedmeta.errors import FedmetaError
from fedmeta.experiment import build_experiment
from fedmeta.scenario import scenario_from_dict

# the lowest cosine between a bfloat16 and a float32 meta-gradient allowed (Conv4-32, two
# 3-way tasks): ProtoNet's measured 0.997; MAML's and FOMAML's inner step at lr 0.4 amplify
# the rounding (0.92-0.94 measured)
FLOOR = {"protonet": 0.98, "maml": 0.85, "fomaml": 0.85}


def _meta_gradient(raw: dict, precision: str, name: str) -> tuple[dict, torch.Tensor]:
    raw = copy.deepcopy(raw)
    raw["backend"]["precision"] = precision
    raw["model"]["width"] = 32
    raw["learner"] = {"name": name, "inner-steps": 1, "tasks-per-step": 2}
    exp = build_experiment(scenario_from_dict(raw))
    params = {k: v.requires_grad_(True) for k, v in exp.initial_params().items()}
    with exp.training_precision():
        grads, metrics = exp.learner.meta_gradient(params, exp.train_sampler(0, 1)(2))
    assert metrics["train-loss"] > 0
    return grads, torch.cat([grads[k].flatten() for k in sorted(grads)])


@pytest.mark.parametrize("name", sorted(FLOOR))
def test_bfloat16_gradient_is_float32_deterministic_and_tracks_float32(tiny_raw, name):
    _, exact = _meta_gradient(tiny_raw, "float32", name)
    grads, mixed = _meta_gradient(tiny_raw, "bfloat16", name)
    _, again = _meta_gradient(tiny_raw, "bfloat16", name)
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert torch.equal(mixed, again)
    assert not torch.equal(mixed, exact)  # autocast did act
    cosine = torch.nn.functional.cosine_similarity(mixed, exact, dim=0)
    assert cosine > FLOOR[name], f"{name}: bfloat16 gradient off float32's (cosine {cosine:.4f})"


def test_float32_is_the_default_and_other_precisions_are_refused(tiny_raw):
    exp = build_experiment(scenario_from_dict(tiny_raw))
    assert exp.scenario.backend.precision == "float32"
    assert not exp.training_precision().fast_dtype == torch.float16
    tiny_raw["backend"]["precision"] = "float16"
    with pytest.raises(FedmetaError, match=r"backend\.precision"):
        scenario_from_dict(tiny_raw)
