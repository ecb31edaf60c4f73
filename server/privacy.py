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
:class:`Privacy` also keeps the DP-SGD ledger of every client and counts local-DP replies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedmeta.privacy.accounting import Ledger, clients_per_round, planned_noise
from fedmeta.privacy.dpsgd import REPORTED
from fedmeta.privacy.options import PrivacyOptions
from fedmeta.protocol import METRICS, Stream, rng_for
from fedmeta.registry import Registry
from fedmeta.scenario import Scenario
from server.roster import reply_partition

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


class Privacy:
    """The strategy the round loop trains with, and the privacy ledgers of the run.

    ``strategy`` is ``inner`` itself without central DP, else Flower's wrapper around it; the
    loop keeps using ``inner`` for sampling, evaluation and checkpoints. Ledgers:

    * central DP: one release per aggregated round. When only ``m`` of the ``n`` sampled
      clients reply, the noise ``z C / n`` on a mean of ``m`` updates is a multiplier of
      ``z m / n``, and that is what is recorded; a round the wrapper refuses to aggregate
      releases nothing.
    * DP-SGD: every client's own ledger, from the ``dp-sgd-*`` metrics of its replies
      (:mod:`fedmeta.privacy.dpsgd`); the run reports the largest epsilon.
    * local DP: how many replies each client sent (basic composition of ``LocalDpMod``).
    """

    def __init__(self, inner: Strategy, scenario: Scenario) -> None:
        p = scenario.privacy
        self.inner, self.options, self.seed = inner, p, scenario.seed
        self.per_round = clients_per_round(scenario)
        self.sample_rate = self.per_round / scenario.clients.train
        self.noise = planned_noise(scenario) if p.central_dp else 0.0
        self.strategy = (
            CENTRAL.get(p.central, key="privacy.central")(inner, self.noise, p, self.per_round)
            if p.central_dp
            else inner
        )
        self.ledger = Ledger(p.delta, p.accountant)
        self.examples: dict[int, Ledger] = {}
        self.example_eps: dict[int, float] = {}
        self.replies: dict[int, int] = {}

    def aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's aggregate through :attr:`strategy`. Flower's DP wrappers draw their
        noise from numpy's global generator, so it is seeded per round first: a private run is
        reproducible."""
        np.random.seed(rng_for(self.seed, Stream.NOISE, server_round).integers(2**32))
        return self.strategy.aggregate_train(server_round, replies)

    def after_round(self, replies: list[Message], aggregated: int) -> dict[str, float]:
        """Record the round's releases; the metrics to log. ``replies`` are the successful
        ones (each client's own releases: DP-SGD steps, local-DP replies), ``aggregated`` how
        many of them entered the released aggregate (0: nothing was released)."""
        p, out = self.options, {}
        if p.central_dp:
            if aggregated:
                m = min(aggregated, self.per_round)
                self.ledger.record(self.noise * m / self.per_round, self.sample_rate)
            out["epsilon"] = self.ledger.epsilon()
            out["noise-multiplier"] = self.noise
            if hasattr(self.strategy, "clipping_norm"):
                out["clipping-norm"] = float(self.strategy.clipping_norm)
        for reply in replies:
            pid = reply_partition(reply)
            self.replies[pid] = self.replies.get(pid, 0) + 1
            metrics = reply.content[METRICS]
            if "dp-sgd-tasks" in metrics:
                z, q, n = (float(metrics[k]) for k in REPORTED)
                ledger = self.examples.setdefault(pid, Ledger(p.delta, p.accountant))
                ledger.record(z, q, int(n))
                self.example_eps[pid] = ledger.epsilon()
        if p.example_noise_multiplier is not None:
            out["example-epsilon"] = max(self.example_eps.values(), default=0.0)
        return out

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "history": list(self.ledger.history),
            "examples": {pid: list(led.history) for pid, led in self.examples.items()},
            "replies": dict(self.replies),
        }
        if self.strategy is not self.inner and hasattr(self.strategy, "clipping_norm"):
            out["clipping-norm"] = self.strategy.clipping_norm  # adaptive clipping moves it
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        p = self.options
        self.ledger = Ledger(p.delta, p.accountant, state.get("history", ()))
        self.examples = {
            int(pid): Ledger(p.delta, p.accountant, h)
            for pid, h in state.get("examples", {}).items()
        }
        self.example_eps = {pid: led.epsilon() for pid, led in self.examples.items()}
        self.replies = {int(pid): n for pid, n in state.get("replies", {}).items()}
        if "clipping-norm" in state:
            self.strategy.clipping_norm = state["clipping-norm"]

    def summary(self) -> dict[str, Any]:
        """The ``privacy`` block of ``summary.json`` (empty without DP)."""
        p = self.options
        if not p.dp:
            return {}
        out: dict[str, Any] = {"delta": p.delta, "accountant": p.accountant}
        if p.central_dp:
            out |= {
                "central": p.central,
                "epsilon": self.ledger.epsilon(),
                "noise-multiplier": self.noise,
                "sample-rate": self.sample_rate,
                "rounds-accounted": sum(n for _, _, n in self.ledger.history),
            }
        if p.example_noise_multiplier is not None:
            out["example-epsilon"] = max(self.example_eps.values(), default=0.0)
        if p.local_epsilon is not None:
            most = max(self.replies.values(), default=0)
            out |= {
                "local-epsilon-per-reply": p.local_epsilon,
                "local-delta-per-reply": p.local_delta,
                "local-epsilon": most * p.local_epsilon,
                "local-delta": most * p.local_delta,
            }
        return out
