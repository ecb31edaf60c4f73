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
from fedmeta.learners.base import OUTER_OPTIMIZERS, Learner, Params
from fedmeta.tasks import Task, TaskBatchFn


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

    A fresh outer optimizer is created for each local update, as in the base class.
    """

    def adapted(self, params: Params, task: Task) -> tuple[Params, float]:
        """Adapt ``params`` to one task and report its pooled loss at the adapted weights.

        Parameters
        ----------
        params : Params
            Starting weights (not modified; treated as constants).
        task : Task
            The episode whose pooled examples are trained on.

        Returns
        -------
        tuple[Params, float]
            Detached adapted weights ``phi`` and the pooled loss at ``phi``.
        """
        x, y = pooled(task)
        start = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            fast = self.inner_loop(start, x, y, self.cfg.inner_steps, self.cfg.inner_lr, False)
        phi = {k: v.detach() for k, v in fast.items()}
        with torch.no_grad():
            loss = self.loss(phi, x, y).item()
        return phi, loss

    def local_update(
        self, params: Params, sample_tasks: TaskBatchFn
    ) -> tuple[Params, dict[str, float]]:
        """Run ``local_steps`` Reptile meta-steps from ``params``.

        Parameters
        ----------
        params : Params
            Global meta-parameters (not modified).
        sample_tasks : TaskBatchFn
            ``sample_tasks(n)`` returns ``n`` tasks of this client.

        Returns
        -------
        tuple[Params, dict[str, float]]
            Detached new parameters and ``{"train-loss": mean pooled loss after adaptation}``.
        """
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        opt = OUTER_OPTIMIZERS[self.cfg.outer_optimizer](leaves.values(), lr=self.cfg.outer_lr)
        total_loss = 0.0
        for _ in range(self.cfg.local_steps):
            tasks = sample_tasks(self.cfg.tasks_per_step)
            if not tasks:
                raise ValueError("Reptile needs at least one task per meta-step")
            phi_sum = {k: torch.zeros_like(v) for k, v in leaves.items()}
            step_loss = 0.0
            for task in tasks:
                phi, loss = self.adapted(leaves, task)
                for k, v in phi.items():
                    phi_sum[k].add_(v)
                step_loss += loss / len(tasks)
            for k, p in leaves.items():
                p.grad = p.detach() - phi_sum[k] / len(tasks)
            opt.step()
            total_loss += step_loss / self.cfg.local_steps
        return {k: v.detach() for k, v in leaves.items()}, {"train-loss": total_loss}
