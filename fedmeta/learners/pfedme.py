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
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedmeta.learners.base import LEARNERS, Learner, LearnerConfig, Params
from fedmeta.tasks import Task


class PFedMeConfig(LearnerConfig):
    lam: float = Field(15.0, gt=0)
    """pFedMe's ``lambda``: the strength of the Moreau-envelope regulariser."""


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
