"""The Relation Network (Sung et al., 2018): class maps, the MSE objective and its gradient,
adaptation after meta-training, and the scenario checks. Float64 where numbers are compared."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmeta.errors import FedmetaError
from fedmeta.evaluate import evaluate_tasks
from fedmeta.learners import LEARNERS
from fedmeta.learners.relationnet import CLASS_MAPS, RelationNet, class_maps
from fedmeta.models import MLP, Conv4
from fedmeta.scenario import scenario_from_dict
from fedmeta.tasks import CLASSIFICATION
from tests.test_learners import class_task, leaves, make


def conv_relation(norm: str = "batch") -> nn.Module:
    torch.manual_seed(0)
    return Conv4((1, 8, 8), 3, width=4, norm=norm, relation_module=True).double()


def objective(learner: RelationNet, params, tasks) -> float:
    """Sung et al.'s loss written out pair by pair: sigmoid(g([sum of support maps, query
    map])) against one-hot labels (a model without BatchNorm, so pairs are independent)."""
    model = learner.model
    total = 0.0
    with torch.no_grad():
        for t in tasks:
            f = functional_call_features(model, params)
            sup, qry = f(t.support_x), f(t.query_x)
            losses = []
            for q, y in zip(qry, t.query_y, strict=True):
                for c in range(3):
                    proto = sup[t.support_y == c].sum(0)
                    pair = torch.cat([proto, q])[None]
                    r = torch.sigmoid(
                        torch.func.functional_call(
                            model.relation, sub(params, "relation."), (pair,)
                        )
                    )
                    losses.append((r[0, 0] - float(c == int(y))) ** 2)
            total += torch.stack(losses).mean().item()
    return total / len(tasks)


def sub(params, prefix):
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def functional_call_features(model, params):
    def embed(x):
        flat = torch.func.functional_call(model.features, sub(params, "features."), (x,))
        return flat.view(len(x), *model.feature_map)

    return embed


def test_class_maps_sum_the_shots():
    maps = torch.arange(12.0).view(4, 3)
    y = torch.tensor([1, 0, 1, 0])
    assert torch.equal(class_maps(maps, y, 2), torch.stack([maps[1] + maps[3], maps[0] + maps[2]]))


def test_loss_and_meta_gradient_match_the_pairwise_definition_and_finite_differences():
    model = conv_relation(norm="none")
    learner = make("relationnet", model)
    gen = torch.Generator().manual_seed(1)
    tasks = [class_task(gen, (1, 8, 8), 3, 2, 2) for _ in range(2)]  # 2 shots: maps are summed
    params = leaves(model)
    grads, metrics = learner.meta_gradient(params, tasks)
    assert metrics["train-loss"] == pytest.approx(objective(learner, params, tasks), rel=1e-12)
    eps = 1e-6
    for _ in range(3):
        d = {k: torch.randn_like(v) for k, v in params.items()}
        j = [
            objective(learner, {k: v.detach() + s * eps * d[k] for k, v in params.items()}, tasks)
            for s in (1, -1)
        ]
        analytic = sum((grads[k] * d[k]).sum() for k in params).item()
        assert analytic == pytest.approx((j[0] - j[1]) / (2 * eps), rel=1e-6, abs=1e-10)


def test_gradients_reach_every_meta_parameter_but_the_unused_head():
    model = conv_relation()
    learner = make("relationnet", model)
    tasks = [class_task(torch.Generator().manual_seed(2), (1, 8, 8), 3, 1, 3)]
    grads, _ = learner.meta_gradient(leaves(model), tasks)
    for k, g in grads.items():
        if k.startswith("head."):
            assert not g.any(), k
        else:
            assert k.startswith(("features.", "relation.")) and g.abs().sum() > 0, k


def test_meta_training_makes_adaptation_lower_the_query_loss():
    """After meta-training on tasks of a family, embedding a new task's support set (the
    adaptation) scores its query set far better than chance."""
    torch.manual_seed(0)
    model = MLP((4,), 3, hidden=(16,), relation_module=True).double()
    learner = make("relationnet", model, outer_lr=1e-2, local_steps=150, tasks_per_step=4)
    gen = torch.Generator().manual_seed(3)
    params = leaves(model)
    trained, _ = learner.local_update(
        params, lambda n: [class_task(gen, (4,), 3, 1, 5) for _ in range(n)]
    )
    fresh = [class_task(gen, (4,), 3, 1, 10) for _ in range(20)]
    out = evaluate_tasks(learner, trained, fresh, CLASSIFICATION)
    pre, post = (sum(out[f"query-loss-{t}"]) / 20 for t in ("pre", "post"))
    assert pre == pytest.approx(torch.log(torch.tensor(3.0)).item())
    assert post < pre - 0.3
    assert sum(out["query-acc-post"]) / 20 > 0.55  # chance is 1/3
    assert sum(out["query-acc-pre"]) / 20 == pytest.approx(1 / 3)
    adapted = learner.adapt(trained, fresh[0].support_x, fresh[0].support_y)
    assert adapted[CLASS_MAPS].shape == (3, 16) and CLASS_MAPS not in trained


def test_k_way_of_the_support_set_sets_the_scores_width():
    model = conv_relation()
    learner = make("relationnet", model)
    task = class_task(torch.Generator().manual_seed(4), (1, 8, 8), 2, 1, 2)  # 2 of 3 ways
    adapted = learner.adapt(leaves(model), task.support_x, task.support_y)
    assert learner.predict(adapted, task).shape == (4, 2)
    assert F.cross_entropy(learner.predict(adapted, task), task.query_y).isfinite()


def test_the_learner_needs_the_models_relation_module(tiny_raw):
    with pytest.raises(ValueError, match="relation_module"):
        LEARNERS.get("relationnet")(Conv4((1, 8, 8), 3, width=4), F.cross_entropy, None)
    tiny_raw["learner"] = {"name": "relationnet"}
    with pytest.raises(FedmetaError, match=r"needs model\.relation-module = true") as info:
        scenario_from_dict(tiny_raw)
    assert "\n" not in str(info.value)
    tiny_raw["model"]["relation-module"] = True
    tiny_raw["task"]["train-way"] = 5
    sc = scenario_from_dict(tiny_raw)
    assert sc.model.options.relation_module and sc.task.train_way == 5
