"""The strategy spec: a declarative registry entry for a Flower server strategy."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from fedmeta.options import Options
from fedmeta.registry import Registry


class MeanOptions(Options):
    """Options of a strategy whose aggregate is a weighted mean of the replies.

    Attributes
    ----------
    weight : str
        ``"uniform"`` (default): every reply counts the same. ``"examples"``: replies are
        weighted by the client's number of examples (``num-examples``). McMahan et al. (2017)
        weight client ``k`` by ``n_k`` because with ``E`` local epochs of batch size ``B`` it
        takes ``E n_k / B`` local steps: the weights follow the work done. A fedmeta client
        takes ``learner.local-steps`` meta-steps whatever its shard size, so FedAvg's own rule
        gives every reply the same weight; weighting by examples would, under ``quantity-skew``,
        tilt the aggregate towards data-rich hospitals without their having done more steps.
        ``"examples"`` remains available for that purpose. Central DP requires ``"uniform"``.
    """

    weight: Literal["examples", "uniform"] = "uniform"


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
        """The Flower constructor's keyword arguments (fedmeta's own ``weight`` excluded)."""
        fields = [f for f in type(options).model_fields if f not in MeanOptions.model_fields]
        return {cls.renames.get(f, f): getattr(options, f) for f in fields}

    @staticmethod
    def uniform(options: Options) -> bool:
        """Whether replies are weighted equally (always, for aggregates that are no mean)."""
        return getattr(options, "weight", "uniform") == "uniform"


STRATEGIES: Registry[type[StrategySpec]] = Registry("strategy", package="fedmeta.strategies")
