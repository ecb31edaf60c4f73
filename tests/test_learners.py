"""Property tests of the local learners (MAML, FOMAML, Reptile, Per-FedAvg, FedAvg).

Numbers are compared in float64 (``.double()`` models and tasks; the global default dtype is never
changed). References are written independently of the learners: finite differences of a
separately coded meta-objective, or closed-form gradients of a linear model with MSE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fedmeta.learners import LEARNERS, Learner, Params
from fedmeta.learners.perfedavg import hessian_vector_product
from fedmeta.models import MLP, Conv4
from fedmeta.tasks import Task

ALL = LEARNERS.names()
"""Every registered learner: each property test below runs on all of them."""


# -- helpers ------------------------------------------------------------------------------------
def make(
    name: str, model: nn.Module, loss_fn=F.cross_entropy, train_classes=None, **cfg
) -> Learner:
    cls = LEARNERS.get(name)
    return cls(model, loss_fn, cls.Options(**cfg), train_classes=train_classes)


def leaves(model: nn.Module) -> Params:
    return {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}


def class_task(gen: torch.Generator, in_shape: tuple[int, ...], n_way: int, shot: int, query: int):
    """A float64 classification episode whose classes have different means."""
    means = 1.5 * torch.randn(n_way, *in_shape, generator=gen, dtype=torch.float64)

    def part(k: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n_way).repeat_interleave(k)
        return means[y] + torch.randn(len(y), *in_shape, generator=gen, dtype=torch.float64), y

    return Task(*part(shot), *part(query), classes=torch.arange(n_way))


def linear_task(gen: torch.Generator, n_support: int = 5, n_query: int = 4, d: int = 3) -> Task:
    w = torch.randn(1, d, generator=gen, dtype=torch.float64)

    def part(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        return x, x @ w.T + 0.1 * torch.randn(n, 1, generator=gen, dtype=torch.float64)

    return Task(*part(n_support), *part(n_query))


def lin_grad(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form gradient of ``mean((x w^T + b - y)^2)`` with respect to ``(w, b)``."""
    r = x @ w.T + b - y
    return 2.0 / len(x) * r.T @ x, 2.0 / len(x) * r.sum(0)


def lin_sgd(w: Tensor, b: Tensor, x: Tensor, y: Tensor, steps: int, lr: float):
    for _ in range(steps):
        gw, gb = lin_grad(w, b, x, y)
        w, b = w - lr * gw, b - lr * gb
    return w, b


def stream(batches: list[list[Task]]) -> Callable[[int], list[Task]]:
    """A ``sample_tasks`` that hands out ``batches`` in order and checks the requested size."""
    it: Iterator[list[Task]] = iter(batches)

    def sample(n: int) -> list[Task]:
        batch = next(it)
        assert n == len(batch)
        return batch

    return sample


def maml_objective(model, loss_fn, params: Params, tasks, steps: int, lr: float) -> float:
    """Mean post-adaptation query loss, coded independently of the learners (values only)."""
    total = 0.0
    for t in tasks:
        fast = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        for _ in range(steps):
            loss = loss_fn(functional_call(model, fast, (t.support_x,)), t.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {
                k: (v - lr * g).detach().requires_grad_(True)
                for (k, v), g in zip(fast.items(), grads, strict=True)
            }
        with torch.no_grad():
            total += loss_fn(functional_call(model, fast, (t.query_x,)), t.query_y).item()
    return total / len(tasks)


def flat(p: Params) -> Tensor:
    return torch.cat([v.reshape(-1) for v in p.values()])


# -- MAML ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build,in_shape",
    [
        (lambda: MLP((2,), 3, hidden=(8,)), (2,)),
        (lambda: Conv4((1, 8, 8), 3, width=4, norm="batch"), (1, 8, 8)),
    ],
    ids=["mlp", "conv4-batchnorm"],
)
def test_maml_meta_gradient_matches_finite_differences(build, in_shape):
    torch.manual_seed(0)
    model = build().double()
    gen = torch.Generator().manual_seed(1)
    tasks = [class_task(gen, in_shape, 3, 2, 3) for _ in range(2)]
    params = leaves(model)
    # BatchNorm over 1x1 maps makes the objective very curved: central differences need a small
    # step (eps = 1e-5 is off by ~1e-6 relative, 1e-7 by ~1e-10).
    steps, lr, eps = 2, 0.3, 1e-7
    grads, metrics = make("maml", model, inner_steps=steps, inner_lr=lr).meta_gradient(
        params, tasks
    )
    fo_grads, _ = make("fomaml", model, inner_steps=steps, inner_lr=lr).meta_gradient(params, tasks)
    assert metrics["train-loss"] == pytest.approx(
        maml_objective(model, F.cross_entropy, params, tasks, steps, lr), rel=1e-12
    )
    fo_far = False
    for _ in range(4):
        d = {k: torch.randn_like(v) for k, v in params.items()}
        shifted = [{k: v.detach() + s * eps * d[k] for k, v in params.items()} for s in (1, -1)]
        j_plus, j_minus = (
            maml_objective(model, F.cross_entropy, p, tasks, steps, lr) for p in shifted
        )
        fd = (j_plus - j_minus) / (2 * eps)
        analytic = sum((grads[k] * d[k]).sum() for k in params).item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)
        first_order = sum((fo_grads[k] * d[k]).sum() for k in params).item()
        fo_far |= abs(first_order - fd) > 1e-3 * abs(fd)
    assert fo_far, "the finite-difference check cannot tell first- from second-order"


def test_maml_meta_gradient_matches_closed_form_on_linear_model():
    """Linear MSE has a constant Hessian H_s, so the meta-gradient is (I - lr H_s)^k g_q."""
    gen = torch.Generator().manual_seed(2)
    model = nn.Linear(3, 1).double()
    tasks = [linear_task(gen) for _ in range(2)]
    params = leaves(model)
    lr, steps = 0.1, 2
    got, _ = make("maml", model, F.mse_loss, inner_steps=steps, inner_lr=lr).meta_gradient(
        params, tasks
    )
    w, b = params["weight"].detach(), params["bias"].detach()
    expected = torch.zeros(4, dtype=torch.float64)
    for t in tasks:
        xs = torch.cat([t.support_x, torch.ones(len(t.support_x), 1, dtype=torch.float64)], 1)
        h = 2.0 / len(xs) * xs.T @ xs
        gw, gb = lin_grad(*lin_sgd(w, b, t.support_x, t.support_y, steps, lr), t.query_x, t.query_y)
        m = torch.eye(4, dtype=torch.float64) - lr * h
        expected += m @ m @ torch.cat([gw.reshape(-1), gb]) / len(tasks)
    torch.testing.assert_close(flat(got), expected, rtol=1e-12, atol=1e-12)


def test_maml_training_lowers_post_adaptation_query_loss():
    """Sinusoids with a shared offset: 60 meta-steps halve the post-adaptation loss (seeds 0-5
    give ratios 0.49-0.59)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)

    def sinusoid() -> Task:
        amp = 0.5 + 2 * torch.rand(1, generator=gen)
        phase = math.pi * torch.rand(1, generator=gen)
        x = 10 * torch.rand(20, 1, generator=gen) - 5
        y = amp * torch.sin(x + phase) + 1.0
        return Task(x[:10], y[:10], x[10:], y[10:])

    model = MLP((1,), 1, hidden=(40, 40))
    learner = make(
        "maml",
        model,
        F.mse_loss,
        local_steps=60,
        tasks_per_step=5,
        inner_steps=1,
        inner_lr=0.01,
        outer_lr=1e-2,
        outer_optimizer="adam",
        eval_inner_steps=1,
    )
    heldout = [sinusoid() for _ in range(40)]

    def post_adaptation(p: Params) -> float:
        losses = [
            learner.loss(learner.adapt(p, t.support_x, t.support_y), t.query_x, t.query_y)
            for t in heldout
        ]
        return torch.stack(losses).mean().item()

    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    before = post_adaptation(params)
    trained, metrics = learner.local_update(params, lambda n: [sinusoid() for _ in range(n)])
    after = post_adaptation(trained)
    assert after < 0.75 * before
    assert math.isfinite(metrics["train-loss"])


# -- FOMAML -------------------------------------------------------------------------------------
def test_fomaml_meta_gradient_matches_closed_form():
    gen = torch.Generator().manual_seed(4)
    model = nn.Linear(3, 1).double()
    tasks = [linear_task(gen) for _ in range(2)]
    params = leaves(model)
    lr, steps = 0.1, 2
    got, metrics = make("fomaml", model, F.mse_loss, inner_steps=steps, inner_lr=lr).meta_gradient(
        params, tasks
    )
    w, b = params["weight"].detach(), params["bias"].detach()
    exp_w, exp_b, exp_loss = torch.zeros_like(w), torch.zeros_like(b), 0.0
    for t in tasks:
        aw, ab = lin_sgd(w, b, t.support_x, t.support_y, steps, lr)
        gw, gb = lin_grad(aw, ab, t.query_x, t.query_y)
        exp_w, exp_b = exp_w + gw / 2, exp_b + gb / 2
        exp_loss += ((t.query_x @ aw.T + ab - t.query_y) ** 2).mean().item() / 2
    torch.testing.assert_close(got["weight"], exp_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["bias"], exp_b, rtol=1e-12, atol=1e-12)
    assert metrics["train-loss"] == pytest.approx(exp_loss, rel=1e-12)


# -- Reptile ------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_reptile_local_update_matches_closed_form(optimizer):
    gen = torch.Generator().manual_seed(5)
    model = nn.Linear(3, 1).double()
    batches = [[linear_task(gen) for _ in range(2)] for _ in range(2)]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    lr, outer = 0.1, 0.5
    learner = make(
        "reptile",
        model,
        F.mse_loss,
        local_steps=2,
        tasks_per_step=2,
        inner_steps=2,
        inner_lr=lr,
        outer_lr=outer,
        outer_optimizer=optimizer,
    )
    got, _ = learner.local_update(params, stream(batches))
    w = params["weight"].clone().requires_grad_(True)
    b = params["bias"].clone().requires_grad_(True)
    adam = torch.optim.Adam([w, b], lr=outer)
    for batch in batches:
        phis = []
        for t in batch:
            x, y = torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y])
            # one SGD step on each half of the pooled examples (distinct minibatches)
            pw, pb = lin_sgd(w.detach(), b.detach(), x[:5], y[:5], 1, lr)
            phis.append(lin_sgd(pw, pb, x[5:], y[5:], 1, lr))
        mw = sum(p[0] for p in phis) / 2
        mb = sum(p[1] for p in phis) / 2
        if optimizer == "sgd":
            with torch.no_grad():
                w += outer * (mw - w)
                b += outer * (mb - b)
        else:
            w.grad, b.grad = (w - mw).detach(), (b - mb).detach()
            adam.step()
    torch.testing.assert_close(got["weight"], w.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["bias"], b.detach(), rtol=1e-12, atol=1e-12)


def test_reptile_minibatches_hold_one_example_per_class_and_cycle():
    from fedmeta.learners.reptile import minibatches

    t = class_task(torch.Generator().manual_seed(8), (2,), 3, 1, 2)  # 3 examples per class
    batches = minibatches(t, 5)
    assert len(batches) == 5
    x = torch.cat([t.support_x, t.query_x])
    seen = []
    for bx, by in batches:
        assert sorted(by.tolist()) == [0, 1, 2]
        seen.append({tuple(r.tolist()) for r in bx})
    assert seen[0] != seen[1] != seen[2] and seen[3] == seen[0]  # distinct, then cycle
    every = set().union(*seen[:3])
    assert every == {tuple(r.tolist()) for r in x}  # every pooled example used


# -- Per-FedAvg ---------------------------------------------------------------------------------
def explicit_hessian(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> Tensor:
    shapes = {k: v.shape for k, v in params.items()}

    def f(theta: Tensor) -> Tensor:
        p, i = {}, 0
        for k, s in shapes.items():
            p[k] = theta[i : i + s.numel()].reshape(s)
            i += s.numel()
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    return torch.autograd.functional.hessian(f, flat(params).detach())


def test_hessian_vector_product_matches_explicit_hessian():
    torch.manual_seed(0)
    model = MLP((2,), 3, hidden=(4,)).double()
    t = class_task(torch.Generator().manual_seed(6), (2,), 3, 3, 1)
    params = leaves(model)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    got = hessian_vector_product(
        lambda p: F.cross_entropy(functional_call(model, p, (t.support_x,)), t.support_y),
        params,
        v,
    )
    h = explicit_hessian(model, params, t.support_x, t.support_y)
    assert h.abs().max() > 1e-3
    torch.testing.assert_close(flat(got), h @ flat(v), rtol=1e-10, atol=1e-12)
    assert all(got[k].shape == params[k].shape for k in params)


def per_fedavg_reference(model, params: Params, task: Task, alpha: float, hf: bool) -> Params:
    """Fallah et al. (2020), Algorithm 1, one step's direction, written out explicitly: the
    three batches are drawn as the learner documents (same generator state), then
    ``w' = w - alpha grad f(w; D)``, ``g = grad f(w'; D')`` and for HF ``g - alpha H(w; D'') g``
    with an explicit Hessian matrix."""
    x, y = task.pooled()
    size = len(x) // 3
    order = torch.randperm(len(x))
    d, d1, d2 = (order[i * size : (i + 1) * size] for i in range(3))

    def loss(p: Params, idx: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (x[idx],)), y[idx])

    w = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad(loss(w, d), list(w.values()))
    temp = {
        k: (v - alpha * g).detach().requires_grad_(True)
        for (k, v), g in zip(w.items(), grads, strict=True)
    }
    outer = torch.autograd.grad(loss(temp, d1), list(temp.values()))
    g = flat(dict(zip(temp, outer, strict=True)))
    if hf:
        g = g - alpha * explicit_hessian(model, w, x[d2], y[d2]) @ g
    out, i = {}, 0
    for k, v in params.items():
        out[k] = g[i : i + v.numel()].reshape(v.shape)
        i += v.numel()
    return out


@pytest.mark.parametrize("name", ["perfedavg-fo", "perfedavg-hf"])
def test_perfedavg_matches_an_explicit_three_batch_reference(name):
    torch.manual_seed(0)
    model = MLP((2,), 3, hidden=(4,)).double()
    task = class_task(torch.Generator().manual_seed(7), (2,), 3, 2, 3)  # 15 examples: 3 x 5
    params, alpha = leaves(model), 0.2
    torch.manual_seed(11)
    got, _ = make(name, model, inner_steps=1, inner_lr=alpha).meta_gradient(params, [task])
    torch.manual_seed(11)
    want = per_fedavg_reference(model, params, task, alpha, hf=name.endswith("hf"))
    torch.testing.assert_close(flat(got), flat(want), rtol=1e-9, atol=1e-12)


def test_perfedavg_on_a_quadratic_matches_the_closed_form():
    """Linear regression with MSE: f(w; B) is quadratic with gradient ``2/n X^T (X w - y)`` and
    Hessian ``2/n X^T X`` (bias as a column of ones), so both variants have a closed form."""
    gen = torch.Generator().manual_seed(3)
    task = linear_task(gen, n_support=5, n_query=7)  # 12 examples: batches of 4
    model = nn.Linear(3, 1).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    alpha = 0.1
    x, y = task.pooled()
    xs = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    theta = torch.cat([params["weight"].detach().reshape(-1), params["bias"].detach()])
    torch.manual_seed(5)
    d, d1, d2 = torch.randperm(len(x))[:12].split(4)

    def grad(t: Tensor, idx: Tensor) -> Tensor:
        return 2.0 / len(idx) * xs[idx].T @ (xs[idx] @ t - y[idx, 0])

    g_fo = grad(theta - alpha * grad(theta, d), d1)
    hessian = 2.0 / len(d2) * xs[d2].T @ xs[d2]
    g_hf = g_fo - alpha * hessian @ g_fo
    for name, expected in (("perfedavg-fo", g_fo), ("perfedavg-hf", g_hf)):
        learner = make(name, model, loss_fn=F.mse_loss, inner_steps=1, inner_lr=alpha)
        torch.manual_seed(5)
        got, _ = learner.meta_gradient(params, [task])
        torch.testing.assert_close(flat(got), expected, rtol=1e-10, atol=1e-12)
    assert (g_fo - g_hf).abs().max() > 1e-4


def test_perfedavg_is_neither_maml_nor_fomaml():
    torch.manual_seed(0)
    model = MLP((2,), 3, hidden=(4,)).double()
    gen = torch.Generator().manual_seed(8)
    tasks = [class_task(gen, (2,), 3, 2, 3) for _ in range(2)]
    params = leaves(model)

    def direction(name: str) -> Tensor:
        torch.manual_seed(1)
        return flat(make(name, model, inner_steps=1, inner_lr=0.3).meta_gradient(params, tasks)[0])

    assert (direction("perfedavg-fo") - direction("fomaml")).abs().max() > 1e-4
    assert (direction("perfedavg-hf") - direction("maml")).abs().max() > 1e-4
    # the two variants share D and D' under one seed: they differ only by the Hessian term
    assert (direction("perfedavg-hf") - direction("perfedavg-fo")).abs().max() > 1e-6


def test_perfedavg_refuses_batches_larger_than_a_third_of_a_task():
    model = MLP((2,), 3, hidden=(4,)).double()
    task = class_task(torch.Generator().manual_seed(2), (2,), 3, 2, 3)  # 15 examples
    learner = make("perfedavg-fo", model, batch_size=6)
    with pytest.raises(ValueError, match="batch-size to at most 5"):
        learner.meta_gradient(leaves(model), [task])


# -- FedAvg -------------------------------------------------------------------------------------
def test_fedavg_local_update_matches_closed_form_sgd():
    gen = torch.Generator().manual_seed(9)
    model = nn.Linear(3, 1).double()
    batches = [[linear_task(gen) for _ in range(3)] for _ in range(2)]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    lr = 0.05
    learner = make(
        "fedavg",
        model,
        F.mse_loss,
        local_steps=2,
        tasks_per_step=3,
        outer_lr=lr,
        outer_optimizer="sgd",
    )
    got, _ = learner.local_update(params, stream(batches))
    w, b = params["weight"], params["bias"]
    for batch in batches:
        grads = [
            lin_grad(w, b, torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y]))
            for t in batch
        ]
        w = w - lr * sum(g[0] for g in grads) / 3
        b = b - lr * sum(g[1] for g in grads) / 3
    torch.testing.assert_close(got["weight"], w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["bias"], b, rtol=1e-12, atol=1e-12)


def test_fedavg_trains_a_global_head_on_global_labels():
    """Episode positions are mapped to the rows of the training classes in the global head."""
    torch.manual_seed(0)
    model = MLP((2,), 6, hidden=(5,)).double()
    train_classes = np.array([10, 20, 30, 40, 50, 60])
    learner = make("fedavg", model, train_classes=train_classes)
    task = class_task(torch.Generator().manual_seed(12), (2,), 2, 2, 3)
    task = Task(task.support_x, task.support_y, task.query_x, task.query_y, torch.tensor([50, 20]))
    params = leaves(model)
    got, loss = learner.task_gradient(params, task)
    x = torch.cat([task.support_x, task.query_x])
    rows = torch.tensor([4, 1])[torch.cat([task.support_y, task.query_y])]
    ref = F.cross_entropy(functional_call(model, params, (x,)), rows)
    want = torch.autograd.grad(ref, tuple(params.values()))
    for k, g in zip(params, want, strict=True):
        torch.testing.assert_close(got[k], g, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(ref.item())
    outside = Task(
        task.support_x, task.support_y, task.query_x, task.query_y, torch.tensor([5, 20])
    )
    with pytest.raises(ValueError, match="outside the training pool"):
        learner.task_gradient(params, outside)


def test_fedavg_new_client_starts_from_a_fresh_n_way_head():
    """At a new client the global head is replaced by a zero n-way head: before adaptation
    every class is equally likely; the feature extractor is kept; adaptation then learns."""
    from fedmeta.evaluate import evaluate_tasks
    from fedmeta.tasks import CLASSIFICATION

    torch.manual_seed(0)
    model = MLP((2,), 6, hidden=(8,))
    learner = make("fedavg", model, train_classes=np.arange(6), inner_lr=0.5, eval_inner_steps=20)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    t = class_task(torch.Generator().manual_seed(13), (2,), 3, 5, 5)
    t = Task(t.support_x.float(), t.support_y, t.query_x.float(), t.query_y, t.classes)
    start = learner.eval_start(params, t)
    assert start["head.weight"].shape == (3, 8) and not start["head.weight"].any()
    assert all(torch.equal(start[k], params[k]) for k in params if not k.startswith("head."))
    out = evaluate_tasks(learner, params, [t], CLASSIFICATION)
    assert out["query-loss-pre"][0] == pytest.approx(math.log(3))
    assert out["query-acc-pre"][0] == pytest.approx(1 / 3)
    assert out["query-loss-post"][0] != pytest.approx(math.log(3))
    adapted = learner.adapt(start, t.support_x, t.support_y)
    assert learner.loss(adapted, t.support_x, t.support_y).item() < math.log(3) - 0.5


# -- every learner ------------------------------------------------------------------------------
def test_every_learner_module_registers_a_described_learner():
    """One file per learner: every module of the package (but the base) registers at least
    one learner, and every learner has a one-line description and its options table."""
    import pkgutil

    import fedmeta.learners
    from fedmeta.learners.base import LearnerConfig

    modules = {m.name for m in pkgutil.iter_modules(fedmeta.learners.__path__)} - {"base"}
    registered = {LEARNERS.get(name).__module__.rpartition(".")[2] for name in ALL}
    assert modules <= registered
    assert all(LEARNERS.describe(name) for name in ALL)
    assert all(issubclass(LEARNERS.get(name).Options, LearnerConfig) for name in ALL)


@pytest.mark.parametrize("name", ALL)
def test_adaptation_lowers_support_loss(name):
    if name == "relationnet":
        pytest.skip(
            "an untrained relation module scores pairs at random; test_relationnet.py checks "
            "that adaptation lowers the query loss after meta-training"
        )
    torch.manual_seed(0)
    model = MLP((2,), 3, hidden=(8,), **LEARNERS.get(name).model_needs)
    t = class_task(torch.Generator().manual_seed(10), (2,), 3, 4, 1)
    sx, sy = t.support_x.float(), t.support_y
    learner = make(name, model, inner_lr=0.1, eval_inner_steps=3)
    params = learner.init_params({k: v.detach().clone() for k, v in model.named_parameters()})
    adapted = learner.adapt(params, sx, sy)
    assert learner.loss(adapted, sx, sy).item() < learner.loss(params, sx, sy).item() - 1e-2


@pytest.mark.parametrize("name", ALL)
def test_local_update_is_detached_and_does_not_mutate_input(name):
    torch.manual_seed(0)
    model = Conv4((1, 8, 8), 3, width=4, norm="batch", **LEARNERS.get(name).model_needs)
    gen = torch.Generator().manual_seed(11)
    calls: list[int] = []

    def sample(n: int) -> list[Task]:
        calls.append(n)
        return [class_task(gen, (1, 8, 8), 3, 1, 2) for _ in range(n)]

    def as_float(t: Task) -> Task:
        return Task(
            t.support_x.float(), t.support_y, t.query_x.float(), t.query_y, classes=t.classes
        )

    learner = make(
        name,
        model,
        train_classes=np.arange(3),
        local_steps=2,
        tasks_per_step=2,
        inner_steps=1,
        inner_lr=0.1,
        outer_lr=1e-2,
    )
    init = learner.init_params({k: v.detach() for k, v in model.named_parameters()})
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    snapshot = {k: v.detach().clone() for k, v in params.items()}
    new, metrics = learner.local_update(params, lambda n: [as_float(t) for t in sample(n)])
    assert calls == ([] if name == "local-only" else [2] * (4 if name == "ditto" else 2))
    assert list(new) == list(params)
    for k, v in new.items():
        assert v.shape == params[k].shape and v.dtype == params[k].dtype
        assert not v.requires_grad and v.grad_fn is None
        assert torch.equal(params[k], snapshot[k]) and params[k].grad is None
    if name == "local-only":  # learns nothing by design
        assert all(torch.equal(new[k], snapshot[k]) for k in new) and metrics == {}
        return
    assert any(not torch.equal(new[k], snapshot[k]) for k in new)
    assert "train-loss" in metrics and all(math.isfinite(v) for v in metrics.values())


# -- the outer optimizer's state: reset or kept per client --------------------------------------
def test_a_kept_outer_optimizer_continues_across_local_updates():
    """``outer-state = "keep"``: two local updates of one client (from two different global
    models) equal one Adam run through both, its moments carried over; ``"reset"`` starts the
    second from a fresh Adam, which gives a different update."""
    from fedmeta.learners.base import OUTER_STATE, LocalContext

    gen = torch.Generator().manual_seed(4)
    model = nn.Linear(3, 1).double()
    rounds = [[[linear_task(gen) for _ in range(2)] for _ in range(2)] for _ in range(2)]
    starts = [
        {k: v.detach().clone() + shift for k, v in model.named_parameters()} for shift in (0, 0.3)
    ]
    cfg = dict(local_steps=2, tasks_per_step=2, outer_lr=0.05, outer_optimizer="adam")

    def reference(carry: bool) -> list[Params]:
        leaves_ = {k: v.clone().requires_grad_(True) for k, v in starts[0].items()}
        opt, out = None, []
        for start, batches in zip(starts, rounds, strict=True):
            with torch.no_grad():
                for k, v in leaves_.items():
                    v.copy_(start[k])
            if opt is None or not carry:
                opt = torch.optim.Adam(leaves_.values(), lr=0.05)
            for batch in batches:
                grads = [lin_grad(leaves_["weight"], leaves_["bias"], *t.pooled()) for t in batch]
                leaves_["weight"].grad = (sum(g[0] for g in grads) / 2).detach()
                leaves_["bias"].grad = (sum(g[1] for g in grads) / 2).detach()
                opt.step()
            out.append({k: v.detach().clone() for k, v in leaves_.items()})
        return out

    results = {}
    for state, carry in (("keep", True), ("reset", False)):
        learner = make("fedavg", model, F.mse_loss, outer_state=state, **cfg)
        ctx = LocalContext()
        got = [
            learner.local_update(s, stream(b), ctx)[0] for s, b in zip(starts, rounds, strict=True)
        ]
        for g, r in zip(got, reference(carry), strict=True):
            torch.testing.assert_close(g["weight"], r["weight"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(g["bias"], r["bias"], rtol=1e-12, atol=1e-12)
        assert (OUTER_STATE in ctx.state) == (state == "keep")
        results[state] = got[1]["weight"]
    assert (results["keep"] - results["reset"]).abs().max() > 1e-6


def test_perfedavg_batch_size_is_checked_against_the_scenarios_tasks(tiny_raw):
    """Validation refuses batches that cannot fit three times in a task (one line, the key)."""
    from fedmeta.errors import FedmetaError
    from fedmeta.scenario import scenario_from_dict

    tiny_raw["learner"] = {"name": "perfedavg-hf", "batch-size": 4}  # 3-way 1-shot 2 query: 9
    with pytest.raises(FedmetaError, match="set learner.batch-size to at most 3") as err:
        scenario_from_dict(tiny_raw)
    assert "\n" not in str(err.value)
    tiny_raw["learner"]["batch-size"] = 3
    assert scenario_from_dict(tiny_raw).learner.options.batch_size == 3


def test_outer_lr_halves_every_n_rounds():
    """``outer-lr-halving = 2``: rounds 1-2 step with outer-lr, rounds 3-4 with half of it, 5
    with a quarter (SGD, so the step is exactly proportional to the rate)."""
    from fedmeta.learners.base import LocalContext

    gen = torch.Generator().manual_seed(5)
    model = nn.Linear(3, 1).double()
    batch = [linear_task(gen) for _ in range(2)]
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    learner = make(
        "fedavg",
        model,
        F.mse_loss,
        local_steps=1,
        tasks_per_step=2,
        outer_lr=0.1,
        outer_optimizer="sgd",
        outer_lr_halving=2,
    )
    steps = {
        rnd: learner.local_update(start, stream([batch]), LocalContext(server_round=rnd))[0][
            "weight"
        ]
        - start["weight"]
        for rnd in (1, 2, 3, 5)
    }
    assert steps[1].abs().sum() > 0 and torch.equal(steps[1], steps[2])
    torch.testing.assert_close(steps[3], steps[1] / 2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(steps[5], steps[1] / 4, rtol=1e-12, atol=1e-15)
    assert learner.cfg.outer_lr_at(0) == 0.1 and learner.cfg.outer_lr_at(4) == 0.05
