"""FedAvg with fine-tuning: plain local training, personalised by adaptation at evaluation.

McMahan, Moore, Ramage, Hampson and Agüera y Arcas (2017), "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS. The client runs ordinary supervised training on
its own data; personalisation is the evaluation-time fine-tuning shared by every learner
(:meth:`~fedmeta.learners.base.Learner.adapt`), the "FedAvg + fine-tuning" baseline of the
personalised federated learning literature (e.g. Jiang, Konečný, Rush and Kannan, 2019,
"Improving Federated Learning Personalization via Model Agnostic Meta Learning").
"""

from __future__ import annotations

import torch

from fedmeta.learners import LEARNERS
from fedmeta.learners.base import Learner, Params
from fedmeta.learners.reptile import pooled
from fedmeta.tasks import Task


@LEARNERS.register("fedavg", help="FedAvg: local SGD on pooled episodes, fine-tune to evaluate")
class FedAvg(Learner):
    """Plain local training on the client's pooled data (no inner loop).

    The client's data are seen through its episodes: one local step samples ``tasks_per_step``
    tasks and takes one outer-optimizer step (``outer_optimizer``, ``outer_lr``) on the mean over
    those tasks of the supervised loss on each task's support and query examples pooled.

    Labels inside an episode are the positions ``0..n_way-1`` of its classes, so the ``n_way``
    head is trained on episode-relative labels: this is what "a pooled shard with an ``n_way``
    head" means here. The head learns no fixed class identities; what transfers is the feature
    extractor, and evaluation re-fits the head (and everything else) with
    :meth:`~fedmeta.learners.base.Learner.adapt` on each test task's support set.

    The step "optimizer on the gradient of the mean pooled loss" is exactly the base class's
    :meth:`~fedmeta.learners.base.Learner.local_update` with :meth:`meta_gradient` returning
    that gradient, so only :meth:`task_gradient` is defined here. Each task is its own batch
    (not one concatenated batch), so BatchNorm statistics are per task, as at evaluation.
    """

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Gradient of the supervised loss on the task's pooled support and query examples,
        and that loss (before the step)."""
        x, y = pooled(task)
        loss = self.loss(params, x, y)
        grads = torch.autograd.grad(loss, tuple(params.values()))
        return dict(zip(params, grads, strict=True)), loss.item()
