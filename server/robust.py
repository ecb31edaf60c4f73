"""Byzantine-robust aggregation: Flower's Krum, MultiKrum, FedMedian, FedTrimmedAvg, Bulyan.

Each is a registry entry over the Flower strategy class of the same name, so it gets
:class:`~server.strategies.FedMetaMixin`'s deterministic sampling and held-out evaluation like
FedAvg does. References: Blanchard et al. (2017), "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent" (Krum, MultiKrum); Yin et al. (2018), "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates" (coordinate-wise median and trimmed mean); El
Mhamdi, Guerraoui and Rouault (2018), "The Hidden Vulnerability of Distributed Learning in
Byzantium" (Bulyan).
"""

from __future__ import annotations

from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from pydantic import Field

from fedmeta.options import Options
from server.strategies import STRATEGIES, StrategySpec


class RobustSpec(StrategySpec):
    """A Byzantine-robust aggregator: its aggregate is not a mean of the replies, so neither
    central DP's noise scale nor secure aggregation's masked sum applies to it."""

    mean_aggregation = False


class KrumOptions(Options):
    num_malicious: int = Field(0, ge=0)
    """How many of a round's sampled clients may be Byzantine (Krum's ``f``)."""


@STRATEGIES.register("krum", help="Flower Krum: the update closest to its n - f - 2 neighbours")
class KrumSpec(RobustSpec):
    base = Krum
    Options = KrumOptions
    renames = {"num_malicious": "num_malicious_nodes"}


class MultiKrumOptions(KrumOptions):
    select: int = Field(2, ge=1)
    """How many of the best-scored updates are averaged."""


@STRATEGIES.register("multikrum", help="Flower MultiKrum: average of the m best Krum updates")
class MultiKrumSpec(RobustSpec):
    base = MultiKrum
    Options = MultiKrumOptions
    renames = {"num_malicious": "num_malicious_nodes", "select": "num_nodes_to_select"}


class FedMedianOptions(Options):
    pass


@STRATEGIES.register("fedmedian", help="Flower FedMedian: coordinate-wise median of updates")
class FedMedianSpec(RobustSpec):
    base = FedMedian
    Options = FedMedianOptions


class TrimmedOptions(Options):
    beta: float = Field(0.2, ge=0, lt=0.5)
    """Fraction cut from each end of every coordinate before averaging."""


@STRATEGIES.register("fedtrimmedavg", help="Flower FedTrimmedAvg: coordinate-wise trimmed mean")
class FedTrimmedAvgSpec(RobustSpec):
    base = FedTrimmedAvg
    Options = TrimmedOptions


@STRATEGIES.register("bulyan", help="Flower Bulyan: Krum selection then trimmed mean")
class BulyanSpec(RobustSpec):
    """Needs at least ``4 f + 3`` replies per round (``f = num-malicious``)."""

    base = Bulyan
    Options = KrumOptions
    renames = {"num_malicious": "num_malicious_nodes"}
