"""``[faults]``: seeded fault injection, for studying unreliable hospitals.

Each round, every sampled training client draws at most one fault from its own random stream
(``rng_for(seed, Stream.FAULTS, round, partition)``), so a faulty run is reproducible and the
server can count exactly which faults it injected:

* ``crash``: the ClientApp raises instead of training (the server gets an error reply);
* ``nan``: the client trains but its reply carries NaN (the server rejects it before
  aggregation);
* ``straggle``: the client sleeps past ``train.timeout`` before training, so the server stops
  waiting and aggregates without it.

``heldout-crash`` makes a held-out client's evaluation raise, drawn per attempt
(``Stream.FAULTS, round, partition, attempt``), so the server's retry may succeed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedmeta.options import Options
from fedmeta.protocol import Stream, rng_for

Fault = Literal["crash", "nan", "straggle"]
KINDS: tuple[Fault, ...] = ("crash", "nan", "straggle")


class FaultOptions(Options):
    crash: float = Field(0.0, ge=0, le=1)
    nan: float = Field(0.0, ge=0, le=1)
    straggle: float = Field(0.0, ge=0, le=1)
    heldout_crash: float = Field(0.0, ge=0, le=1)
    straggle_seconds: float | None = Field(None, gt=0)
    """How long a straggler sleeps (default: ``train.timeout`` + 1 s)."""

    @model_validator(mode="after")
    def _check(self) -> FaultOptions:
        total = self.crash + self.nan + self.straggle
        if total > 1:
            raise ValueError(
                f"crash + nan + straggle = {total:g} must be at most 1 (each client draws at "
                "most one fault per round); lower them"
            )
        return self

    @property
    def active(self) -> bool:
        return self != FaultOptions()


def draw_fault(options: FaultOptions, seed: int, server_round: int, partition: int) -> Fault | None:
    """The fault a training client suffers in a round, if any (one uniform draw)."""
    if not (options.crash or options.nan or options.straggle):
        return None
    u = rng_for(seed, Stream.FAULTS, server_round, partition).uniform()
    for kind in KINDS:
        p = getattr(options, kind)
        if u < p:
            return kind
        u -= p
    return None


def heldout_crashes(
    options: FaultOptions, seed: int, server_round: int, partition: int, attempt: int
) -> bool:
    """Whether a held-out client's evaluation fails at this attempt of this round."""
    if not options.heldout_crash:
        return False
    u = rng_for(seed, Stream.FAULTS, server_round, partition, attempt).uniform()
    return bool(u < options.heldout_crash)
