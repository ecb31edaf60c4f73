"""MAML: model-agnostic meta-learning with second-order meta-gradients.

Finn, Abbeel and Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML. For each task, the meta-parameters ``w`` are adapted on the support set by
``inner_steps`` SGD steps of size ``inner_lr``; the meta-objective is the query loss at the
adapted parameters, averaged over the tasks of a meta-batch.

The machinery here is shared with first-order MAML (:mod:`fedmeta.learners.fomaml`), which only
flips :attr:`MAML.first_order`. Tasks are processed in a Python loop, never with
``torch.func.vmap``: vmap gives wrong second-order meta-gradients with batch-statistics
BatchNorm (see the module docstring of :mod:`fedmeta.models`). Each task's gradient is taken
with its own ``torch.autograd.grad`` call, so its graph is freed before the next task starts.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedmeta.learners.base import LEARNERS, Learner, Params
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
