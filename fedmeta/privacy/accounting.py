"""Privacy accounting with opacus' accountants (the epsilon is computed, never guessed).

Client-level DP: one Gaussian release per round, with noise multiplier ``z`` and sampling rate
``q = clients sampled per round / training clients``. Example-level DP-SGD: one release per
private gradient step, with ``q = batch size / examples on the client``. Both treat sampling as
Poisson sampling, the usual approximation for fixed-size samples (Abadi et al., 2016, "Deep
Learning with Differential Privacy", CCS). Accountants: Renyi DP (Mironov, 2017) or the privacy
random variable accountant (Gopi, Lee and Wutschitz, 2021).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fedmeta.protocol import sample_size

if TYPE_CHECKING:
    from fedmeta.scenario.schema import Scenario

Event = tuple[float, float, int]
"""``(noise multiplier, sampling rate, steps)``, opacus' history entry."""


def epsilon(history: Iterable[Event], delta: float, kind: str = "rdp") -> float:
    """The epsilon spent at ``delta`` by the Gaussian releases in ``history`` (``inf`` when
    any release had no noise, 0 when there was none)."""
    events = [(float(z), float(q), int(n)) for z, q, n in history if n > 0]
    if not events:
        return 0.0
    if any(z <= 0 for z, _, _ in events):
        return math.inf
    from opacus.accountants import PRVAccountant, RDPAccountant  # heavy: imported when used

    accountant = {"rdp": RDPAccountant, "prv": PRVAccountant}[kind]()
    accountant.history = events
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha"
        return float(accountant.get_epsilon(delta=delta))


def noise_for_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: str = "rdp"
) -> float:
    """The smallest noise multiplier (to opacus' tolerance) that keeps ``steps`` releases at
    ``sample_rate`` within ``target_epsilon``; 0 for ``target_epsilon = inf``."""
    if math.isinf(target_epsilon) or steps == 0:
        return 0.0
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=kind,
            )
        )


class Ledger:
    """A growing list of Gaussian releases (checkpointed with the run)."""

    def __init__(self, delta: float, kind: str, history: Iterable[Event] = ()) -> None:
        self.delta, self.kind = delta, kind
        self.history: list[Event] = [tuple(e) for e in history]  # type: ignore[misc]

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Add ``steps`` releases; consecutive identical events are merged."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            z, q, n = self.history[-1]
            self.history[-1] = (z, q, n + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    def epsilon(self) -> float:
        return epsilon(self.history, self.delta, self.kind)


def clients_per_round(scenario: Scenario) -> int:
    """How many training clients the server samples each round (before dropout)."""
    return sample_size(scenario.train.fraction, scenario.clients.train)


def planned_noise(scenario: Scenario) -> float:
    """The central noise multiplier: ``noise-multiplier``, or the one ``target-epsilon`` needs
    over ``train.rounds`` rounds at sampling rate clients per round / training clients."""
    p = scenario.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    q = clients_per_round(scenario) / scenario.clients.train
    return noise_for_epsilon(p.target_epsilon, p.delta, q, scenario.train.rounds, p.accountant)
