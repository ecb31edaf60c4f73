"""Per-FedAvg: personalised federated learning as MAML, first-order and Hessian-free.

Fallah, Mokhtari and Ozdaglar (2020), "Personalized Federated Learning with Theoretical
Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS. Each local step of Algorithm 1
computes a temporary model ``w' = w - alpha * grad f(w; D)`` and updates
``w <- w - beta * (I - alpha * H(w; D'')) grad f(w'; D')`` with independent batches ``D``,
``D'`` and ``D''``. Per-FedAvg (FO) drops the Hessian term; Per-FedAvg (HF) keeps it and
computes the Hessian-vector product exactly (the paper also allows a finite-difference
approximation; here it is double backprop). ``alpha`` is ``inner_lr``, ``beta`` is ``outer_lr``
(the paper's outer step is SGD), ``tau`` is ``local_steps``.

Batches: a local step draws ``D``, ``D'`` and ``D''`` as disjoint random batches of
``batch_size`` examples (default: a third of them) from one sampled task's examples, support
and query pooled (:func:`three_batches`). Per-FedAvg has no support/query roles; what it shares
with an episode is only the label set, so the three batches agree on what each label means.
So Per-FedAvg (FO) is not FOMAML (FOMAML adapts on the ``k``-shot support set and scores the
query set), and Per-FedAvg (HF) is not second-order MAML (its Hessian is taken on ``D''``, a
batch independent of the one the inner step descended). Both variants draw all three batches,
so with the same seed they share ``D`` and ``D'`` and differ exactly by ``alpha H(w; D'') g``.
With ``inner_steps = k > 1`` the temporary model takes ``k`` steps ``w_0 = w, ..., w_k`` on
``D`` and the HF gradient is ``(I - alpha H(w_0; D'')) ... (I - alpha H(w_{k-1}; D'')) grad
f(w_k; D')``.

Settings against fedmeta's defaults. The paper's experimental values (alpha, beta, batch sizes)
were not at hand and there is no official code; the pFedMe authors' reimplementation
(``CharlieDinh/pFedMe``) uses alpha 0.005-0.03 and beta 0.001-0.003 on MNIST:

=====================  ============================  ==========================================
setting                paper                         fedmeta default (reason if different)
=====================  ============================  ==========================================
outer step (beta)      SGD                           SGD, ``outer-lr`` 0.001 (not verified)
inner step (alpha)     SGD                           SGD, ``inner-lr`` 0.4 (MAML's Omniglot
                                                     rate; not verified)
batches D, D', D''     independent                   disjoint random thirds of a task
Hessian-vector product exact or finite difference    exact (double backprop)
=====================  ============================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from fedmeta.errors import FedmetaError
from fedmeta.learners.base import LEARNERS, Learner, LearnerConfig, OuterOptimizer, Params, sgd_step
from fedmeta.tasks import Task

Batch = tuple[Tensor, Tensor]


class PerFedAvgConfig(LearnerConfig):
    """Per-FedAvg's options: ``batch_size`` examples in each of ``D``, ``D'`` and ``D''``
    (``None``: a third of a task's pooled examples)."""

    batch_size: int | None = Field(None, ge=1)
    outer_optimizer: OuterOptimizer = "sgd"


def three_batches(task: Task, size: int | None) -> tuple[Batch, Batch, Batch]:
    """``D``, ``D'`` and ``D''``: disjoint random batches of ``size`` examples of ``task``
    (support and query pooled), drawn with torch's global generator, which the client seeds
    per round."""
    x, y = task.pooled()
    size = len(x) // 3 if size is None else size
    if size < 1 or 3 * size > len(x):
        raise ValueError(
            f"Per-FedAvg needs 3 disjoint batches of {size} examples but a task has {len(x)}; "
            f"set learner.batch-size to at most {len(x) // 3}"
        )
    order = torch.randperm(len(x), device=x.device)
    d, d1, d2 = order[: 3 * size].split(size)
    return (x[d], y[d]), (x[d1], y[d1]), (x[d2], y[d2])


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

    Options = PerFedAvgConfig
    hessian_free: ClassVar[bool] = False

    @classmethod
    def check_task(cls, options: PerFedAvgConfig, task) -> None:
        """Three disjoint batches must fit in one task's pooled examples."""
        pooled = task.n_way * (task.k_shot + task.query)
        if options.batch_size is not None and 3 * options.batch_size > pooled:
            raise FedmetaError(
                f"learner.batch-size = {options.batch_size} but a task has {pooled} examples "
                f"(n-way x (k-shot + query)) for 3 disjoint batches; set learner.batch-size to "
                f"at most {pooled // 3}"
            )

    supports_example_dp: ClassVar[bool] = True

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Per-FedAvg direction and the loss on ``D'`` at the temporary model, for one task.

        Parameters
        ----------
        params : Params
            Meta-parameters (treated as constants).
        task : Task
            The examples ``D``, ``D'`` and ``D''`` are drawn from (:func:`three_batches`).

        Returns
        -------
        tuple[Params, float]
            The detached direction keyed like ``params`` and the loss on ``D'`` at ``w'``.
        """
        (dx, dy), (qx, qy), (hx, hy) = three_batches(task, self.cfg.batch_size)
        alpha = self.cfg.inner_lr
        iterates = [{k: v.detach().requires_grad_(True) for k, v in params.items()}]
        for _ in range(self.cfg.inner_steps):
            w = iterates[-1]
            nxt = sgd_step(w, self.value_and_grad(w, dx, dy)[0], alpha)
            iterates.append({k: v.detach().requires_grad_(True) for k, v in nxt.items()})
        temp = iterates[-1]
        outer_grads, outer_loss = self.value_and_grad(temp, qx, qy)
        g = dict(zip(temp, outer_grads, strict=True))
        if self.hessian_free:

            def hessian_batch_loss(p: Params) -> Tensor:
                return self.loss(p, hx, hy)

            for w in reversed(iterates[:-1]):
                hv = hessian_vector_product(hessian_batch_loss, w, g)
                g = {k: g[k] - alpha * hv[k] for k in g}
        return g, outer_loss.item()


@LEARNERS.register("perfedavg-hf", help="Per-FedAvg, Hessian-free (exact Hessian-vector products)")
class PerFedAvgHF(PerFedAvgFO):
    """Per-FedAvg (HF): ``(I - alpha H(w; D'')) grad f(w'; D')`` with exact ``H v`` on a
    third batch ``D''``, independent of ``D`` and ``D'``."""

    hessian_free: ClassVar[bool] = True
    supports_example_dp: ClassVar[bool] = False  # its Hessian-vector products touch data too
