"""Meta-SGD: MAML that also meta-learns a learning rate for every parameter entry.

Li, Zhou, Chen and Li (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv:1707.09835. The inner step is ``w - alpha * grad`` with ``alpha`` a tensor shaped like
``w`` (initialised to ``inner_lr``); the query loss after adaptation is differentiated with
respect to both ``w`` and ``alpha`` (second order). The rates are meta-parameters like any
other: they are sent, aggregated by the server strategy and used at evaluation.

The rates are learned for ``inner_steps`` steps, and Li et al. test with the single step they
train; so evaluation adapts for ``inner_steps`` steps too unless the scenario sets
``eval-inner-steps``.

Settings against fedmeta's defaults (Li et al. publish no code; the table is from the paper's
abstract and a port of MAML's code, ``foolyc/Meta-SGD``; the paper's appendix was not at hand):

=====================  ============================  ==========================================
setting                paper / port                  fedmeta default (reason if different)
=====================  ============================  ==========================================
inner steps            1 (train and test)            1, and evaluation uses the trained count
rate initialisation    uniform in [0.005, 0.1]       ``inner_lr`` (0.4) everywhere: MAML's
                       (not verified)                Omniglot rate, a known-good start
meta-batch             32 (port)                     4 per local meta-step (see MAML's table)
outer optimiser        Adam, lr 0.001 (port)         Adam, lr 0.001
=====================  ============================  ==========================================
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from fedmeta.learners.base import (
    LEARNERS,
    Learner,
    LearnerConfig,
    Params,
    loss_gradient,
    split_prefix,
)
from fedmeta.tasks import Task

LR = "meta-sgd-lr."
"""Prefix of the learned learning-rate tensors in the meta-parameters."""


def split(params: Params) -> tuple[Params, Params]:
    """``(weights, rates)``: the model's parameters and the learned rates (same keys)."""
    return split_prefix(params, LR)


class MetaSGDConfig(LearnerConfig):
    """Meta-SGD's options: ``eval_inner_steps`` defaults to ``inner_steps`` (``None``)."""

    eval_inner_steps: int | None = Field(None, ge=0)


@LEARNERS.register("meta-sgd", help="Meta-SGD (Li et al., 2017): MAML + learned per-entry rates")
class MetaSGD(Learner):
    """Second-order MAML with learned element-wise inner learning rates."""

    Options = MetaSGDConfig

    def init_params(self, model_params: Params) -> Params:
        rates = {LR + k: torch.full_like(v, self.cfg.inner_lr) for k, v in model_params.items()}
        return {**model_params, **rates}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        return super().forward(split(params)[0], x)

    def inner(self, params: Params, x: Tensor, y: Tensor, steps: int, create_graph: bool) -> Params:
        """``steps`` steps of ``w <- w - alpha * grad`` on ``(x, y)``; returns the adapted
        weights with the rates unchanged."""
        fast, rates = split(params)
        for _ in range(steps):
            grads = torch.autograd.grad(
                self.loss(fast, x, y), tuple(fast.values()), create_graph=create_graph
            )
            fast = {k: w - rates[k] * g for (k, w), g in zip(fast.items(), grads, strict=True)}
        return {**fast, **{LR + k: r for k, r in rates.items()}}

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Gradient of the query loss after adaptation, for weights and rates alike."""
        fast = self.inner(params, task.support_x, task.support_y, self.cfg.inner_steps, True)
        loss = self.loss(fast, task.query_x, task.query_y)
        return loss_gradient(loss, params), loss.item()

    def adapt(
        self,
        params: Params,
        x: Tensor,
        y: Tensor,
        steps: int | None = None,
        lr: float | None = None,
    ) -> Params:
        """Adaptation with the learned rates (``lr`` is ignored: the rates replace it), for the
        trained number of steps unless ``eval_inner_steps`` or ``steps`` says otherwise."""
        steps = self.eval_steps(steps)
        start = {k: v.detach().requires_grad_(not k.startswith(LR)) for k, v in params.items()}
        with torch.enable_grad():
            fast = self.inner(start, x, y, steps, create_graph=False)
        return {k: v.detach() for k, v in fast.items()}
