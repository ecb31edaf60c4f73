"""Local-only: a new hospital trains from scratch on its own support set (the lower bound).

No federated knowledge is used: the "meta-parameters" are the seeded random initialisation,
which training rounds leave unchanged, and evaluation adapts them on each task's support set
with ``eval_inner_steps`` SGD steps. ``fedmeta compare``'s ``local-only`` preset sets
``train.rounds = 0`` so that no round is simulated at all (see :mod:`fedmeta.study`).
"""

from __future__ import annotations

from fedmeta.learners.base import LEARNERS, Learner, LocalContext, Params
from fedmeta.tasks import TaskBatchFn


@LEARNERS.register("local-only", help="no federation: each new client trains from scratch")
class LocalOnly(Learner):
    """Returns the global parameters unchanged; evaluation is plain SGD from the initialisation."""

    def local_update(
        self, params: Params, sample_tasks: TaskBatchFn, ctx: LocalContext | None = None
    ) -> tuple[Params, dict[str, float]]:
        """Nothing is learned from the client's tasks: the parameters come back unchanged."""
        return {k: v.detach().clone() for k, v in params.items()}, {}
