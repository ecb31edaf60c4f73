"""pFedMe: personalised federated learning with Moreau envelopes.

Dinh, Tran and Nguyen (2020), "Personalized Federated Learning with Moreau Envelopes", NeurIPS,
Algorithm 1. For a batch of the client's data, the personalised model ``theta`` approximately
solves ``min_theta f(theta) + lam / 2 * ||theta - w||^2`` (``inner_steps`` SGD steps of size
``inner_lr`` from ``w``); the local model then moves along the Moreau envelope's gradient
``lam * (w - theta)`` (the outer optimizer, SGD of step ``outer_lr`` in the paper). Here a batch
is one few-shot task (support and query pooled), so ``theta`` is the task-personalised model,
the same role as MAML's fast weights; the server's ``beta`` is the server strategy (FedAvg is
``beta = 1``).

A new client personalises by solving the same proximal problem on its support set with
``eval_inner_steps`` steps.

Settings (the authors' code ``CharlieDinh/pFedMe``, README commands for MNIST) against
fedmeta's defaults (:class:`PFedMeConfig`):

=====================  ============================  ==========================================
setting                paper's code                  fedmeta default (reason if different)
=====================  ============================  ==========================================
K (inner steps)        5                             5 (``inner-steps``)
lambda                 15 (MNIST), 20 (Synthetic)    15 (``lam``)
personal lr            0.1 (MNIST, convex)           0.1 (``inner-lr``)
eta (local lr)         SGD, 0.005                    SGD, ``outer-lr`` 0.005
R (local rounds)       20 mini-batches               20 (``local-steps``), a task each
beta (server)          1 (tuned: 2)                  the server strategy; FedAvg is beta = 1
inner L2 (mu)          0.001 in the solver           none
=====================  ============================  ==========================================
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedmeta.learners.base import LEARNERS, Learner, LearnerConfig, OuterOptimizer, Params
from fedmeta.tasks import Task


class PFedMeConfig(LearnerConfig):
    """pFedMe's options, with the defaults of the authors' MNIST runs (module table)."""

    lam: float = Field(15.0, gt=0)
    """pFedMe's ``lambda``: the strength of the Moreau-envelope regulariser."""
    local_steps: int = Field(20, ge=1)
    inner_steps: int = Field(5, ge=0)
    inner_lr: float = Field(0.1, ge=0)
    outer_lr: float = Field(0.005, gt=0)
    outer_optimizer: OuterOptimizer = "sgd"


@LEARNERS.register("pfedme", help="pFedMe (Dinh et al., 2020): Moreau-envelope personalisation")
class PFedMe(Learner):
    """Local steps along ``lam * (w - theta(w))`` with ``theta`` the proximal task solution."""

    Options = PFedMeConfig

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """``lam * (w - theta)`` for the task, and the pooled loss at ``theta``."""
        x, y = task.pooled()
        anchor = {k: v.detach() for k, v in params.items()}
        theta = self.inner_loop(
            params, x, y, self.cfg.inner_steps, self.cfg.inner_lr, False, anchor, self.cfg.lam
        )
        with torch.no_grad():
            loss = self.loss(theta, x, y).item()
        return {k: (self.cfg.lam * (anchor[k] - theta[k])).detach() for k in params}, loss

    @property
    def adapt_lam(self) -> float:
        """A new client personalises with the same proximal term (strength ``lam``)."""
        return self.cfg.lam
