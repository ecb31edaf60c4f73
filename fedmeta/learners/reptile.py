"""Reptile: first-order meta-learning by moving towards task-adapted weights.

Nichol, Achiam and Schulman (2018), "On First-Order Meta-Learning Algorithms", arXiv:1803.02999,
Algorithm 2 (batched version). For each of a meta-batch of tasks, run ``inner_steps`` SGD steps
on the task from ``w`` to reach ``phi_i``; then move the meta-parameters towards the adapted
weights, ``w <- w + outer_lr * mean_i (phi_i - w)``.

Each inner step uses a *different* minibatch of the task (their section 5: the meta-learning
term of Reptile's update comes from the inner product of gradients on different minibatches;
with one batch repeated, Reptile is close to joint training, which on episodes with shuffled
labels learns nothing). Reptile has no support/query roles in training: the task's support and
query examples are pooled, and minibatch ``i`` holds the ``i``-th example of every class (an
``n_way``-example batch, the size of a 1-shot support set at evaluation), cycling when there
are more steps than examples per class. Regression tasks are cut into ``inner_steps`` chunks.
The inner optimizer is plain SGD (``inner_lr``), as at evaluation.

Settings, Omniglot 5-way 1-shot (the authors' code ``openai/supervised-reptile``: README,
``train.py``, ``reptile.py``) against fedmeta's defaults (:class:`ReptileConfig`):

=====================  ============================  ==========================================
setting                paper's code                  fedmeta default (reason if different)
=====================  ============================  ==========================================
outer step             SGD, step 1 decaying          SGD, ``outer-lr`` 1 (a constant; halve it
                       linearly to 0                 with ``outer-lr-halving``)
meta-batch             5 tasks                       5 (``tasks-per-step``)
inner optimiser        Adam (beta1 = 0), lr 0.001,   SGD, ``inner-lr`` 0.4: the optimiser of
                       moments kept across tasks     evaluation's adaptation, so training and
                                                     test adapt alike
inner iterations       5 of batch 10, train-shots    5 (``inner-steps``), each on one example
                       10                            per class (the scenario's shots + queries)
evaluation             50 iterations of batch 5      50 (``eval-inner-steps``) SGD steps on the
                                                     support set
=====================  ============================  ==========================================
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from fedmeta.learners.base import LEARNERS, Learner, LearnerConfig, OuterOptimizer, Params
from fedmeta.tasks import Task


class ReptileConfig(LearnerConfig):
    """Reptile's options, with the defaults of Nichol et al.'s Omniglot runs (module table)."""

    tasks_per_step: int = Field(5, ge=1)
    inner_steps: int = Field(5, ge=0)
    outer_lr: float = Field(1.0, gt=0)
    outer_optimizer: OuterOptimizer = "sgd"
    eval_inner_steps: int = Field(50, ge=0)


def minibatches(task: Task, steps: int) -> list[tuple[Tensor, Tensor]]:
    """``steps`` minibatches of the task's pooled examples (see the module docstring)."""
    x, y = task.pooled()
    if y.is_floating_point():  # regression: consecutive chunks
        chunks = torch.arange(len(x)).tensor_split(min(steps, len(x)))
        return [(x[c], y[c]) for c in (chunks[i % len(chunks)] for i in range(steps))]
    by_class = [torch.nonzero(y == c).flatten() for c in torch.unique(y)]
    shots = min(len(idx) for idx in by_class)
    out = []
    for i in range(steps):
        pick = torch.stack([idx[i % shots] for idx in by_class])
        out.append((x[pick], y[pick]))
    return out


@LEARNERS.register("reptile", help="Reptile (Nichol et al., 2018): move towards adapted weights")
class Reptile(Learner):
    """Batched Reptile.

    One local meta-step samples ``tasks_per_step`` tasks, adapts a copy of ``w`` to each
    (``inner_steps`` SGD steps of size ``inner_lr``, one per minibatch) and sets the meta-gradient
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

    Options = ReptileConfig
    supports_example_dp = True

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """The negated Reptile direction ``w - phi`` of one task, and the pooled loss at ``phi``.

        ``phi`` is ``params`` after one SGD step on each of :func:`minibatches`; the mean over
        a meta-batch is ``w - mean_i phi_i``.
        """
        fast = params
        for bx, by in minibatches(task, self.cfg.inner_steps):
            fast = self.inner_loop(fast, bx, by, 1, self.cfg.inner_lr, False)
        x, y = task.pooled()
        with torch.no_grad():
            loss = self.loss(fast, x, y).item()
        return {k: (params[k] - fast[k]).detach() for k in params}, loss
