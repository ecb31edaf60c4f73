"""Task-batched forward passes: a meta-batch of tasks as one computation.

A meta-step of MAML-style learners runs the same network on ``T`` tasks, each with its own
(adapted) copy of the parameters and, with batch-statistics BatchNorm, its own normalisation
statistics. Looping over tasks in Python runs ``T`` times as many small operators; on a CPU most
of the time then goes to per-operator overhead, and on a GPU the device idles.

Here the ``T`` copies are stacked along a leading task axis and the network runs once:

* convolutions stack the tasks along channels, ``(N, T*C, H, W)``, and use ``groups=T``, so task
  ``t``'s filters only see task ``t``'s channels;
* BatchNorm with batch statistics on that layout normalises each channel over ``(N, H, W)``,
  which is exactly each task's own statistics (no ``vmap``: see :mod:`fedmeta.models`);
  GroupNorm uses ``T * groups`` groups; max-pooling acts on each channel alone;
* linear layers are batched matrix products, ``(T, N, D) @ (T, D, K)``;
* images run in channels-last memory order, which oneDNN's CPU convolutions prefer (measured by
  ``benchmarks/bench_core.py``: it took the batched meta-step from 0.95-1.13 to 0.69-0.95 of
  the plain loop's time).

Every task's loss depends only on its own slice of the stacked parameters, so the gradient of the
summed task losses with respect to the stack is every task's own gradient, and double backward
through it is every task's own second-order term. The math is the per-task loop's; only the
floating-point summation order differs. The per-task loop stays the reference path (and the
path of DP-SGD, whose per-example clipping needs it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmeta.tasks import LossFn, Task, n_way_of

Params = dict[str, Tensor]

_ELEMENTWISE = (nn.ReLU, nn.Identity)
_SPATIAL = (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm)
_POOL = (nn.MaxPool2d,)


@dataclass(frozen=True)
class TaskStack:
    """``T`` tasks of identical shapes, stacked along a leading task axis."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    n_way: int | None = None
    """The classes of every task (classification), or ``None`` (regression)."""

    @property
    def size(self) -> int:
        return self.support_x.shape[0]


def stack_tasks(tasks: list[Task]) -> TaskStack | None:
    """The tasks stacked, or ``None`` when their shapes or numbers of classes differ (then the
    per-task loop handles them)."""
    first = tasks[0]
    fields = ("support_x", "support_y", "query_x", "query_y")
    if any(getattr(t, f).shape != getattr(first, f).shape for t in tasks for f in fields):
        return None
    ways = {n_way_of(t) for t in tasks} if not first.support_y.is_floating_point() else {None}
    if len(ways) != 1:
        return None
    return TaskStack(*(torch.stack([getattr(t, f) for t in tasks]) for f in fields), ways.pop())


def supports(model: nn.Module) -> bool:
    """Whether :func:`forward_tasks` can run ``model`` (a ``features`` Sequential of the layer
    types below, then a linear ``head``)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or not isinstance(
        getattr(model, "head", None), nn.Linear
    ):
        return False
    for layer in features:
        if isinstance(layer, nn.BatchNorm2d) and layer.track_running_stats:
            return False
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            return False
        if not isinstance(layer, (*_ELEMENTWISE, *_SPATIAL, *_POOL, nn.Flatten, nn.Linear)):
            return False
    return True


def expand(params: Params, size: int) -> Params:
    """``size`` views of the shared ``params`` along a new leading task axis."""
    return {k: p.expand(size, *p.shape) for k, p in params.items()}


def _per_task(value: Tensor | None) -> Tensor | None:
    """A stacked ``(T, C, ...)`` parameter as ``(T*C, ...)``, matching channel-stacked layers."""
    return None if value is None else value.flatten(0, 1)


def linear_tasks(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x`` ``(T, N, D)`` through per-task ``weight`` ``(T, K, D)`` and ``bias`` ``(T, K)``."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def features_tasks(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """Per-task embeddings ``(T, N, D)`` of ``x`` ``(T, N, ...)`` under stacked ``params``
    (each ``(T, *shape)``, keyed like ``model``'s parameters), in the parameters' dtype."""
    t, n = x.shape[:2]
    stacked = x.dim() == 5  # channel-stacked image layout (N, T*C, H, W) until Flatten
    h = x
    if stacked:  # channels-last: faster CPU convolutions
        h = x.transpose(0, 1).reshape(n, t * x.shape[2], *x.shape[3:])
        h = h.contiguous(memory_format=torch.channels_last)
    for i, layer in enumerate(model.features):
        weight, bias = (params.get(f"features.{i}.{name}") for name in ("weight", "bias"))
        if isinstance(layer, _SPATIAL):
            w, b = _per_task(weight), _per_task(bias)
        if isinstance(layer, nn.Conv2d):
            h = F.conv2d(h, w, b, layer.stride, layer.padding, layer.dilation, groups=t)
        elif isinstance(layer, nn.BatchNorm2d):
            h = F.batch_norm(h, None, None, w, b, training=True, eps=layer.eps)
        elif isinstance(layer, nn.GroupNorm):
            h = F.group_norm(h, t * layer.num_groups, w, b, layer.eps)
        elif isinstance(layer, nn.Flatten):
            h = h.reshape(n, t, -1).transpose(0, 1) if stacked else h.flatten(2)
            stacked = False
        elif isinstance(layer, nn.Linear):
            h = linear_tasks(h, weight, bias)
        elif isinstance(layer, nn.MaxPool2d):
            h = layer(h)
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
    return h.to(next(iter(params.values())).dtype)


def forward_tasks(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """Per-task outputs ``(T, N, K)``: :func:`features_tasks` then the per-task head."""
    feats = features_tasks(model, params, x)
    return linear_tasks(feats, params["head.weight"], params["head.bias"])


def task_losses(loss_fn: LossFn, outputs: Tensor, targets: Tensor) -> Tensor:
    """Each task's mean loss, ``(T,)``."""
    return torch.stack([loss_fn(o, y) for o, y in zip(outputs, targets, strict=True)])
