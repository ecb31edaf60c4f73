"""Property tests of the comparison learners: ANIL, Meta-SGD, ProtoNet, pFedMe, Ditto,
local-only, and FedProx's proximal term.

As in ``test_learners.py``: float64, and references coded independently of the learners.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedmeta.learners.base import HEAD, Learner, LocalContext, Params
from fedmeta.learners.ditto import PERSONAL
from fedmeta.learners.metasgd import LR
from fedmeta.learners.protonet import squared_distances
from fedmeta.models import MLP, Conv4
from tests.test_learners import (
    class_task,
    leaves,
    lin_grad,
    lin_sgd,
    linear_task,
    make,
    stream,
)


def directional_fd(objective, params: Params, d: Params, eps: float) -> float:
    plus = {k: v.detach() + eps * d[k] for k, v in params.items()}
    minus = {k: v.detach() - eps * d[k] for k, v in params.items()}
    return (objective(plus) - objective(minus)) / (2 * eps)


def tiny_setup(seed: int = 0, n_way: int = 3):
    torch.manual_seed(seed)
    model = MLP((2,), n_way, hidden=(6,)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    tasks = [class_task(gen, (2,), n_way, 2, 3) for _ in range(2)]
    return model, tasks


# -- ANIL ---------------------------------------------------------------------------------------
def anil_objective(model, params: Params, tasks, steps: int, lr: float) -> float:
    """Mean query loss after ``steps`` head-only SGD steps (values only)."""
    total = 0.0
    for t in tasks:
        body = {k: v for k, v in params.items() if not k.startswith("head.")}
        head = {k: params[k].detach().clone().requires_grad_(True) for k in HEAD}
        for _ in range(steps):
            out = functional_call(model, {**body, **head}, (t.support_x,))
            grads = torch.autograd.grad(F.cross_entropy(out, t.support_y), list(head.values()))
            head = {
                k: (v - lr * g).detach().requires_grad_(True)
                for (k, v), g in zip(head.items(), grads, strict=True)
            }
        with torch.no_grad():
            out = functional_call(model, {**body, **head}, (t.query_x,))
            total += F.cross_entropy(out, t.query_y).item()
    return total / len(tasks)


def test_anil_meta_gradient_matches_finite_differences():
    model, tasks = tiny_setup()
    params = leaves(model)
    steps, lr = 2, 0.5
    learner = make("anil", model, inner_steps=steps, inner_lr=lr)
    grads, metrics = learner.meta_gradient(params, tasks)
    assert metrics["train-loss"] == pytest.approx(
        anil_objective(model, params, tasks, steps, lr), rel=1e-12
    )
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        d = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
        fd = directional_fd(lambda p: anil_objective(model, p, tasks, steps, lr), params, d, 1e-6)
        analytic = sum((grads[k] * d[k]).sum() for k in params).item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_anil_adapts_only_the_head():
    model, tasks = tiny_setup()
    params = {k: v.detach() for k, v in model.named_parameters()}
    learner = make("anil", model, inner_lr=0.5, eval_inner_steps=5)
    t = tasks[0]
    adapted = learner.adapt(params, t.support_x, t.support_y)
    for k in params:
        assert torch.equal(adapted[k], params[k]) == (not k.startswith("head."))
    sx, sy = t.support_x, t.support_y
    assert learner.loss(adapted, sx, sy) < learner.loss(params, sx, sy)


# -- Meta-SGD -----------------------------------------------------------------------------------
def metasgd_objective(model, params: Params, tasks, steps: int) -> float:
    weights = {k: v for k, v in params.items() if not k.startswith(LR)}
    rates = {k: params[LR + k] for k in weights}
    total = 0.0
    for t in tasks:
        fast = {k: v.detach().clone().requires_grad_(True) for k, v in weights.items()}
        for _ in range(steps):
            out = functional_call(model, fast, (t.support_x,))
            grads = torch.autograd.grad(F.cross_entropy(out, t.support_y), list(fast.values()))
            fast = {
                k: (v - rates[k] * g).detach().requires_grad_(True)
                for (k, v), g in zip(fast.items(), grads, strict=True)
            }
        with torch.no_grad():
            total += F.cross_entropy(functional_call(model, fast, (t.query_x,)), t.query_y).item()
    return total / len(tasks)


def test_metasgd_rates_are_meta_parameters_and_gradients_match_finite_differences():
    model, tasks = tiny_setup()
    learner = make("meta-sgd", model, inner_steps=2, inner_lr=0.3)
    init = learner.init_params({k: v.detach() for k, v in model.named_parameters()})
    names = [k for k, _ in model.named_parameters()]
    assert sorted(init) == sorted(names + [LR + k for k in names])
    assert all(torch.all(init[LR + k] == 0.3) for k in names)
    gen = torch.Generator().manual_seed(6)
    # rates that differ per entry, so the test sees the element-wise product
    params = {
        k: (v + 0.1 * torch.rand(v.shape, generator=gen, dtype=v.dtype) if k.startswith(LR) else v)
        .clone()
        .requires_grad_(True)
        for k, v in init.items()
    }
    grads, _ = learner.meta_gradient(params, tasks)
    assert any(grads[LR + k].abs().sum() > 0 for k in names)
    for _ in range(3):
        d = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
        fd = directional_fd(lambda p: metasgd_objective(model, p, tasks, 2), params, d, 1e-6)
        analytic = sum((grads[k] * d[k]).sum() for k in params).item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_metasgd_with_uniform_rates_equals_maml():
    model, tasks = tiny_setup()
    mls = make("meta-sgd", model, inner_steps=2, inner_lr=0.3)
    params = {k: v.requires_grad_(True) for k, v in mls.init_params(leaves(model)).items()}
    got, _ = mls.meta_gradient(params, tasks)
    want, _ = make("maml", model, inner_steps=2, inner_lr=0.3).meta_gradient(leaves(model), tasks)
    for k, g in want.items():
        torch.testing.assert_close(got[k], g, rtol=1e-10, atol=1e-12)


# -- ProtoNet -----------------------------------------------------------------------------------
def test_protonet_head_from_prototypes_gives_the_distance_softmax():
    model, tasks = tiny_setup()
    learner = make("protonet", model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    t = tasks[0]
    adapted = learner.adapt(params, t.support_x, t.support_y)
    feats = learner.features(params, t.support_x)
    protos = torch.stack([feats[t.support_y == c].mean(0) for c in range(3)])
    q = learner.features(params, t.query_x)
    want = F.log_softmax(-squared_distances(q, protos), dim=-1)
    got = F.log_softmax(learner.forward(adapted, t.query_x), dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    start = learner.eval_start(params, t)
    assert learner.forward(start, t.query_x).abs().max() == 0  # chance before adaptation


def protonet_reference(model, p: Params, tasks, joint: bool = True) -> torch.Tensor:
    """Snell et al.'s loss, coded independently: support and query embedded in one batch (or,
    with ``joint=False``, in two)."""
    body = {k[len("features.") :]: v for k, v in p.items() if k.startswith("features.")}
    total = 0
    for t in tasks:
        if joint:
            f = functional_call(model.features, body, (torch.cat([t.support_x, t.query_x]),))
            fs, fq = f[: len(t.support_x)], f[len(t.support_x) :]
        else:
            fs = functional_call(model.features, body, (t.support_x,))
            fq = functional_call(model.features, body, (t.query_x,))
        n_way = int(t.support_y.max()) + 1
        protos = torch.stack([fs[t.support_y == c].mean(0) for c in range(n_way)])
        total = total + F.cross_entropy(-(torch.cdist(fq, protos) ** 2), t.query_y)
    return total / len(tasks)


@pytest.mark.parametrize("net", ["mlp", "conv4-batchnorm"])
def test_protonet_gradient_matches_a_reference_and_leaves_the_head_alone(net):
    if net == "mlp":
        model, tasks = tiny_setup()
    else:
        torch.manual_seed(0)
        model = Conv4((1, 28, 28), 3, width=8, norm="batch").double()
        gen = torch.Generator().manual_seed(2)
        tasks = [class_task(gen, (1, 28, 28), 3, 1, 4) for _ in range(2)]
    params = leaves(model)
    grads, loss = make("protonet", model).meta_gradient(params, tasks)
    body = [k for k in params if k.startswith("features.")]
    ref = protonet_reference(model, params, tasks)
    want = torch.autograd.grad(ref, [params[k] for k in body])
    for k, g in zip(body, want, strict=True):
        torch.testing.assert_close(grads[k], g, rtol=1e-8, atol=1e-10)
    assert all(not grads[k].any() for k in ("head.weight", "head.bias"))
    assert loss["train-loss"] == pytest.approx(ref.item(), rel=1e-10)
    if net == "conv4-batchnorm":  # with BatchNorm, one batch is not the same as two
        separate = protonet_reference(model, params, tasks, joint=False)
        assert abs(separate.item() - ref.item()) > 1e-4


def test_protonet_evaluation_embeds_support_and_query_in_one_batch():
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 3, width=8, norm="batch").double()
    task = class_task(torch.Generator().manual_seed(3), (1, 28, 28), 3, 1, 4)
    learner = make("protonet", model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    with torch.no_grad():
        logits = learner.predict(learner.adapt_to(params, task), task)
        feats = learner.features(params, torch.cat([task.support_x, task.query_x]))
        fs, fq = feats[:3], feats[3:]
        protos = torch.stack([fs[task.support_y == c].mean(0) for c in range(3)])
        want = F.log_softmax(-squared_distances(fq, protos), dim=-1)
    torch.testing.assert_close(F.log_softmax(logits, dim=-1), want, rtol=1e-10, atol=1e-10)
    start = learner.eval_start(params, task)
    assert learner.predict(start, task).abs().max() == 0  # chance before adaptation
    # evaluation's shortcut (one embedding for both) gives the generic path's numbers exactly
    pre, post = learner.predict_pre_post(start, task)
    generic = Learner.predict_pre_post(learner, start, task)
    assert torch.equal(pre, generic[0]) and torch.equal(post, generic[1])
    assert torch.equal(post, logits)


def test_metasgd_evaluates_with_the_trained_number_of_steps():
    model, tasks = tiny_setup()
    params = make("meta-sgd", model, inner_steps=2).init_params(
        {k: v.detach() for k, v in model.named_parameters()}
    )
    t = tasks[0]

    def adapted(**cfg) -> Params:
        return make("meta-sgd", model, inner_steps=2, **cfg).adapt(params, t.support_x, t.support_y)

    trained = adapted()
    explicit = make("meta-sgd", model, inner_steps=2).adapt(
        params, t.support_x, t.support_y, steps=2
    )
    three = adapted(eval_inner_steps=3)
    assert all(torch.equal(trained[k], explicit[k]) for k in trained)
    assert any(not torch.equal(trained[k], three[k]) for k in trained)


# -- pFedMe, Ditto, FedProx (proximal terms on a linear model, closed form) ---------------------
def prox_sgd(w, b, x, y, steps, lr, lam, w0, b0):
    for _ in range(steps):
        gw, gb = lin_grad(w, b, x, y)
        w, b = w - lr * (gw + lam * (w - w0)), b - lr * (gb + lam * (b - b0))
    return w, b


def test_pfedme_local_update_matches_closed_form():
    gen = torch.Generator().manual_seed(21)
    model = nn.Linear(3, 1).double()
    batches = [[linear_task(gen) for _ in range(2)] for _ in range(2)]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    lam, inner_lr, eta, k_steps = 2.0, 0.05, 0.1, 3
    learner = make(
        "pfedme",
        model,
        F.mse_loss,
        local_steps=2,
        tasks_per_step=2,
        inner_steps=k_steps,
        inner_lr=inner_lr,
        outer_lr=eta,
        outer_optimizer="sgd",
        lam=lam,
    )
    got, _ = learner.local_update(params, stream(batches))
    w, b = params["weight"], params["bias"]
    for batch in batches:
        gw = gb = 0
        for t in batch:
            x, y = torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y])
            tw, tb = prox_sgd(w, b, x, y, k_steps, inner_lr, lam, w, b)
            gw, gb = gw + lam * (w - tw) / 2, gb + lam * (b - tb) / 2
        w, b = w - eta * gw, b - eta * gb
    torch.testing.assert_close(got["weight"], w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["bias"], b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["pfedme", "ditto"])
def test_proximal_adaptation_matches_closed_form(name):
    gen = torch.Generator().manual_seed(22)
    model = nn.Linear(3, 1).double()
    t = linear_task(gen)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    learner = make(name, model, F.mse_loss, inner_lr=0.1, eval_inner_steps=4)
    lam = learner.cfg.lam
    got = learner.adapt(params, t.support_x, t.support_y)
    w0, b0 = params["weight"], params["bias"]
    w, b = prox_sgd(w0, b0, t.support_x, t.support_y, 4, 0.1, lam, w0, b0)
    torch.testing.assert_close(got["weight"], w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["bias"], b, rtol=1e-12, atol=1e-12)


def test_ditto_keeps_a_personal_model_in_the_client_state():
    gen = torch.Generator().manual_seed(23)
    model = nn.Linear(3, 1).double()
    batches = [[linear_task(gen)] for _ in range(4)]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    learner = make(
        "ditto",
        model,
        F.mse_loss,
        local_steps=2,
        tasks_per_step=1,
        inner_lr=0.05,
        outer_lr=0.1,
        outer_optimizer="sgd",
    )
    ctx = LocalContext()
    new_global, metrics = learner.local_update(params, stream(batches), ctx)
    # the global model is exactly FedAvg's local SGD on the first two batches
    w, b = params["weight"], params["bias"]
    for batch in batches[:2]:
        t = batch[0]
        x, y = torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y])
        w, b = lin_sgd(w, b, x, y, 1, 0.1)
    torch.testing.assert_close(new_global["weight"], w, rtol=1e-12, atol=1e-12)
    # the personal model: proximal SGD towards the received global model on the next two
    v, c = params["weight"], params["bias"]
    for batch in batches[2:]:
        t = batch[0]
        x, y = torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y])
        v, c = prox_sgd(v, c, x, y, 1, 0.05, learner.cfg.lam, params["weight"], params["bias"])
    torch.testing.assert_close(ctx.state[PERSONAL]["weight"], v, rtol=1e-12, atol=1e-12)
    assert "personal-train-loss" in metrics and math.isfinite(metrics["personal-train-loss"])
    # next round it continues from the stored personal model, not from the global one
    more = [[linear_task(gen)] for _ in range(4)]
    learner.local_update(new_global, stream(more), ctx)
    for batch in more[2:]:
        t = batch[0]
        x, y = torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y])
        anchor = new_global["weight"], new_global["bias"]
        v, c = prox_sgd(v, c, x, y, 1, 0.05, learner.cfg.lam, *anchor)
    torch.testing.assert_close(ctx.state[PERSONAL]["weight"], v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_fedprox_term_matches_closed_form(mu):
    gen = torch.Generator().manual_seed(24)
    model = nn.Linear(3, 1).double()
    batches = [[linear_task(gen)] for _ in range(3)]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    learner = make(
        "fedavg",
        model,
        F.mse_loss,
        local_steps=3,
        tasks_per_step=1,
        outer_lr=0.1,
        outer_optimizer="sgd",
    )
    got, _ = learner.local_update(params, stream(batches), LocalContext(proximal_mu=mu))
    w0, b0 = params["weight"], params["bias"]
    w, b = w0, b0
    for batch in batches:
        t = batch[0]
        x, y = torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y])
        w, b = prox_sgd(w, b, x, y, 1, 0.1, mu, w0, b0)
    torch.testing.assert_close(got["weight"], w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["bias"], b, rtol=1e-12, atol=1e-12)


def test_local_only_learns_nothing_from_clients_and_adapts_from_scratch():
    model, tasks = tiny_setup()
    params = {k: v.detach() for k, v in model.named_parameters()}
    learner = make("local-only", model, inner_lr=0.5, eval_inner_steps=10)
    new, metrics = learner.local_update(params, stream([tasks]))
    assert all(torch.equal(new[k], params[k]) for k in params) and metrics == {}
    t = tasks[0]
    adapted = learner.adapt(params, t.support_x, t.support_y)
    sx, sy = t.support_x, t.support_y
    assert learner.loss(adapted, sx, sy) < learner.loss(params, sx, sy)


def test_global_head_learners_build_one_output_per_training_class(tiny_raw):
    from fedmeta.experiment import build_experiment
    from fedmeta.scenario import scenario_from_dict

    for name, global_head in (("ditto", True), ("fedavg", True), ("protonet", False)):
        exp = build_experiment(scenario_from_dict(dict(tiny_raw, learner={"name": name})))
        n_train = len(exp.source.pool("train"))
        assert exp.initial_params()["head.bias"].shape == ((n_train,) if global_head else (3,))


@pytest.mark.parametrize("name", ["ditto", "pfedme", "maml", "meta-sgd", "protonet"])
def test_accuracy_by_steps_matches_a_direct_adaptation(name):
    """The accuracy-vs-steps curve uses the same adaptation as evaluation, for every count."""
    from fedmeta.evaluate import accuracy_by_steps, evaluate_tasks
    from fedmeta.tasks import CLASSIFICATION

    model, tasks = tiny_setup()
    learner = make(name, model, train_classes=np.arange(3), inner_lr=0.3)
    params = learner.init_params({k: v.detach() for k, v in model.named_parameters()})
    by_steps = accuracy_by_steps(learner, params, tasks, CLASSIFICATION, [0, 4])
    direct = evaluate_tasks(learner, params, tasks, CLASSIFICATION, steps=4)
    assert by_steps[4] == direct["query-acc-post"] and by_steps[0] == direct["query-acc-pre"]
