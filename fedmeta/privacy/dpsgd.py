"""Example-level DP inside a client: DP-SGD in the first-order learners.

Abadi et al. (2016), "Deep Learning with Differential Privacy", CCS: every gradient the local
update takes on data is replaced by the mean of per-example gradients, each clipped to L2 norm
``C``, plus ``N(0, (z C)^2)`` noise on their sum. Applied to the local training of a federated
meta-learner, this is the "task-global" DP of Li, Khodak, Caldas and Talwalkar (2020),
"Differentially Private Meta-Learning", ICLR: each example of a hospital is protected from
everyone who sees the hospital's released update (server and other hospitals), while the
hospital's own adapted model need not be private.

:func:`make_private` wraps a learner that declares ``supports_example_dp`` (all its data
gradients are first-order :meth:`~fedmeta.learners.base.Learner.value_and_grad` calls inside
``task_gradient``) with :class:`DPSGD`, which overrides those two methods and the local update's
bookkeeping. Per-example gradients come from ``torch.func.vmap`` over single examples, which is
exact only without BatchNorm (the scenario check rejects BatchNorm).

Accounting (conservative): one task is one sampled event. Its ``s`` private gradient steps may
all touch one example (MAML's inner steps reuse the support set), so they count as one Gaussian
release with multiplier ``z / sqrt(s)`` (composition of ``s`` Gaussians). The sampling rate is
the largest chance that a task contains a given example
(:meth:`~fedmeta.episodes.EpisodeSampler.inclusion_probability`). Each local update reports
``dp-sgd-noise``, ``dp-sgd-rate`` and ``dp-sgd-tasks``; the server keeps every client's ledger
(:mod:`server.privacy`), so it survives a resume.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from fedmeta.learners.base import LocalContext, Params
from fedmeta.privacy.options import PrivacyOptions
from fedmeta.tasks import Task

REPORTED = ("dp-sgd-noise", "dp-sgd-rate", "dp-sgd-tasks")
"""The metrics of a private local update: one ledger entry ``(z, q, count)``."""


def clipped_noisy_mean(per_example: list[Tensor], clip: float, noise: float) -> list[Tensor]:
    """``(sum_i g_i min(1, C / ||g_i||) + N(0, (z C)^2)) / B`` for per-example gradients
    stacked along dim 0 (the norm of ``g_i`` is taken over all tensors together)."""
    batch = per_example[0].shape[0]
    sq = sum(g.reshape(batch, -1).pow(2).sum(1) for g in per_example)
    factor = (clip / (sq.sqrt() + 1e-12)).clamp(max=1.0)
    out = []
    for g in per_example:
        total = torch.einsum("b,b...->...", factor, g)
        out.append((total + noise * clip * torch.randn_like(total)) / batch)
    return out


class DPSGD:
    """Mixin placed in front of a learner class (see :func:`make_private`)."""

    dp_clip: float
    dp_noise: float
    dp_calls: int = 0
    dp_tasks: list[int]

    def value_and_grad(
        self, params: Params, x: Tensor, y: Tensor, create_graph: bool = False
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        if create_graph:
            raise RuntimeError("DP-SGD gradients are first-order only")
        fixed = {k: v.detach() for k, v in params.items()}

        def one(p: Params, xi: Tensor, yi: Tensor) -> Tensor:
            return self.loss_fn(functional_call(self.model, p, (xi[None],)), yi[None])

        grads, losses = vmap(grad_and_value(one), in_dims=(None, 0, 0))(fixed, x, y)
        private = clipped_noisy_mean([grads[k] for k in params], self.dp_clip, self.dp_noise)
        self.dp_calls += 1
        return tuple(private), losses.mean()

    def meta_gradient(self, params: Params, tasks: list[Task]) -> tuple[Params, dict[str, float]]:
        """Always the per-task loop: per-example clipping replaces each data gradient in it."""
        return self.loop_gradient(params, tasks)  # type: ignore[attr-defined]

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        self.dp_calls = 0
        out = super().task_gradient(params, task)  # type: ignore[misc]
        self.dp_tasks.append(self.dp_calls)
        return out

    def local_update(self, params, sample_tasks, ctx: LocalContext | None = None):
        if ctx is None or not 0 < ctx.sample_rate <= 1:
            raise ValueError("DP-SGD needs the client's sampling rate (LocalContext.sample_rate)")
        self.dp_tasks = []
        new_params, metrics = super().local_update(params, sample_tasks, ctx)  # type: ignore[misc]
        steps = max(self.dp_tasks, default=1)
        metrics.update(
            {
                "dp-sgd-noise": self.dp_noise / math.sqrt(steps),
                "dp-sgd-rate": ctx.sample_rate,
                "dp-sgd-tasks": len(self.dp_tasks),
            }
        )
        return new_params, metrics


def make_private(learner, options: PrivacyOptions):
    """``learner`` (an instance) as a DP-SGD learner with the scenario's settings."""
    cls = type(f"DPSGD{type(learner).__name__}", (DPSGD, type(learner)), {})
    private = cls.__new__(cls)
    private.__dict__.update(learner.__dict__)
    private.dp_clip = options.example_clipping_norm
    private.dp_noise = float(options.example_noise_multiplier or 0.0)
    private.dp_tasks = []
    return private
