"""Reptile: first-order meta-learning by moving towards task-adapted weights.

Nichol, Achiam and Schulman (2018), "On First-Order Meta-Learning Algorithms", arXiv:1803.02999,
Algorithm 2 (batched version). For each of a meta-batch of tasks, run ``inner_steps`` SGD steps
on the whole task from ``w`` to reach ``phi_i``; then move the meta-parameters towards the
adapted weights, ``w <- w + outer_lr * mean_i (phi_i - w)``.

Reptile has no separate support/query roles during training: it trains on the task's support
and query examples pooled into one batch. The inner optimizer here is plain SGD (``inner_lr``),
the same as the evaluation-time adaptation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedmeta.learners import LEARNERS
from fedmeta.learners.base import Learner, Params
from fedmeta.tasks import Task


def pooled(task: Task) -> tuple[Tensor, Tensor]:
    """The task's support and query examples concatenated into one batch.

    Parameters
    ----------
    task : Task
        One episode.

    Returns
    -------
    tuple[Tensor, Tensor]
        Features and targets, support first.
    """
    return (
        torch.cat([task.support_x, task.query_x]),
        torch.cat([task.support_y, task.query_y]),
    )


@LEARNERS.register("reptile", help="Reptile (Nichol et al., 2018): move towards adapted weights")
class Reptile(Learner):
    """Batched Reptile.

    One local meta-step samples ``tasks_per_step`` tasks, adapts a copy of ``w`` to each (pooled
    support + query, ``inner_steps`` SGD steps of size ``inner_lr``) and sets the meta-gradient
    to ``w - mean_i phi_i`` (the negated Reptile direction). The configured outer optimizer then
    takes one step on it:

    * ``outer_optimizer = "sgd"`` gives exactly ``w <- w + outer_lr * mean_i (phi_i - w)``,
      Reptile's update with step size ``outer_lr`` (``outer_lr = 1`` jumps to the mean of the
      adapted weights).
    * ``outer_optimizer = "adam"`` feeds ``-(mean_i phi_i - w)`` to ``torch.optim.Adam`` as the
      gradient; Nichol et al. note that ``phi - w`` can be treated as a gradient and given to an
      adaptive optimizer such as Adam. (Their Omniglot runs instead use Adam in the *inner* loop
      and SGD outside; here the inner loop is always SGD.)

    The outer loop is the base class's :meth:`~fedmeta.learners.base.Learner.local_update`
    (a fresh optimizer for each local update); only :meth:`task_gradient` is defined here.
    """

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """The negated Reptile direction ``w - phi`` of one task, and the pooled loss at ``phi``.

        ``phi`` is ``params`` after ``inner_steps`` SGD steps on the task's pooled support and
        query examples; the mean over a meta-batch is ``w - mean_i phi_i``.
        """
        x, y = pooled(task)
        fast = self.inner_loop(params, x, y, self.cfg.inner_steps, self.cfg.inner_lr, False)
        with torch.no_grad():
            loss = self.loss(fast, x, y).item()
        return {k: (params[k] - fast[k]).detach() for k in params}, loss
