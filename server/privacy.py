"""Client-level central DP: Flower's DP strategy wrappers around a fedmeta strategy, plus the
accountant that reports the epsilon spent after every round.

DP-FedAvg (McMahan et al., 2018, "Learning Differentially Private Recurrent Language Models",
ICLR): every sampled client's update ``w_i - w`` is clipped to L2 norm ``C`` and the server adds
``N(0, (z C / n)^2)`` to the mean of ``n`` updates. Flower's wrappers do both (clipping on the
server, or on the clients through ``fixedclipping_mod``/``adaptiveclipping_mod``); adaptive
clipping follows Andrew et al. (2021), where the noise multiplier ``z`` covers both the update
and the clipped-count release. The mean must be unweighted for ``z C / n`` to be the right
scale, so the wrapped strategy weights every reply by its ``unit-weight`` (always 1).

Accounting: one Gaussian release per round at sampling rate ``q = n / training clients``
(:mod:`fedmeta.privacy.accounting`); ``target-epsilon`` derives ``z`` for ``train.rounds``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedmeta.config import Scenario
from fedmeta.privacy.accounting import Ledger, noise_for_epsilon
from fedmeta.privacy.options import PrivacyOptions
from fedmeta.registry import Registry

Wrap = Callable[[Strategy, float, PrivacyOptions, int], Strategy]
CENTRAL: Registry[Wrap] = Registry("central DP mode")


def _adaptive(cls) -> Wrap:
    def wrap(inner: Strategy, z: float, o: PrivacyOptions, n: int) -> Strategy:
        return cls(
            inner,
            z,
            n,
            initial_clipping_norm=o.clipping_norm,
            target_clipped_quantile=o.target_quantile,
            clip_norm_lr=o.clip_lr,
        )

    return wrap


def _fixed(cls) -> Wrap:
    return lambda inner, z, o, n: cls(inner, z, o.clipping_norm, n)


CENTRAL.register("server-fixed", help="server clips each update to clipping-norm, adds noise")(
    _fixed(DifferentialPrivacyServerSideFixedClipping)
)
CENTRAL.register("client-fixed", help="clients clip (fixedclipping_mod), server adds noise")(
    _fixed(DifferentialPrivacyClientSideFixedClipping)
)
CENTRAL.register("server-adaptive", help="server clips at a private quantile of the norms")(
    _adaptive(DifferentialPrivacyServerSideAdaptiveClipping)
)
CENTRAL.register("client-adaptive", help="clients clip (adaptiveclipping_mod) at a quantile")(
    _adaptive(DifferentialPrivacyClientSideAdaptiveClipping)
)


def clients_per_round(scenario: Scenario) -> int:
    """How many training clients the server samples each round (before dropout)."""
    return max(1, round(scenario.train.fraction * scenario.clients.train))


def planned_noise(scenario: Scenario) -> float:
    """The central noise multiplier: ``noise-multiplier``, or the one ``target-epsilon`` needs
    over ``train.rounds`` rounds."""
    p = scenario.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    q = clients_per_round(scenario) / scenario.clients.train
    return noise_for_epsilon(p.target_epsilon, p.delta, q, scenario.train.rounds, p.accountant)


class CentralDP:
    """The strategy the round loop trains with, and the privacy ledger of its releases.

    ``strategy`` is ``inner`` itself without central DP, else Flower's wrapper around it; the
    loop keeps using ``inner`` for sampling, evaluation and checkpoints.
    """

    def __init__(self, inner: Strategy, scenario: Scenario) -> None:
        p = scenario.privacy
        self.inner, self.options = inner, p
        self.sample_rate = clients_per_round(scenario) / scenario.clients.train
        self.noise = planned_noise(scenario) if p.central_dp else 0.0
        self.strategy = (
            CENTRAL.get(p.central, key="privacy.central")(
                inner, self.noise, p, clients_per_round(scenario)
            )
            if p.central_dp
            else inner
        )
        self.ledger = Ledger(p.delta, p.accountant)

    def after_round(self) -> dict[str, float]:
        """Record the round's release; the metrics to log (none without central DP)."""
        if not self.options.central_dp:
            return {}
        self.ledger.record(self.noise, self.sample_rate)
        out = {"epsilon": self.ledger.epsilon(), "noise-multiplier": self.noise}
        if hasattr(self.strategy, "clipping_norm"):
            out["clipping-norm"] = float(self.strategy.clipping_norm)
        return out

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"history": list(self.ledger.history)}
        if self.strategy is not self.inner and hasattr(self.strategy, "clipping_norm"):
            out["clipping-norm"] = self.strategy.clipping_norm  # adaptive clipping moves it
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        self.ledger = Ledger(self.options.delta, self.options.accountant, state.get("history", ()))
        if "clipping-norm" in state:
            self.strategy.clipping_norm = state["clipping-norm"]

    def summary(self) -> dict[str, Any]:
        """The ``privacy`` block of ``summary.json`` (empty without central DP)."""
        if not self.options.central_dp:
            return {}
        return {
            "central": self.options.central,
            "epsilon": self.ledger.epsilon(),
            "delta": self.options.delta,
            "noise-multiplier": self.noise,
            "sample-rate": self.sample_rate,
            "accountant": self.options.accountant,
            "rounds-accounted": sum(n for _, _, n in self.ledger.history),
        }
