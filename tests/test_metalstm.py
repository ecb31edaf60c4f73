"""The Meta-Learner LSTM (Ravi & Larochelle, 2017): SGD as a special case, the meta-gradient
against finite differences, gradients to every meta-parameter, and learned adaptation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedmeta.evaluate import evaluate_tasks
from fedmeta.learners.metalstm import LSTM, preprocess, split
from fedmeta.models import MLP, Conv4
from fedmeta.tasks import CLASSIFICATION
from tests.test_learners import class_task, make


def setup(model, **cfg):
    learner = make("meta-lstm", model, **cfg)
    params = learner.init_params({k: v.detach().clone() for k, v in model.named_parameters()})
    return learner, params


def test_preprocessing_follows_andrychowicz():
    x = torch.tensor([2.0, -1e-3, 1e-6, -1e-6], dtype=torch.float64)
    out = preprocess(x)
    assert torch.allclose(out[0], torch.tensor([math.log(2.0) / 10, 1.0], dtype=torch.float64))
    assert torch.allclose(out[1], torch.tensor([math.log(1e-3) / 10, -1.0], dtype=torch.float64))
    assert torch.allclose(out[2], torch.tensor([-1.0, math.exp(10) * 1e-6], dtype=torch.float64))
    assert torch.allclose(out[3], torch.tensor([-1.0, -math.exp(10) * 1e-6], dtype=torch.float64))


def test_gates_fixed_to_lr_and_one_give_plain_sgd():
    """With the gates' weights zero, the input gate at ``lr`` and the forget gate at 1, the
    learned update is ``theta - lr * grad``: three steps equal three SGD steps."""
    torch.manual_seed(0)
    model = MLP((2,), 3, hidden=(8,)).double()
    learner, params = setup(model, inner_lr=0.3)
    lr = 0.3
    params[LSTM + "input.weight"] = torch.zeros_like(params[LSTM + "input.weight"])
    params[LSTM + "input.bias"] = torch.full_like(params[LSTM + "input.bias"], math.log(lr / 0.7))
    params[LSTM + "forget.weight"] = torch.zeros_like(params[LSTM + "forget.weight"])
    params[LSTM + "forget.bias"] = torch.full_like(params[LSTM + "forget.bias"], math.inf)
    t = class_task(torch.Generator().manual_seed(1), (2,), 3, 4, 1)
    adapted, _ = split(learner.adapt(params, t.support_x, t.support_y, steps=3))
    weights = {k: v.clone().requires_grad_(True) for k, v in split(params)[0].items()}
    sgd = learner.inner_loop(weights, t.support_x, t.support_y, 3, lr, create_graph=False)
    for k, v in sgd.items():
        assert torch.allclose(adapted[k], v.detach(), rtol=1e-12, atol=1e-14), k
    assert not torch.equal(adapted["head.weight"], params["head.weight"])


def query_loss(learner, params, tasks) -> float:
    with torch.no_grad():
        losses = []
        for t in tasks:
            fast = learner.adapt(params, t.support_x, t.support_y)
            losses.append(learner.loss(fast, t.query_x, t.query_y).item())
    return sum(losses) / len(losses)


def test_exact_meta_gradient_matches_finite_differences_and_first_order_does_not():
    torch.manual_seed(0)
    model = MLP((2,), 3, hidden=(6,)).double()
    learner, init = setup(model, inner_steps=2, first_order=False, inner_lr=0.3)
    fo_learner, _ = setup(model, inner_steps=2, inner_lr=0.3)
    gen = torch.Generator().manual_seed(2)
    tasks = [class_task(gen, (2,), 3, 2, 3) for _ in range(2)]
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    grads, metrics = learner.meta_gradient(params, tasks)
    fo_grads, _ = fo_learner.meta_gradient(params, tasks)
    assert metrics["train-loss"] == pytest.approx(query_loss(learner, init, tasks), rel=1e-12)
    eps, fo_far = 1e-6, False
    for _ in range(4):
        d = {k: torch.randn_like(v) for k, v in init.items()}
        j = [
            query_loss(learner, {k: v + s * eps * d[k] for k, v in init.items()}, tasks)
            for s in (1, -1)
        ]
        fd = (j[0] - j[1]) / (2 * eps)
        assert sum((grads[k] * d[k]).sum() for k in init).item() == pytest.approx(
            fd, rel=1e-6, abs=1e-10
        )
        first_order = sum((fo_grads[k] * d[k]).sum() for k in init).item()
        fo_far |= abs(first_order - fd) > 1e-3 * abs(fd)
    assert fo_far, "the check cannot tell the exact meta-gradient from the first-order one"


def test_gradients_reach_every_meta_parameter():
    torch.manual_seed(0)
    model = Conv4((1, 8, 8), 3, width=4, norm="batch").double()
    learner, init = setup(model, inner_steps=2)
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    tasks = [class_task(torch.Generator().manual_seed(3), (1, 8, 8), 3, 1, 2)]
    grads, _ = learner.meta_gradient(params, tasks)
    assert any(k.startswith(LSTM + "cell.") for k in grads)
    for k, g in grads.items():
        assert g.abs().sum() > 0, k


def test_meta_training_the_optimiser_lowers_the_query_loss_after_adaptation():
    """Adaptation with the learned optimiser lowers new tasks' query loss, more so after
    meta-training than from the untrained (SGD-like) optimiser."""
    torch.manual_seed(0)
    model = MLP((4,), 3, hidden=(16,)).double()
    learner, init = setup(model, inner_steps=3, outer_lr=3e-3, local_steps=100, tasks_per_step=4)
    gen = torch.Generator().manual_seed(4)
    trained, _ = learner.local_update(
        init, lambda n: [class_task(gen, (4,), 3, 2, 5) for _ in range(n)]
    )
    fresh = [class_task(gen, (4,), 3, 2, 10) for _ in range(20)]
    before = evaluate_tasks(learner, init, fresh, CLASSIFICATION)
    after = evaluate_tasks(learner, trained, fresh, CLASSIFICATION)
    mean = lambda out, key: sum(out[key]) / len(out[key])  # noqa: E731
    assert mean(after, "query-loss-post") < mean(after, "query-loss-pre") - 0.1
    assert mean(after, "query-loss-post") < mean(before, "query-loss-post")
    assert mean(after, "query-acc-post") > 0.55  # chance is 1/3
    assert F.cross_entropy(learner.predict(trained, fresh[0]), fresh[0].query_y).isfinite()


def test_evaluation_applies_the_trained_number_of_steps():
    torch.manual_seed(0)
    model = MLP((2,), 3, hidden=(4,)).double()
    t = class_task(torch.Generator().manual_seed(5), (2,), 3, 2, 2)
    learner, params = setup(model, inner_steps=2)
    default = learner.adapt(params, t.support_x, t.support_y)
    two = learner.adapt(params, t.support_x, t.support_y, steps=2)
    three = learner.adapt(params, t.support_x, t.support_y, steps=3)
    assert all(torch.equal(default[k], two[k]) for k in default)
    assert not torch.equal(default["head.weight"], three["head.weight"])
    learner4, _ = setup(model, inner_steps=2, eval_inner_steps=3)
    assert torch.equal(
        learner4.adapt(params, t.support_x, t.support_y)["head.weight"], three["head.weight"]
    )
