"""FedAvg with fine-tuning: a global classifier trained by local SGD, fine-tuned at a new client.

McMahan, Moore, Ramage, Hampson and Agüera y Arcas (2017), "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS. The client runs ordinary supervised training on
its own data with one head over *all* training classes (global labels); a new client replaces
that head with a fresh ``n_way`` head and fine-tunes (:meth:`FedAvg.eval_start`, then the shared
:meth:`~fedmeta.learners.base.Learner.adapt`). This is the "FedAvg + fine-tuning" baseline of
personalised federated learning (Jiang, Konečný, Rush and Kannan, 2019, "Improving Federated
Learning Personalization via Model Agnostic Meta Learning") and the transfer-learning baseline of
few-shot learning (Chen, Liu, Kira, Wang and Huang, 2019, "A Closer Look at Few-shot
Classification", ICLR).

Settings against fedmeta's defaults (:class:`FedAvgConfig`): McMahan et al. train with SGD at
a rate searched per model and dataset, so there is no single paper value. fedmeta defaults to
SGD at 0.05, the rate of the FedAvg solver in Ditto's Fashion-MNIST script
(``litian96/ditto``); a new client fine-tunes its fresh head with ``eval-inner-steps`` SGD
steps of ``inner-lr``.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from fedmeta.learners.base import (
    LEARNERS,
    Learner,
    LearnerConfig,
    OuterOptimizer,
    Params,
    zero_head,
)
from fedmeta.tasks import LossFn, Task, n_way_of


class FedAvgConfig(LearnerConfig):
    """FedAvg's options: local SGD (McMahan et al.), at Ditto's Fashion-MNIST rate."""

    outer_lr: float = Field(0.05, gt=0)
    outer_optimizer: OuterOptimizer = "sgd"


@LEARNERS.register("fedavg", help="FedAvg: global classifier by local SGD, fine-tune to evaluate")
class FedAvg(Learner):
    """Plain local training of a classifier over the training pool's classes.

    The client's data are drawn through its episodes: one local step samples ``tasks_per_step``
    tasks and takes one outer-optimizer step (``outer_optimizer``, ``outer_lr``) on the mean over
    those tasks of the cross-entropy of each task's support and query examples pooled, with
    each example labelled by its *global* class (its row in the head), not its position in the
    episode. For regression sources, targets are used as they are.

    The step "optimizer on the gradient of the mean pooled loss" is exactly the base class's
    :meth:`~fedmeta.learners.base.Learner.local_update` with :meth:`meta_gradient` returning
    that gradient, so only :meth:`task_gradient` is defined here. Each task is its own batch, so
    BatchNorm statistics are per task, as at evaluation.
    """

    Options = FedAvgConfig
    global_head = True
    supports_example_dp = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        cfg: LearnerConfig,
        train_classes: np.ndarray | None = None,
    ) -> None:
        super().__init__(model, loss_fn, cfg, train_classes)
        self._row: Tensor | None = None
        if train_classes is not None and len(train_classes):
            row = torch.full((int(train_classes.max()) + 1,), -1, dtype=torch.int64)
            row[torch.from_numpy(np.asarray(train_classes, dtype=np.int64))] = torch.arange(
                len(train_classes)
            )
            self._row = row

    def global_targets(self, task: Task, y: Tensor) -> Tensor:
        """Episode positions ``y`` of ``task`` mapped to rows of the global head."""
        if self._row is None or task.classes is None:
            raise ValueError("fedavg needs the training classes and each task's class ids")
        rows = self._row.to(y.device)[task.classes[y]]
        if bool((rows < 0).any()):
            raise ValueError("fedavg was given a task with classes outside the training pool")
        return rows

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Gradient of the supervised loss on the task's pooled support and query examples
        (global labels), and that loss before the step."""
        x, y = task.pooled()
        if not y.is_floating_point():
            y = self.global_targets(task, y)
        grads, loss = self.value_and_grad(params, x, y)
        return dict(zip(params, grads, strict=True)), loss.item()

    def eval_start(self, params: Params, task: Task) -> Params:
        """``params`` with the head replaced by a zero ``n_way`` head (all classes equally
        likely): the new client's classes have no rows in the global head. Regression
        tasks (float targets) keep their head."""
        if task.support_y.is_floating_point():
            return params
        return zero_head(params, n_way_of(task))
