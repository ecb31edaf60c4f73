"""Per-FedAvg: personalised federated learning as MAML, first-order and Hessian-free.

Fallah, Mokhtari and Ozdaglar (2020), "Personalized Federated Learning with Theoretical
Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS. Each local step of Algorithm 1
computes a temporary model ``w' = w - alpha * grad f(w; D)`` and updates
``w <- w - beta * (I - alpha * H(w; D'')) grad f(w'; D')`` with independent batches ``D``,
``D'`` and ``D''``. Per-FedAvg (FO) drops the Hessian term; Per-FedAvg (HF) keeps it and
computes the Hessian-vector product exactly (the paper also allows a finite-difference
approximation; here it is double backprop). ``alpha`` is ``inner_lr``, ``beta`` is ``outer_lr``
(the paper's outer step is SGD), ``tau`` is ``local_steps``.

Mapping onto episodes: ``D`` is the task's support set and ``D'`` its query set. ``D''`` is the
support set again, i.e. the Hessian is that of the loss the inner step descended. With this
choice Per-FedAvg (HF) returns exactly the second-order MAML meta-gradient, computed with
Hessian-vector products instead of backprop through the inner loop. With ``inner_steps = k > 1``
the temporary model takes ``k`` steps ``w_0 = w, ..., w_k`` and the HF gradient is
``(I - alpha H(w_0)) ... (I - alpha H(w_{k-1})) grad f(w_k; D')``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from fedmeta.learners.base import LEARNERS, Learner, Params, sgd_step
from fedmeta.tasks import Task


def hessian_vector_product(
    loss_fn_of_params: Callable[[Params], Tensor], params: Params, vector: Params
) -> Params:
    """Exact Hessian-vector product ``H v`` by double backpropagation.

    Parameters
    ----------
    loss_fn_of_params : Callable[[Params], Tensor]
        Scalar loss as a function of the parameters.
    params : Params
        Point at which the Hessian is taken (not modified; treated as constants).
    vector : Params
        ``v``, keyed and shaped like ``params``.

    Returns
    -------
    Params
        Detached ``H v``: the gradient of ``<grad loss(params), v>`` with respect to ``params``.
    """
    point = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    with torch.enable_grad():
        loss = loss_fn_of_params(point)
        grads = torch.autograd.grad(loss, tuple(point.values()), create_graph=True)
        dot = sum((g * vector[k].detach()).sum() for k, g in zip(point, grads, strict=True))
        hv = torch.autograd.grad(dot, tuple(point.values()), allow_unused=True)
    return {
        k: torch.zeros_like(p) if h is None else h.detach()
        for (k, p), h in zip(point.items(), hv, strict=True)
    }


@LEARNERS.register("perfedavg-fo", help="Per-FedAvg, first-order (Fallah et al., 2020)")
class PerFedAvgFO(Learner):
    """Per-FedAvg (FO): the gradient on the query set at the temporary model.

    Attributes
    ----------
    hessian_free : bool
        Whether to apply the exact ``(I - alpha H)`` correction (Per-FedAvg HF).
    """

    hessian_free: ClassVar[bool] = False
    supports_example_dp: ClassVar[bool] = True

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Per-FedAvg direction and query loss at the temporary model for one task.

        Parameters
        ----------
        params : Params
            Meta-parameters (treated as constants).
        task : Task
            ``D`` = ``D''`` = support set, ``D'`` = query set.

        Returns
        -------
        tuple[Params, float]
            The detached direction keyed like ``params`` and the query loss at ``w'``.
        """
        alpha = self.cfg.inner_lr
        iterates = [{k: v.detach().requires_grad_(True) for k, v in params.items()}]
        for _ in range(self.cfg.inner_steps):
            w = iterates[-1]
            nxt = sgd_step(w, self.value_and_grad(w, task.support_x, task.support_y)[0], alpha)
            iterates.append({k: v.detach().requires_grad_(True) for k, v in nxt.items()})
        temp = iterates[-1]
        query_grads, query_loss = self.value_and_grad(temp, task.query_x, task.query_y)
        g = dict(zip(temp, query_grads, strict=True))
        if self.hessian_free:

            def support_fn(p: Params) -> Tensor:
                return self.loss(p, task.support_x, task.support_y)

            for w in reversed(iterates[:-1]):
                hv = hessian_vector_product(support_fn, w, g)
                g = {k: g[k] - alpha * hv[k] for k in g}
        return g, query_loss.item()


@LEARNERS.register("perfedavg-hf", help="Per-FedAvg, Hessian-free (exact Hessian-vector products)")
class PerFedAvgHF(PerFedAvgFO):
    """Per-FedAvg (HF): ``(I - alpha H(w; D'')) grad f(w'; D')`` with exact ``H v``.

    ``D''`` is the support set (see the module docstring), so this equals second-order MAML's
    meta-gradient up to floating-point rounding.
    """

    hessian_free: ClassVar[bool] = True
    supports_example_dp: ClassVar[bool] = False  # its Hessian-vector products touch data too
