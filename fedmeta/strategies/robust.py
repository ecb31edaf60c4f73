"""Byzantine-robust aggregation: Flower's Krum, MultiKrum, FedMedian, FedTrimmedAvg, Bulyan.

Each is a registry entry over the Flower strategy class of the same name, so the server gives
it the same deterministic sampling and held-out evaluation as FedAvg. References: Blanchard
et al. (2017), "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (Krum,
MultiKrum); Yin et al. (2018), "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (coordinate-wise median and trimmed mean); El Mhamdi, Guerraoui and Rouault
(2018), "The Hidden Vulnerability of Distributed Learning in Byzantium" (Bulyan).
"""

from __future__ import annotations

from pydantic import Field

from fedmeta.options import Options
from fedmeta.strategies.base import STRATEGIES, StrategySpec


class RobustSpec(StrategySpec):
    """A Byzantine-robust aggregator: its aggregate is not a mean of the replies, so neither
    central DP's noise scale nor secure aggregation's masked sum applies to it."""

    mean_aggregation = False


class KrumOptions(Options):
    num_malicious: int = Field(0, ge=0)
    """How many of a round's sampled clients may be Byzantine (Krum's ``f``)."""


@STRATEGIES.register("krum", help="Flower Krum: the update closest to its n - f - 2 neighbours")
class KrumSpec(RobustSpec):
    flower = "Krum"
    Options = KrumOptions
    renames = {"num_malicious": "num_malicious_nodes"}


class MultiKrumOptions(KrumOptions):
    select: int = Field(2, ge=1)
    """How many of the best-scored updates are averaged."""


@STRATEGIES.register("multikrum", help="Flower MultiKrum: average of the m best Krum updates")
class MultiKrumSpec(RobustSpec):
    flower = "MultiKrum"
    Options = MultiKrumOptions
    renames = {"num_malicious": "num_malicious_nodes", "select": "num_nodes_to_select"}


class FedMedianOptions(Options):
    pass


@STRATEGIES.register("fedmedian", help="Flower FedMedian: coordinate-wise median of updates")
class FedMedianSpec(RobustSpec):
    flower = "FedMedian"
    Options = FedMedianOptions


class TrimmedOptions(Options):
    beta: float = Field(0.2, ge=0, lt=0.5)
    """Fraction cut from each end of every coordinate before averaging."""


@STRATEGIES.register("fedtrimmedavg", help="Flower FedTrimmedAvg: coordinate-wise trimmed mean")
class FedTrimmedAvgSpec(RobustSpec):
    flower = "FedTrimmedAvg"
    Options = TrimmedOptions


@STRATEGIES.register("bulyan", help="Flower Bulyan: Krum selection then trimmed mean")
class BulyanSpec(RobustSpec):
    """Needs at least ``4 f + 3`` replies per round (``f = num-malicious``)."""

    flower = "Bulyan"
    Options = KrumOptions
    renames = {"num_malicious": "num_malicious_nodes"}
