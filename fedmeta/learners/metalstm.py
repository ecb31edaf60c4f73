"""Meta-Learner LSTM: a learned, coordinate-wise optimiser and a learned initialisation.

Ravi and Larochelle (2017), "Optimization as a Model for Few-Shot Learning", ICLR. The learner's
parameters are the cell state of an LSTM. At step ``t`` of adapting to a support set, with the
support loss ``L_t`` and its gradient ``g_t`` at ``theta_{t-1}``:

    i_t     = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I)      (learned learning rates)
    f_t     = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)      (learned decays)
    theta_t = f_t * theta_{t-1} - i_t * g_t

where ``h_t`` is the hidden state of a first, ordinary LSTM layer that reads the preprocessed
gradient and loss (Andrychowicz et al. 2016, ``p = 10``). Every coordinate of ``theta`` is one
row of the same small network: the optimiser's weights are shared across parameters. With the
gates fixed to ``(lr, 1)`` the update is plain SGD.

The federated meta-parameters are the learner's initialisation ``theta_0`` (the model's
parameters, the LSTM's initial cell state) and the optimiser's weights (keys starting with
:data:`LSTM`). Training differentiates the query loss after ``inner_steps`` learned updates with
respect to both. With ``first_order`` (the paper's simplification, the default) the gradient
and loss inputs are treated as constants, so no second derivatives are taken; without it the
meta-gradient is exact. Evaluation applies the learned optimiser for the trained number of steps
unless ``eval-inner-steps`` says otherwise.

Settings of the authors' code against fedmeta's defaults:

===================  ==============================  =========================================
setting              paper                           fedmeta default (reason if different)
===================  ==============================  =========================================
first LSTM layer     hidden size 20                  ``hidden`` = 20
gate weights         uniform in +-0.01               uniform in +-0.01
forget-gate bias     uniform in [4, 5]               ``forget-bias`` = 5
input-gate bias      uniform in [-5, -4] (rate       ``logit(inner-lr)``, ``inner-lr`` = 0.1:
                     ~0.01, on a gradient the code   the rate MAML takes 0.4 on Omniglot is
                     also divides by the batch)      that order, not 0.01
gate input           the previous gate before its    the previous gate's value, as the
                     sigmoid                         paper's equation writes it
preprocessing        Andrychowicz et al., p = 10     p = 10, on the gradient and the loss
second derivatives   ignored (first-order)           ``first-order = true``
meta-optimiser       Adam, lr 0.001                  Adam, ``outer-lr`` 0.001
gradient clipping    global norm 0.25                none (clip with a DP or server strategy)
updates T            1-shot: 12 (batches of 5);      ``inner-steps`` = 5, each on the whole
                     5-shot: 8 (batches of 25)       support set (a 5-way 1-shot support set
                                                     is one batch of 5)
BatchNorm            running statistics of the       batch statistics (the scenario's model)
                     episode's support set at test
===================  ==============================  =========================================

(From the authors' code, ``twitter/meta-learning-lstm``: ``config/lstm/train-imagenet-1shot.lua``
and ``model/lstm/meta-learner-lstm.lua``; the paper's own text was not at hand.)
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from fedmeta.learners.base import (
    LEARNERS,
    Learner,
    LearnerConfig,
    Params,
    loss_gradient,
    split_prefix,
)
from fedmeta.tasks import Task

LSTM = "meta-lstm."
"""Prefix of the optimiser's weights in the meta-parameters."""

PREPROCESS_P = 10.0
"""Andrychowicz et al.'s preprocessing constant ``p``."""


def preprocess(x: Tensor) -> Tensor:
    """``(log|x| / p, sign x)`` where ``|x| >= e^-p``, else ``(-1, e^p x)``: one row of two
    inputs per entry of ``x`` (Andrychowicz et al. 2016, appendix A)."""
    big = x.abs() >= math.exp(-PREPROCESS_P)
    first = torch.where(big, x.abs().clamp_min(1e-30).log() / PREPROCESS_P, -torch.ones_like(x))
    second = torch.where(big, torch.sign(x), math.exp(PREPROCESS_P) * x)
    return torch.stack([first, second], dim=-1)


class MetaLSTMConfig(LearnerConfig):
    """The Meta-Learner LSTM's options.

    Attributes
    ----------
    inner_lr : float
        The input gate's initial value, the untrained optimiser's learning rate: its bias
        starts at ``logit(inner_lr)``.
    hidden : int
        Hidden size of the first, ordinary LSTM layer (20 in the paper).
    forget_bias : float
        Initial bias of the forget gate: near 1, so that the untrained optimiser is close to
        SGD with rate ``inner_lr`` (paper section 3.3).
    first_order : bool
        Treat the gradient and loss inputs as constants (the paper's simplification).
    eval_inner_steps : int or None
        Learned updates at evaluation; by default the trained ``inner_steps``.
    """

    inner_steps: int = Field(5, ge=1)
    inner_lr: float = Field(0.1, gt=0, lt=1)
    hidden: int = Field(20, ge=1)
    forget_bias: float = 5.0
    first_order: bool = True
    eval_inner_steps: int | None = Field(None, ge=0)


def split(params: Params) -> tuple[Params, Params]:
    """``(weights, optimiser)``: the model's parameters and the LSTM's (prefix removed)."""
    return split_prefix(params, LSTM)


@LEARNERS.register(
    "meta-lstm", help="Meta-Learner LSTM (Ravi & Larochelle, 2017): a learned optimiser + init"
)
class MetaLSTM(Learner):
    """A coordinate-wise LSTM optimiser meta-learned together with the initialisation."""

    Options = MetaLSTMConfig

    def __init__(self, model, loss_fn, cfg, train_classes=None) -> None:
        super().__init__(model, loss_fn, cfg, train_classes)
        self.cell = nn.LSTMCell(4, cfg.hidden)  # the module whose weights ``params`` replace

    def init_params(self, model_params: Params) -> Params:
        """The model's parameters plus a freshly initialised optimiser: the first layer as
        PyTorch initialises an LSTM cell; the gates' weights uniform in +-0.01 as in the
        authors' code, their biases ``logit(inner_lr)`` and ``forget_bias`` (so every
        coordinate starts close to SGD with rate ``inner_lr``)."""
        cell = nn.LSTMCell(4, self.cfg.hidden, dtype=next(iter(model_params.values())).dtype)
        width = self.cfg.hidden + 2  # [h_t, theta_{t-1}, previous gate]
        lstm = {f"cell.{k}": v.detach() for k, v in cell.named_parameters()}
        input_bias = math.log(self.cfg.inner_lr / (1 - self.cfg.inner_lr))
        for gate, bias in (("input", input_bias), ("forget", self.cfg.forget_bias)):
            lstm[f"{gate}.weight"] = lstm["cell.bias_ih"].new_empty(width).uniform_(-0.01, 0.01)
            lstm[f"{gate}.bias"] = lstm["cell.bias_ih"].new_full((1,), bias)
        return {**model_params, **{LSTM + k: v for k, v in lstm.items()}}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        return super().forward(split(params)[0], x)

    def gates(self, lstm: Params, h: Tensor, theta: Tensor, i_prev: Tensor, f_prev: Tensor):
        """The input gate (learning rates) and forget gate (decays), one row per coordinate."""
        i = torch.sigmoid(
            torch.cat([h, theta, i_prev], 1) @ lstm["input.weight"][:, None] + lstm["input.bias"]
        )
        f = torch.sigmoid(
            torch.cat([h, theta, f_prev], 1) @ lstm["forget.weight"][:, None] + lstm["forget.bias"]
        )
        return i, f

    def inner(self, params: Params, x: Tensor, y: Tensor, steps: int, create_graph: bool) -> Params:
        """``steps`` learned updates on ``(x, y)``; returns the adapted model parameters. With
        ``create_graph`` the result is differentiable in ``params`` (model and optimiser)."""
        weights, lstm = split(params)
        cell = split_prefix(lstm, "cell.")[1]
        keys, shapes = list(weights), [v.shape for v in weights.values()]
        theta = torch.cat([v.reshape(-1, 1) for v in weights.values()])  # the cell state
        n = len(theta)
        state = (theta.new_zeros(n, self.cfg.hidden), theta.new_zeros(n, self.cfg.hidden))
        i_prev = f_prev = theta.new_zeros(n, 1)
        second_order = create_graph and not self.cfg.first_order
        for _ in range(steps):
            # first order: the gradient and loss inputs are constants (a detached copy of theta)
            at = theta if second_order else theta.detach().requires_grad_(True)
            fast = self.unflatten(at, keys, shapes)
            loss = self.loss(fast, x, y)
            grads = torch.autograd.grad(loss, tuple(fast.values()), create_graph=second_order)
            grad = torch.cat([g.reshape(-1, 1) for g in grads])
            if not create_graph:
                theta, loss = theta.detach(), loss.detach()
            inputs = torch.cat([preprocess(grad[:, 0]), preprocess(loss).expand(n, 2)], 1)
            state = functional_call(self.cell, cell, (inputs, state), strict=True)
            i_prev, f_prev = self.gates(lstm, state[0], theta, i_prev, f_prev)
            theta = f_prev * theta - i_prev * grad
        return self.unflatten(theta, keys, shapes)

    @staticmethod
    def unflatten(theta: Tensor, keys: list[str], shapes: list[torch.Size]) -> Params:
        """The column ``theta`` as named tensors of ``shapes``."""
        parts = torch.split(theta, [s.numel() for s in shapes])
        return {k: v.view(s) for k, v, s in zip(keys, parts, shapes, strict=True)}

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Gradient of the query loss after the learned updates, for the initialisation and
        the optimiser's weights."""
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
        """The learned optimiser's updates on the support set (``lr`` is ignored: the input
        gate is the rate), for the trained number of steps unless told otherwise. The
        optimiser's weights are returned unchanged."""
        steps = self.eval_steps(steps)
        start = {k: v.detach().requires_grad_(not k.startswith(LSTM)) for k, v in params.items()}
        with torch.enable_grad():
            fast = self.inner(start, x, y, steps, create_graph=False)
        lstm = {k: v.detach() for k, v in params.items() if k.startswith(LSTM)}
        return {**{k: v.detach() for k, v in fast.items()}, **lstm}
