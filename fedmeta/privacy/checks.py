"""Privacy settings that are fine alone but wrong for the rest of the scenario.

Each check raises one :class:`~fedmeta.errors.FedmetaError` line that names the keys and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedmeta.errors import FedmetaError
from fedmeta.learners import LEARNERS
from fedmeta.models import MODELS
from fedmeta.privacy.accounting import clients_per_round, planned_noise
from fedmeta.strategies import STRATEGIES

if TYPE_CHECKING:
    from fedmeta.scenario.schema import Scenario

SECAGG_MIN_CLIENTS = 3
"""Fewer clients than this per round would let one client subtract its own update from the sum
and read the other's: SecAgg+ then protects nothing."""


def _supporting(registry, attr: str) -> str:
    return ", ".join(n for n in registry.names() if getattr(registry.get(n), attr))


def check_privacy(sc: Scenario) -> None:
    p = sc.privacy
    if not p.active:
        return
    learner = LEARNERS.get(sc.learner.name, key="learner.name")
    strategy = STRATEGIES.get(sc.strategy.name, key="strategy.name")
    per_round = clients_per_round(sc)
    if p.central_dp or p.secure_aggregation:
        if not strategy.mean_aggregation:
            what = "central DP" if p.central_dp else "secure aggregation"
            raise FedmetaError(
                f"strategy.name = {sc.strategy.name!r} does not aggregate by a mean, so "
                f"{what} cannot be added to it; use one of: "
                f"{_supporting(STRATEGIES, 'mean_aggregation')}"
            )
    if p.central_dp and not strategy.uniform(sc.strategy.options):
        raise FedmetaError(
            "strategy.weight = 'examples' with privacy.central: the DP noise is calibrated to "
            "replies that count the same; set strategy.weight = 'uniform'"
        )
    if p.central_dp and sc.train.dropout > 0:
        raise FedmetaError(
            f"train.dropout = {sc.train.dropout} with privacy.central: the DP noise is "
            "calibrated to a fixed number of clients per round; set train.dropout = 0"
        )
    if p.central.endswith("adaptive"):
        z = planned_noise(sc)
        if z >= per_round / 10:
            raise FedmetaError(
                f"privacy.central = {p.central!r} with noise multiplier {z:.3g} and {per_round} "
                f"clients per round: Flower's adaptive clipping needs a noise multiplier below "
                f"clients per round / 10; sample more clients (train.fraction) or use fixed "
                f"clipping"
            )
    if p.example_noise_multiplier is not None:
        if not learner.supports_example_dp:
            raise FedmetaError(
                f"privacy.example-noise-multiplier (DP-SGD) needs a first-order learner, not "
                f"learner.name = {sc.learner.name!r}; use one of: "
                f"{_supporting(LEARNERS, 'supports_example_dp')}"
            )
        if MODELS.get(sc.model.name, key="model.name").mixes_examples(sc.model.options):
            raise FedmetaError(
                f"privacy.example-noise-multiplier (DP-SGD) needs per-example gradients, which "
                f"model.name = {sc.model.name!r} mixes across a batch (BatchNorm); set "
                f"model.norm = 'group' or 'none'"
            )
    if p.secure_aggregation and per_round < SECAGG_MIN_CLIENTS:
        raise FedmetaError(
            f"privacy.secure-aggregation needs at least {SECAGG_MIN_CLIENTS} clients per round "
            f"but train.fraction x clients.train gives {per_round}; raise train.fraction"
        )
    if p.secure_aggregation and p.secagg_shares > per_round:
        raise FedmetaError(
            f"privacy.secagg-shares = {p.secagg_shares} exceeds the {per_round} clients per "
            "round; lower it (0 shares with every sampled client)"
        )
    if p.secure_aggregation and p.secagg_threshold >= (p.secagg_shares or per_round):
        raise FedmetaError(
            f"privacy.secagg-threshold = {p.secagg_threshold} must be below the number of shares "
            f"({p.secagg_shares or per_round}); lower it (0: two thirds of the shares)"
        )
