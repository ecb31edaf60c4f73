"""The strategy spec: a declarative registry entry for a Flower server strategy."""

from __future__ import annotations

from typing import Any, ClassVar

from fedmeta.options import Options
from fedmeta.registry import Registry


class StrategySpec:
    """A registry entry: the Flower strategy class, the options it takes and its state.

    Every option is passed to the Flower constructor under its own name, or under
    ``renames[name]``.
    """

    flower: ClassVar[str] = "FedAvg"
    """The Flower strategy class: a name in ``flwr.serverapp.strategy``, or ``"module:Class"``
    for a strategy class of our own (a subclass of a Flower strategy)."""
    Options: type[Options]
    renames: ClassVar[dict[str, str]] = {}
    mean_aggregation: ClassVar[bool] = True
    """Whether the aggregate is a (weighted) mean of the replies, which central DP's noise
    scale and secure aggregation's masked sum both assume."""
    state: ClassVar[tuple[str, ...]] = ()
    """Attributes of the Flower strategy that carry over from round to round (the server
    optimiser's momentum or moments): checkpoints save them, so a resumed run continues them."""

    @classmethod
    def kwargs(cls, options: Options) -> dict[str, Any]:
        return {cls.renames.get(f, f): getattr(options, f) for f in type(options).model_fields}


STRATEGIES: Registry[type[StrategySpec]] = Registry("strategy", package="fedmeta.strategies")
