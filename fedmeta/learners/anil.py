"""ANIL: MAML whose inner loop adapts only the head ("Almost No Inner Loop").

Raghu, Raghu, Bengio and Vinyals (2020), "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR. The inner loop takes ``inner_steps`` SGD steps
on the output layer only, with the support features computed once; the outer loop
differentiates the query loss through those steps (second order) with respect to every
parameter. Evaluation likewise adapts only the head.

Settings against fedmeta's defaults. Raghu et al.'s Omniglot experiments are 20-way; they take
MAML's hyper-parameters, which the authors' code sets per setting (checked there, not in the
ANIL paper's appendix):

=====================  ============================  ==========================================
setting                MAML's code, Omniglot         fedmeta default (reason if different)
=====================  ============================  ==========================================
inner lr, steps        5-way: 0.4, 1; 20-way: 0.1,   0.4, 1 (the 5-way values; scenarios set
                       5                             the 20-way ones)
meta-batch             5-way 32, 20-way 16           4 per local meta-step (see MAML's table)
outer optimiser        Adam, lr 0.001                Adam, lr 0.001
steps at test          10                            3 (``eval-inner-steps``)
=====================  ============================  ==========================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmeta.batched import TaskStack, expand, features_tasks, linear_tasks, task_losses
from fedmeta.learners.base import HEAD, LEARNERS, Learner, Params, sgd_step
from fedmeta.tasks import Task


@LEARNERS.register("anil", help="ANIL (Raghu et al., 2020): MAML adapting only the head")
class ANIL(Learner):
    """Second-order MAML with a head-only inner loop."""

    def adapt_head(
        self, params: Params, feats: Tensor, y: Tensor, steps: int, lr: float, create_graph: bool
    ) -> dict[str, Tensor]:
        """``steps`` SGD steps on the head from ``params``' head, on fixed features ``feats``."""
        head = {k: params[k] for k in HEAD}
        for _ in range(steps):
            loss = self.loss_fn(F.linear(feats, *head.values()), y)
            grads = torch.autograd.grad(loss, tuple(head.values()), create_graph=create_graph)
            head = sgd_step(head, grads, lr)
        return head

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Gradient of the query loss after head-only adaptation on the support set."""
        support = self.features(params, task.support_x)
        head = self.adapt_head(
            params, support, task.support_y, self.cfg.inner_steps, self.cfg.inner_lr, True
        )
        query = self.features(params, task.query_x)
        loss = self.loss_fn(F.linear(query, *head.values()), task.query_y)
        grads = torch.autograd.grad(loss, tuple(params.values()))
        return dict(zip(params, grads, strict=True)), loss.item()

    def batch_gradient(self, params: Params, tasks: TaskStack) -> tuple[Params, dict[str, float]]:
        """:meth:`task_gradient`'s mean over stacked tasks: one feature pass per split, and
        every task's head adapted at once on its slice of the stacked head."""
        shared = expand(params, tasks.size)
        support = features_tasks(self.model, shared, tasks.support_x)
        head = {k: shared[k] for k in HEAD}
        for _ in range(self.cfg.inner_steps):
            logits = linear_tasks(support, *head.values())
            losses = task_losses(self.loss_fn, logits, tasks.support_y)
            grads = torch.autograd.grad(losses.sum(), tuple(head.values()), create_graph=True)
            head = sgd_step(head, grads, self.cfg.inner_lr)
        query = features_tasks(self.model, shared, tasks.query_x)
        loss = task_losses(self.loss_fn, linear_tasks(query, *head.values()), tasks.query_y).mean()
        grads = torch.autograd.grad(loss, tuple(params.values()))
        return dict(zip(params, grads, strict=True)), {"train-loss": loss.item()}

    def adapt(
        self,
        params: Params,
        x: Tensor,
        y: Tensor,
        steps: int | None = None,
        lr: float | None = None,
    ) -> Params:
        """Head-only adaptation on the support set; the feature extractor is kept."""
        steps = self.eval_steps(steps)
        lr = self.cfg.inner_lr if lr is None else lr
        with torch.no_grad():
            feats = self.features(params, x)
        start = {k: v.detach() for k, v in params.items()}
        head = {k: start[k].clone().requires_grad_(True) for k in HEAD}
        with torch.enable_grad():
            head = self.adapt_head({**start, **head}, feats, y, steps, lr, False)
        return {**start, **{k: v.detach() for k, v in head.items()}}
