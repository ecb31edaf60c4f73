"""Prototypical networks with a federated embedding.

Snell, Swersky and Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS. The
federated meta-parameters are the embedding (the model's ``features``); a class's prototype is
the mean embedding of its support examples and a query is scored by ``-||f(x) - c_k||^2``.

"Adaptation" computes the prototypes and writes them into the linear head, since
``-||f - c_k||^2 = 2 c_k . f - ||c_k||^2 - ||f||^2`` and the last term is the same for every
class: a head with weights ``2 c_k`` and biases ``-||c_k||^2`` gives the same softmax. So
evaluation, communication and aggregation need nothing special. Before adaptation the head is
zero (every class equally likely); the number of adaptation steps does not matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmeta.batched import TaskStack, expand, features_tasks, task_losses
from fedmeta.learners.base import HEAD, LEARNERS, Learner, Params, zero_head
from fedmeta.tasks import Task, n_way_of


def prototypes(feats: Tensor, y: Tensor, n_way: int) -> Tensor:
    """Mean embedding of each class ``0..n_way-1``."""
    sums = feats.new_zeros(n_way, feats.shape[1]).index_add(0, y, feats)
    counts = torch.bincount(y, minlength=n_way).to(feats.dtype).clamp_min(1)
    return sums / counts[:, None]


def squared_distances(feats: Tensor, protos: Tensor) -> Tensor:
    return ((feats[:, None, :] - protos[None, :, :]) ** 2).sum(-1)


@LEARNERS.register("protonet", help="ProtoNet (Snell et al., 2017): federated embedding")
class ProtoNet(Learner):
    """Metric-based meta-learning: only the embedding is trained; the head is set by adapt."""

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Gradient of the query cross-entropy of ``-squared distance`` logits (the head is
        unused, so its gradient is zero)."""
        protos = prototypes(self.features(params, task.support_x), task.support_y, n_way_of(task))
        logits = -squared_distances(self.features(params, task.query_x), protos)
        loss = F.cross_entropy(logits, task.query_y)
        grads = torch.autograd.grad(loss, tuple(params.values()), allow_unused=True)
        out = {
            k: torch.zeros_like(p) if g is None else g
            for (k, p), g in zip(params.items(), grads, strict=True)
        }
        return out, loss.item()

    def batch_gradient(self, params: Params, tasks: TaskStack) -> tuple[Params, dict[str, float]]:
        """:meth:`task_gradient`'s mean over stacked tasks: every task's prototypes at once."""
        shared = expand(params, tasks.size)
        support = features_tasks(self.model, shared, tasks.support_x)
        onehot = F.one_hot(tasks.support_y, tasks.n_way).to(support.dtype)
        counts = onehot.sum(1).clamp_min(1)
        protos = torch.bmm(onehot.transpose(1, 2), support) / counts[..., None]
        query = features_tasks(self.model, shared, tasks.query_x)
        logits = -((query[:, :, None, :] - protos[:, None, :, :]) ** 2).sum(-1)
        loss = task_losses(F.cross_entropy, logits, tasks.query_y).mean()
        grads = torch.autograd.grad(loss, tuple(params.values()), allow_unused=True)
        out = {
            k: torch.zeros_like(p) if g is None else g
            for (k, p), g in zip(params.items(), grads, strict=True)
        }
        return out, {"train-loss": loss.item()}

    def eval_start(self, params: Params, task: Task) -> Params:
        """A zero head: before the support set is seen, every class is equally likely."""
        return zero_head(params, n_way_of(task))

    def adapt(
        self,
        params: Params,
        x: Tensor,
        y: Tensor,
        steps: int | None = None,
        lr: float | None = None,
    ) -> Params:
        """Prototypes of the support set, written into the head (``steps``/``lr`` unused)."""
        with torch.no_grad():
            protos = prototypes(self.features(params, x), y, int(y.max()) + 1)
        return {
            **{k: v.detach() for k, v in params.items()},
            HEAD[0]: 2 * protos,
            HEAD[1]: -(protos**2).sum(-1),
        }
