"""Task batching (:mod:`fedmeta.batched`): the stacked meta-step equals the per-task loop.

The loop (:meth:`~fedmeta.learners.base.Learner.loop_gradient`) is the reference; it is itself
checked against finite differences in ``test_learners.py``. Batch-statistics BatchNorm is the
case that matters: ``torch.func.vmap`` gave wrong second-order meta-gradients there.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmeta.batched import forward_tasks, stack_tasks
from fedmeta.learners.base import Learner
from fedmeta.models import MLP, Conv4
from fedmeta.privacy.dpsgd import make_private
from fedmeta.privacy.options import PrivacyOptions
from fedmeta.tasks import Task
from tests.test_learners import class_task, leaves, linear_task, make

BATCHED = ["maml", "fomaml", "anil", "protonet"]
"""The learners with a task-batched meta-step."""


def conv_tasks(n: int = 4, n_way: int = 5, shot: int = 1, query: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [class_task(gen, (1, 28, 28), n_way, shot, query) for _ in range(n)]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("downsample", ["stride", "max-pool"])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("inner_steps", [1, 5])
@pytest.mark.parametrize("name", BATCHED)
def test_batched_meta_gradient_equals_the_loop_in_float64(name, inner_steps, norm, downsample):
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5, width=8, norm=norm, downsample=downsample).double()
    learner = make(name, model, inner_steps=inner_steps, inner_lr=0.4)
    params, tasks = leaves(model), conv_tasks()
    stack = learner.stack(tasks)
    assert stack is not None and stack.size == 4
    batched, batched_metrics = learner.batch_gradient(params, stack)
    loop, loop_metrics = learner.loop_gradient(params, tasks)
    assert max_difference(batched, loop) <= 1e-9
    assert batched_metrics["train-loss"] == pytest.approx(loop_metrics["train-loss"], abs=1e-12)
    # not trivially equal: the gradients are far from zero
    assert max(v.abs().max().item() for v in loop.values()) > 1e-3


def test_max_pool_blocks_embed_28x28_images_in_64_dimensions():
    """Vinyals et al.'s and Snell et al.'s embedding: 28 -> 14 -> 7 -> 3 -> 1, so 64 features
    (256 with stride-2 convolutions), and images under 16x16 are refused."""
    pooled = Conv4((1, 28, 28), 5, width=64, downsample="max-pool")
    strided = Conv4((1, 28, 28), 5, width=64)
    x = torch.randn(2, 1, 28, 28)
    assert pooled.features(x).shape == (2, 64) and pooled.feature_map == (64, 1, 1)
    assert strided.features(x).shape == (2, 256)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in pooled.modules()) == 4
    with pytest.raises(ValueError, match="model.downsample"):
        Conv4((1, 8, 8), 5, downsample="max-pool")


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_batched_regression_with_an_mlp_equals_the_loop(name):
    torch.manual_seed(0)
    model = MLP((3,), 1, hidden=(8, 8)).double()
    learner = make(name, model, loss_fn=F.mse_loss, inner_steps=3, inner_lr=0.05)
    gen = torch.Generator().manual_seed(3)
    tasks = [linear_task(gen) for _ in range(3)]
    params = leaves(model)
    batched, _ = learner.batch_gradient(params, learner.stack(tasks))
    loop, _ = learner.loop_gradient(params, tasks)
    assert max_difference(batched, loop) <= 1e-9


def test_stacked_forward_keeps_each_tasks_batchnorm_statistics():
    """Task t's outputs under the stack equal the model run on task t alone."""
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5, width=8, norm="batch").double()
    tasks = conv_tasks(n=3)
    # three different parameter sets, as after per-task adaptation
    per_task = [{k: v + 0.1 * torch.randn_like(v) for k, v in leaves(model).items()} for _ in tasks]
    stacked = {k: torch.stack([p[k] for p in per_task]) for k in per_task[0]}
    out = forward_tasks(model, stacked, stack_tasks(tasks).query_x)
    for t, (task, params) in enumerate(zip(tasks, per_task, strict=True)):
        alone = torch.func.functional_call(model, params, (task.query_x,))
        assert torch.allclose(out[t], alone, atol=1e-12, rtol=0)


def test_meta_gradient_batches_only_what_it_can():
    model = Conv4((1, 28, 28), 5, width=8).double()
    learner = make("maml", model, inner_steps=1)
    same = conv_tasks(n=2)
    assert learner.stack(same) is not None
    # different query sizes, or different numbers of classes: the loop runs
    assert learner.stack([*same, *conv_tasks(n=1, query=4)]) is None
    assert learner.stack([*same, *conv_tasks(n=1, n_way=4)]) is None
    assert make("maml", model, batch_tasks=False).stack(same) is None
    # a learner without a batched form (Reptile) always loops
    assert make("reptile", model).stack(same) is None
    # a model with layers the stacked forward does not know
    assert make("maml", torch.nn.Sequential(torch.nn.Linear(2, 2))).stack(same) is None


def test_meta_gradient_dispatches_to_the_batched_path(monkeypatch):
    model = Conv4((1, 28, 28), 5, width=8).double()
    learner = make("maml", model, inner_steps=1)
    calls = []
    original = Learner.loop_gradient

    def spy(self, params, tasks):
        calls.append(len(tasks))
        return original(self, params, tasks)

    monkeypatch.setattr(Learner, "loop_gradient", spy)
    learner.meta_gradient(leaves(model), conv_tasks(n=2))
    assert calls == []
    learner.meta_gradient(leaves(model), [*conv_tasks(n=1), *conv_tasks(n=1, query=4)])
    assert calls == [2]


def test_dp_sgd_always_takes_the_per_task_loop(monkeypatch):
    """Per-example clipping replaces each data gradient inside the loop, so DP-SGD never
    batches tasks."""
    model = MLP((4,), 3, hidden=(8,)).double()
    learner = make("fomaml", model, inner_steps=1)
    private = make_private(learner, PrivacyOptions(example_clipping_norm=1.0))

    def refuse(*_):
        raise AssertionError("DP-SGD must not batch tasks")

    monkeypatch.setattr(type(private), "batch_gradient", refuse)
    gen = torch.Generator().manual_seed(0)
    tasks: list[Task] = [class_task(gen, (4,), 3, 2, 2) for _ in range(2)]
    assert learner.stack(tasks) is not None
    grads, _ = private.meta_gradient(leaves(model), tasks)
    assert len(private.dp_tasks) == 2
    assert all(torch.isfinite(g).all() for g in grads.values())
