"""Prototypical networks with a federated embedding.

Snell, Swersky and Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS. The
federated meta-parameters are the embedding (the model's ``features``); a class's prototype is
the mean embedding of its support examples and a query is scored by ``-||f(x) - c_k||^2``.

"Adaptation" computes the prototypes and writes them into the linear head, since
``-||f - c_k||^2 = 2 c_k . f - ||c_k||^2 - ||f||^2`` and the last term is the same for every
class: a head with weights ``2 c_k`` and biases ``-||c_k||^2`` gives the same softmax. So
communication and aggregation need nothing special. Before adaptation the head is zero (every
class equally likely); the number of adaptation steps does not matter.

Support and query are embedded in **one batch**, in training and in evaluation, as in the
authors' code: with batch-statistics BatchNorm the embedding of an example depends on its batch,
and a 1-shot support set alone would be a batch of ``n_way`` images. So evaluation adapts with
:meth:`ProtoNet.adapt_to` and scores with :meth:`ProtoNet.predict`, which both see the task's
support and query inputs (never the query labels).

Settings (paper section 3.1; the authors' code ``jakesnell/prototypical-networks``) against
fedmeta's defaults:

==================  ===============================  ========================================
setting             paper                            fedmeta default (reason if different)
==================  ===============================  ========================================
optimiser           Adam, lr 0.001                   Adam, lr 0.001
lr schedule         halved every 2000 episodes       none (a federated run's rounds are short;
                                                     set a server optimiser instead)
training ways       60 (Omniglot), 5 queries/class   ``task.train-way`` (default ``n-way``)
                                                     and ``task.query``; a hospital may hold
                                                     fewer than 60 classes
support and query   one embedding batch              one embedding batch
==================  ===============================  ========================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmeta.batched import TaskStack, expand, features_tasks, task_losses
from fedmeta.learners.base import HEAD, LEARNERS, Learner, Params, loss_gradient, zero_head
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

    any_way = True

    def joint_features(self, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        """Support and query embeddings from one batch (support first)."""
        feats = self.features(params, torch.cat([task.support_x, task.query_x]))
        return feats[: len(task.support_x)], feats[len(task.support_x) :]

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Gradient of the query cross-entropy of ``-squared distance`` logits (the head is
        unused, so its gradient is zero)."""
        support, query = self.joint_features(params, task)
        protos = prototypes(support, task.support_y, n_way_of(task))
        logits = -squared_distances(query, protos)
        loss = F.cross_entropy(logits, task.query_y)
        return loss_gradient(loss, params), loss.item()

    def batch_gradient(self, params: Params, tasks: TaskStack) -> tuple[Params, dict[str, float]]:
        """:meth:`task_gradient`'s mean over stacked tasks: every task's prototypes at once."""
        shared = expand(params, tasks.size)
        n_support = tasks.support_x.shape[1]
        joint = torch.cat([tasks.support_x, tasks.query_x], dim=1)
        feats = features_tasks(self.model, shared, joint)
        support, query = feats[:, :n_support], feats[:, n_support:]
        onehot = F.one_hot(tasks.support_y, tasks.n_way).to(support.dtype)
        counts = onehot.sum(1).clamp_min(1)
        protos = torch.bmm(onehot.transpose(1, 2), support) / counts[..., None]
        logits = -((query[:, :, None, :] - protos[:, None, :, :]) ** 2).sum(-1)
        loss = task_losses(F.cross_entropy, logits, tasks.query_y).mean()
        return loss_gradient(loss, params), {"train-loss": loss.item()}

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
        """Prototypes of the support set ``(x, y)`` embedded on its own, written into the head
        (``steps``/``lr`` unused). Evaluation uses :meth:`adapt_to`, which embeds the support
        set together with the query inputs."""
        with torch.no_grad():
            return self.with_prototypes(params, self.features(params, x), y)

    def with_prototypes(self, params: Params, support: Tensor, y: Tensor) -> Params:
        """``params`` with the head set from the prototypes of embedded ``support``."""
        protos = prototypes(support, y, int(y.max()) + 1)
        return {
            **{k: v.detach() for k, v in params.items()},
            HEAD[0]: 2 * protos,
            HEAD[1]: -(protos**2).sum(-1),
        }

    def adapt_to(self, params: Params, task: Task, steps: int | None = None) -> Params:
        """The head from prototypes of the support set, embedded in one batch with the query
        inputs (the query labels are not used)."""
        with torch.no_grad():
            support, _ = self.joint_features(params, task)
            return self.with_prototypes(params, support, task.support_y)

    def predict(self, params: Params, task: Task) -> Tensor:
        """Query logits from the joint support-and-query embedding and ``params``' head."""
        _, query = self.joint_features(params, task)
        return F.linear(query, params[HEAD[0]], params[HEAD[1]])

    def predict_pre_post(
        self, start: Params, task: Task, steps: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`Learner.predict_pre_post` from one embedding of the task instead of three:
        the head does not change the embedding, so the same numbers."""
        with torch.no_grad():
            support, query = self.joint_features(start, task)
            adapted = self.with_prototypes(start, support, task.support_y)
            return tuple(F.linear(query, p[HEAD[0]], p[HEAD[1]]) for p in (start, adapted))
