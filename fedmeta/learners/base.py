"""The learner interface shared by every local meta-learning algorithm.

A learner turns the global meta-parameters into a client's new parameters (``w + delta``) using
only that client's tasks, and provides the ``adapt`` step used at evaluation. Parameters are
handled functionally (``torch.func.functional_call``), so inner loops never mutate the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from fedmeta import batched
from fedmeta.batched import TaskStack
from fedmeta.options import Options
from fedmeta.registry import Registry
from fedmeta.tasks import LossFn, Task, TaskBatchFn

Params = dict[str, Tensor]

HEAD = ("head.weight", "head.bias")
"""The output layer's parameter names in every fedmeta model (``features`` then ``head``)."""

OUTER_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}

OUTER_STATE = "outer-optimizer"
"""The key of a client's kept outer-optimizer state in :attr:`LocalContext.state`."""


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """An optimizer's per-parameter state as flat tensors, ``"<index>.<name>"``."""
    return {
        f"{i}.{name}": torch.as_tensor(value).detach().clone()
        for i, per_param in opt.state_dict()["state"].items()
        for name, value in per_param.items()
    }


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Restore what :func:`optimizer_tensors` saved into a fresh optimizer of the same kind."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value.clone()
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


OuterOptimizer = Literal["adam", "sgd"]
"""The names of :data:`OUTER_OPTIMIZERS`, as an option type."""


class LearnerConfig(Options):
    """Hyper-parameters of a client's local update and of evaluation-time adaptation.

    Attributes
    ----------
    local_steps : int
        Meta-steps (outer updates) a client takes per round.
    tasks_per_step : int
        Tasks in one meta-batch.
    inner_steps : int
        Gradient steps on the support set inside one task during training.
    inner_lr : float
        Inner-loop (adaptation) learning rate.
    outer_lr : float
        Learning rate of the client's local outer optimizer.
    outer_lr_halving : int or None
        Halve ``outer_lr`` every this many server rounds, a step schedule (Snell et al. halve
        ProtoNet's rate every 2000 episodes); ``None`` keeps it constant.
    outer_optimizer : str
        ``"adam"`` or ``"sgd"``, the client's local outer optimizer.
    outer_state : str
        ``"reset"``: a fresh outer optimizer for every local update (a freshly reset Adam's
        first steps are roughly sign-SGD of size ``outer_lr``). ``"keep"``: each client keeps
        its optimizer's state (Adam's moments, SGD's momentum buffer) from one of its local
        updates to the next, on disk with the learner state (:mod:`fedmeta.client_state`),
        so a resumed run continues it.
    eval_inner_steps : int
        Adaptation steps at evaluation.
    batch_tasks : bool
        Compute a meta-batch's tasks as one stacked computation (:mod:`fedmeta.batched`) when
        the learner and model support it and the tasks have equal shapes; ``False`` keeps the
        per-task loop. Both give the same meta-gradient up to floating-point rounding.
    """

    local_steps: int = Field(5, ge=1)
    tasks_per_step: int = Field(4, ge=1)
    inner_steps: int = Field(1, ge=0)
    inner_lr: float = Field(0.4, ge=0)
    outer_lr: float = Field(1e-3, gt=0)
    outer_lr_halving: int | None = Field(None, ge=1)
    outer_optimizer: OuterOptimizer = "adam"
    outer_state: Literal["reset", "keep"] = "reset"
    eval_inner_steps: int = Field(3, ge=0)
    batch_tasks: bool = True

    def outer_lr_at(self, server_round: int) -> float:
        """The outer learning rate of a local update in ``server_round`` (rounds count from
        1): ``outer_lr``, halved every ``outer_lr_halving`` rounds."""
        if self.outer_lr_halving is None or server_round < 1:
            return self.outer_lr
        return self.outer_lr * 0.5 ** ((server_round - 1) // self.outer_lr_halving)


@dataclass
class LocalContext:
    """What a client's local update may use besides the global parameters and its tasks.

    Attributes
    ----------
    proximal_mu : float
        FedProx's ``mu`` (Li et al., 2020, "Federated Optimization in Heterogeneous
        Networks"): the local objective gains ``mu / 2 * ||w - w_global||^2``. Sent by the
        server strategy as ``proximal-mu``; 0 disables it.
    state : dict[str, Params]
        The client's persistent tensors across rounds, for stateful learners such as Ditto
        (kept on disk by round, see :mod:`fedmeta.client_state`).
    """

    proximal_mu: float = 0.0
    state: dict[str, Params] = field(default_factory=dict)
    server_round: int = 0
    """The round this local update belongs to (the outer learning rate's schedule reads it;
    0 outside a run)."""
    sample_rate: float = 0.0
    """The largest chance that one of the client's tasks contains a given example (DP-SGD's
    sampling rate; see :meth:`fedmeta.episodes.EpisodeSampler.inclusion_probability`)."""


def zero_head(params: Params, n_way: int) -> Params:
    """``params`` with a zero ``n_way`` output layer: every class equally likely."""
    weight, bias = (params[k] for k in HEAD)
    return {
        **params,
        HEAD[0]: weight.new_zeros(n_way, weight.shape[1]),
        HEAD[1]: bias.new_zeros(n_way),
    }


def split_prefix(params: Params, prefix: str) -> tuple[Params, Params]:
    """``(rest, under)``: the entries not starting with ``prefix``, and those that do with the
    prefix removed (a submodule's parameters for :func:`torch.func.functional_call`, or a
    learner's extra meta-parameters)."""
    rest = {k: v for k, v in params.items() if not k.startswith(prefix)}
    under = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    return rest, under


def loss_gradient(loss: Tensor, params: Params) -> Params:
    """``d loss / d params``, detached and keyed like ``params``; zero for a parameter the loss
    does not use (ProtoNet's head, Meta-SGD's rates with no inner step)."""
    grads = torch.autograd.grad(loss, tuple(params.values()), allow_unused=True)
    return {
        k: torch.zeros_like(p) if g is None else g.detach()
        for (k, p), g in zip(params.items(), grads, strict=True)
    }


def sgd_step(params: Params, grads: tuple[Tensor, ...] | list[Tensor], lr: float) -> Params:
    """``params - lr * grads`` as a new dict (differentiable when the grads are)."""
    return {k: p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)}


LEARNERS: Registry[type[Learner]] = Registry("learner", package="fedmeta.learners")
"""Every learner, by name; each module of :mod:`fedmeta.learners` registers its own."""


class Learner:
    """Base class: a local update over the client's tasks plus evaluation-time adaptation.

    Subclasses that are gradient-based meta-learners implement :meth:`meta_gradient`; the default
    :meth:`local_update` then runs ``local_steps`` outer steps of the configured optimizer.
    Algorithms whose local update is not "optimizer on a meta-gradient" (Reptile, FedAvg)
    override :meth:`local_update` instead.

    Parameters
    ----------
    model : nn.Module
        Architecture only; parameters are always passed explicitly.
    loss_fn : LossFn
        ``loss(prediction, target)`` for the dataset's task kind.
    cfg : LearnerConfig
        Hyper-parameters.
    train_classes : numpy.ndarray, optional
        Class ids of the source's training pool, in head order; used only by learners with
        :attr:`global_head`.
    """

    Options: type[LearnerConfig] = LearnerConfig
    """The options table this learner accepts (subclasses may extend it)."""

    global_head: ClassVar[bool] = False
    """If true, the model's head has one output per training class (global labels) instead of
    ``n_way`` outputs (episode positions), and :meth:`eval_start` swaps it for a fresh head."""

    stateful: ClassVar[bool] = False
    """Whether the local update leaves per-client tensors in ``ctx.state`` for the client's
    next round (Ditto's personal model); the ClientApp keeps them by round on disk. See also
    :meth:`keeps_state`."""

    supports_example_dp: ClassVar[bool] = False
    """Whether every gradient the local update takes on data is a first-order
    :meth:`value_and_grad` call, which DP-SGD (:mod:`fedmeta.privacy.dpsgd`) can replace."""

    any_way: ClassVar[bool] = False
    """If true, adaptation sets the head from the support set, so training episodes may have
    more ways than evaluation's (``task.train-way``)."""

    model_needs: ClassVar[dict[str, object]] = {}
    """Model options this learner needs, as ``{option: value}`` (the Relation Network needs
    ``relation_module=True``); scenario validation refuses a model without them."""

    @classmethod
    def keeps_state(cls, options: LearnerConfig) -> bool:
        """Whether clients keep state between rounds with these options: a stateful learner,
        or a kept outer optimizer."""
        return cls.stateful or getattr(options, "outer_state", "reset") == "keep"

    @classmethod
    def check_task(cls, options: LearnerConfig, task) -> None:
        """Refuse, with one :class:`~fedmeta.errors.FedmetaError` line, options that the
        scenario's episodes (``task``: n-way, k-shot, query) cannot serve. Nothing by default."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        cfg: LearnerConfig,
        train_classes: np.ndarray | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.cfg = cfg
        self.train_classes = train_classes

    # -- functional helpers -------------------------------------------------------------
    def forward(self, params: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, params, (x,), strict=True)

    def loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(self.forward(params, x), y)

    def features(self, params: Params, x: Tensor) -> Tensor:
        """The model's embedding of ``x`` (its ``features`` block, without the head), in the
        parameters' dtype (under bfloat16 autocast, distances between embeddings are then
        taken in float32)."""
        inner = split_prefix(params, "features.")[1]
        out = functional_call(self.model.features, inner, (x,), strict=True)
        return out.to(next(iter(inner.values())).dtype)

    def value_and_grad(
        self, params: Params, x: Tensor, y: Tensor, create_graph: bool = False
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """Gradient of the mean loss on ``(x, y)`` with respect to ``params`` (in their order),
        and that loss."""
        loss = self.loss(params, x, y)
        grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph)
        return grads, loss

    def inner_loop(
        self,
        params: Params,
        x: Tensor,
        y: Tensor,
        steps: int,
        lr: float,
        create_graph: bool,
        anchor: Params | None = None,
        lam: float = 0.0,
    ) -> Params:
        """``steps`` SGD steps on ``(x, y)`` from ``params``; differentiable if ``create_graph``.
        With ``anchor`` and ``lam`` the objective gains ``lam / 2 * ||w - anchor||^2``."""
        fast = params
        for _ in range(steps):
            grads, _ = self.value_and_grad(fast, x, y, create_graph)
            if anchor is not None and lam:
                grads = [g + lam * (fast[k] - anchor[k]) for k, g in zip(fast, grads, strict=True)]
            fast = sgd_step(fast, grads, lr)
        return fast

    # -- the interface ------------------------------------------------------------------
    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """One task's contribution to the meta-gradient, and its training loss.

        ``params`` are leaf tensors with ``requires_grad=True``; the returned tensors are
        detached and keyed like ``params``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define a task gradient")

    def batch_gradient(self, params: Params, tasks: TaskStack) -> tuple[Params, dict[str, float]]:
        """The same as :meth:`loop_gradient` for stacked tasks, as one batched computation
        (:mod:`fedmeta.batched`). Learners that define it get task batching."""
        raise NotImplementedError(f"{type(self).__name__} has no task-batched gradient")

    def stacked_losses(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """Each task's mean loss ``(T,)`` under its slice of the stacked ``params``."""
        return batched.task_losses(self.loss_fn, batched.forward_tasks(self.model, params, x), y)

    def stack(self, tasks: list[Task]) -> TaskStack | None:
        """``tasks`` stacked for :meth:`batch_gradient`, or ``None`` when the loop must run:
        batching is off, the learner or model has no batched form, or the shapes differ."""
        if (
            not self.cfg.batch_tasks
            or type(self).batch_gradient is Learner.batch_gradient
            or not batched.supports(self.model)
        ):
            return None
        return batched.stack_tasks(tasks)

    def meta_gradient(self, params: Params, tasks: list[Task]) -> tuple[Params, dict[str, float]]:
        """Mean task gradient over ``tasks`` and ``{"train-loss": mean task loss}``: batched
        when :meth:`stack` allows, else :meth:`loop_gradient`."""
        if not tasks:
            raise ValueError("a meta-step needs at least one task")
        stack = self.stack(tasks)
        return (
            self.loop_gradient(params, tasks)
            if stack is None
            else self.batch_gradient(params, stack)
        )

    def loop_gradient(self, params: Params, tasks: list[Task]) -> tuple[Params, dict[str, float]]:
        """Mean of :meth:`task_gradient` over ``tasks``, one task at a time (so each task's
        graph is freed before the next): the reference path."""
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        loss_sum = 0.0
        for task in tasks:
            grads, loss = self.task_gradient(params, task)
            for k, g in grads.items():
                total[k].add_(g)
            loss_sum += loss
        n = len(tasks)
        return {k: v / n for k, v in total.items()}, {"train-loss": loss_sum / n}

    def init_params(self, model_params: Params) -> Params:
        """The meta-parameters to federate, from the model's initial parameters (learners with
        extra meta-parameters, such as Meta-SGD's learning rates, add them here)."""
        return model_params

    def local_update(
        self, params: Params, sample_tasks: TaskBatchFn, ctx: LocalContext | None = None
    ) -> tuple[Params, dict[str, float]]:
        """Run the client's local meta-training from ``params``; return new params and metrics.

        Returned tensors are detached. Metrics are averaged over local steps; the key
        ``"train-loss"`` is the mean query loss after adaptation (or training loss). A
        ``ctx.proximal_mu > 0`` adds FedProx's proximal gradient ``mu * (w - w_global)``.
        """
        mu = ctx.proximal_mu if ctx is not None else 0.0
        anchor = {k: v.detach() for k, v in params.items()}
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        lr = self.cfg.outer_lr_at(ctx.server_round if ctx is not None else 0)
        opt = OUTER_OPTIMIZERS[self.cfg.outer_optimizer](leaves.values(), lr=lr)
        keep = self.cfg.outer_state == "keep" and ctx is not None
        if keep and OUTER_STATE in ctx.state:
            load_optimizer_tensors(opt, ctx.state[OUTER_STATE])
        totals: dict[str, float] = {}
        for _ in range(self.cfg.local_steps):
            grads, metrics = self.meta_gradient(leaves, sample_tasks(self.cfg.tasks_per_step))
            for k, p in leaves.items():
                p.grad = grads[k].detach()
                if mu:
                    p.grad += mu * (p.detach() - anchor[k])
            opt.step()
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + value / self.cfg.local_steps
        if keep:
            ctx.state[OUTER_STATE] = optimizer_tensors(opt)
        return {k: v.detach() for k, v in leaves.items()}, totals

    def eval_start(self, params: Params, task: Task) -> Params:
        """The parameters a new client starts adapting from on ``task``: ``params`` itself."""
        return params

    def adapt(
        self,
        params: Params,
        x: Tensor,
        y: Tensor,
        steps: int | None = None,
        lr: float | None = None,
    ) -> Params:
        """Adapt to one task's support set (no graph kept). Defaults: ``eval_inner_steps``,
        ``inner_lr``. With :attr:`adapt_lam` > 0 the support loss gains the proximal term
        ``adapt_lam / 2 * ||w - params||^2`` (Ditto's and pFedMe's personalisation)."""
        steps = self.eval_steps(steps)
        lr = self.cfg.inner_lr if lr is None else lr
        anchor = {k: v.detach() for k, v in params.items()}
        start = {k: v.clone().requires_grad_(True) for k, v in anchor.items()}
        with torch.enable_grad():
            fast = self.inner_loop(start, x, y, steps, lr, False, anchor, self.adapt_lam)
        return {k: v.detach() for k, v in fast.items()}

    def eval_steps(self, steps: int | None = None) -> int:
        """Adaptation steps at evaluation: ``steps`` if given, else ``eval_inner_steps``, else
        (learners whose option may be ``None``: Meta-SGD, Meta-LSTM) the trained
        ``inner_steps``."""
        for value in (steps, self.cfg.eval_inner_steps):
            if value is not None:
                return value
        return self.cfg.inner_steps

    def adapt_to(self, params: Params, task: Task, steps: int | None = None) -> Params:
        """Adapt to ``task``: :meth:`adapt` on its support set. A learner that embeds support
        and query together (ProtoNet) may also read the query inputs, never their labels."""
        return self.adapt(params, task.support_x, task.support_y, steps=steps)

    def predict(self, params: Params, task: Task) -> Tensor:
        """Predictions for ``task``'s query set under ``params``."""
        return self.forward(params, task.query_x)

    def predict_pre_post(
        self, start: Params, task: Task, steps: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Query predictions from ``start`` and from ``start`` adapted to ``task`` (what
        evaluation scores as ``-pre`` and ``-post``); no graph kept."""
        adapted = self.adapt_to(start, task, steps=steps)
        with torch.no_grad():
            return self.predict(start, task), self.predict(adapted, task)

    @property
    def adapt_lam(self) -> float:
        """Strength of a proximal pull towards the starting point during :meth:`adapt`."""
        return 0.0
