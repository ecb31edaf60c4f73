"""MAML: model-agnostic meta-learning with second-order meta-gradients.

Finn, Abbeel and Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML. For each task, the meta-parameters ``w`` are adapted on the support set by
``inner_steps`` SGD steps of size ``inner_lr``; the meta-objective is the query loss at the
adapted parameters, averaged over the tasks of a meta-batch.

The machinery here is shared with first-order MAML (:mod:`fedmeta.learners.fomaml`), which only
flips :attr:`MAML.first_order`. A meta-batch runs as one stacked computation
(:meth:`MAML.batch_gradient`, :mod:`fedmeta.batched`), never with ``torch.func.vmap``, which
gives wrong second-order meta-gradients with batch-statistics BatchNorm (see
:mod:`fedmeta.models`). The per-task loop (:meth:`MAML.task_gradient`) is the reference path.

Settings, Omniglot 5-way 1-shot (paper: Finn et al., appendix A.1, and the authors' code
``cbfinn/maml``, ``main.py``) against fedmeta's defaults (:class:`LearnerConfig`):

=====================  ============================  ==========================================
setting                paper                         fedmeta default (reason if different)
=====================  ============================  ==========================================
inner lr (alpha)       0.4                           0.4
inner steps, training  1                             1
inner steps, test      3 (the code uses 10)          3
meta-batch             32 tasks                      4 tasks per local meta-step, times the
                                                     clients of a round (a hospital holds few
                                                     classes; 2-core clients)
outer optimiser        Adam, lr 0.001 (code default) Adam, lr 0.001, per client; reset each
                                                     round unless ``outer-state = "keep"``
                                                     (the server aggregates every round)
query per class        K (code)                      ``task.query`` (the scenario's)
=====================  ============================  ==========================================
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedmeta.batched import TaskStack, expand
from fedmeta.learners.base import LEARNERS, Learner, Params, sgd_step
from fedmeta.tasks import Task


@LEARNERS.register("maml", help="second-order MAML (Finn et al., 2017)")
class MAML(Learner):
    """Second-order MAML; set :attr:`first_order` in a subclass for FOMAML.

    The meta-gradient of one task is ``d/dw L_query(U(w))`` where ``U`` is ``inner_steps`` SGD
    steps on the support loss. With ``first_order = False`` it is differentiated through the
    inner loop exactly (``create_graph=True``); with ``first_order = True`` the inner gradients
    are treated as constants, so the meta-gradient is ``grad L_query`` evaluated at ``U(w)``.

    Attributes
    ----------
    first_order : bool
        Whether to drop the second-order terms (Finn et al., 2017, section 5.2).
    """

    first_order: ClassVar[bool] = False

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Meta-gradient and post-adaptation query loss for one task.

        Parameters
        ----------
        params : Params
            Leaf meta-parameters with ``requires_grad=True``.
        task : Task
            The episode: adapt on its support set, score on its query set.

        Returns
        -------
        tuple[Params, float]
            The detached gradient keyed like ``params`` and the query loss after adaptation.
        """
        fast = self.inner_loop(
            params,
            task.support_x,
            task.support_y,
            self.cfg.inner_steps,
            self.cfg.inner_lr,
            create_graph=not self.first_order,
        )
        if self.first_order:
            # Cut the graph: the gradient at the adapted point is the first-order meta-gradient.
            fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
            grads, query_loss = self.value_and_grad(fast, task.query_x, task.query_y)
        else:
            query_loss = self.loss(fast, task.query_x, task.query_y)
            grads = torch.autograd.grad(query_loss, tuple(params.values()))
        return dict(zip(params, grads, strict=True)), query_loss.item()

    def batch_gradient(self, params: Params, tasks: TaskStack) -> tuple[Params, dict[str, float]]:
        """:meth:`task_gradient`'s mean over stacked tasks, every task adapted at once.

        Each task adapts its own slice of ``expand(params)``; the gradient of the summed support
        losses with respect to the stack is every task's own inner gradient. Second order
        differentiates the mean query loss back to ``params`` through the stack; first order
        averages the query gradients at the adapted slices.
        """
        first_order = self.first_order
        fast = expand(params, tasks.size)
        if first_order:
            fast = {k: v.detach().clone().requires_grad_(True) for k, v in fast.items()}
        for _ in range(self.cfg.inner_steps):
            losses = self.stacked_losses(fast, tasks.support_x, tasks.support_y)
            grads = torch.autograd.grad(
                losses.sum(), tuple(fast.values()), create_graph=not first_order
            )
            fast = sgd_step(fast, grads, self.cfg.inner_lr)
            if first_order:
                fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
        query = self.stacked_losses(fast, tasks.query_x, tasks.query_y)
        if first_order:
            grads = torch.autograd.grad(query.sum(), tuple(fast.values()))
            grads = tuple(g.mean(0) for g in grads)
        else:
            grads = torch.autograd.grad(query.mean(), tuple(params.values()))
        return dict(zip(params, grads, strict=True)), {"train-loss": query.mean().item()}
