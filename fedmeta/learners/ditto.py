"""Ditto: a global model by FedAvg plus a personal model per client, kept in its state.

Li, Hu, Beirami and Smith (2021), "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML, Algorithm 1. Each round a client (1) trains the global model locally
exactly as FedAvg does (global head over the training classes, see :mod:`fedmeta.learners.fedavg`)
and returns it for aggregation, and (2) updates its personal model ``v`` with ``local_steps``
SGD steps (step ``inner_lr``) on ``f(v) + lam / 2 * ||v - w||^2``, where ``w`` is the global
model it received. The personal model persists across rounds as the client's learner state
(:mod:`fedmeta.client_state`: on disk by round, so a resumed run continues it exactly).

fedmeta evaluates held-out clients only, so the training clients' personal models show up only
in the ``personal-train-loss`` training metric, and Ditto's held-out score measures its global
model plus Ditto's proximal personalisation. A new (held-out) client has no personal model yet:
it starts from the global model with a fresh ``n_way`` head and solves the same regularised
problem on its support set, with ``eval_inner_steps`` steps.

Settings (the authors' code ``litian96/ditto``, ``run_fashion_clean_ditto_lam1.sh`` and
``ditto.py``) against fedmeta's defaults (:class:`DittoConfig`):

=====================  ============================  ==========================================
setting                paper's code                  fedmeta default (reason if different)
=====================  ============================  ==========================================
lambda                 1 in the shipped scripts;     1 (``lam``)
                       tuned per device in {0.1,
                       1, 2} in the paper
global solver          FedAvg, SGD, lr 0.05          SGD, ``outer-lr`` 0.05
personal step          SGD, the same lr and batch    SGD, ``inner-lr`` 0.05
local iterations       2 mini-batches (Fashion-      2 (``local-steps``), a task each
                       MNIST)
=====================  ============================  ==========================================
"""

from __future__ import annotations

from pydantic import Field

from fedmeta.learners.base import LEARNERS, LocalContext, Params, sgd_step
from fedmeta.learners.fedavg import FedAvg, FedAvgConfig
from fedmeta.tasks import TaskBatchFn


class DittoConfig(FedAvgConfig):
    """Ditto's options, with the defaults of the authors' Fashion-MNIST script."""

    lam: float = Field(1.0, ge=0)
    """Ditto's ``lambda``: how strongly a personal model is pulled to the global one."""
    local_steps: int = Field(2, ge=1)
    inner_lr: float = Field(0.05, ge=0)


PERSONAL = "ditto-personal"


@LEARNERS.register("ditto", help="Ditto (Li et al., 2021): FedAvg + stateful personal models")
class Ditto(FedAvg):
    """FedAvg for the global model; proximal personal models on clients (see module doc)."""

    Options = DittoConfig
    stateful = True
    supports_example_dp = False  # its personal loop would spend budget on what is never sent

    def local_update(
        self, params: Params, sample_tasks: TaskBatchFn, ctx: LocalContext | None = None
    ) -> tuple[Params, dict[str, float]]:
        ctx = ctx if ctx is not None else LocalContext()
        new_global, metrics = super().local_update(params, sample_tasks, ctx)
        anchor = {k: v.detach() for k, v in params.items()}
        personal = ctx.state.get(PERSONAL, anchor)
        v = {k: t.detach().clone().requires_grad_(True) for k, t in personal.items()}
        loss_sum = 0.0
        for _ in range(self.cfg.local_steps):
            grads, step_metrics = self.meta_gradient(v, sample_tasks(self.cfg.tasks_per_step))
            prox = {k: grads[k] + self.cfg.lam * (v[k].detach() - anchor[k]) for k in v}
            v = {
                k: t.detach().requires_grad_(True)
                for k, t in sgd_step(v, list(prox.values()), self.cfg.inner_lr).items()
            }
            loss_sum += step_metrics["train-loss"]
        ctx.state[PERSONAL] = {k: t.detach() for k, t in v.items()}
        return new_global, {**metrics, "personal-train-loss": loss_sum / self.cfg.local_steps}

    @property
    def adapt_lam(self) -> float:
        """A new client personalises with the same proximal term (strength ``lam``)."""
        return self.cfg.lam
