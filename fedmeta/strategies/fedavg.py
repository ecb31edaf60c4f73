"""The FedAvg family: Flower's FedAvg, FedAvgM, FedAdam and FedProx.

McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks from Decentralized
Data" (FedAvg); Hsu, Qi and Brown (2019), "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification" (FedAvgM); Reddi et al. (2021), "Adaptive
Federated Optimization" (FedAdam); Li et al. (2020), "Federated Optimization in Heterogeneous
Networks" (FedProx).
"""

from __future__ import annotations

from pydantic import Field

from fedmeta.strategies.base import STRATEGIES, MeanOptions, StrategySpec


class FedAvgOptions(MeanOptions):
    pass


@STRATEGIES.register("fedavg", help="Flower FedAvg: weighted mean of client weights")
class FedAvgSpec(StrategySpec):
    flower = "FedAvg"
    Options = FedAvgOptions


class FedAvgMOptions(MeanOptions):
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)


@STRATEGIES.register("fedavgm", help="Flower FedAvgM: server SGD with momentum")
class FedAvgMSpec(StrategySpec):
    flower = "FedAvgM"
    Options = FedAvgMOptions
    renames = {"server_lr": "server_learning_rate", "momentum": "server_momentum"}
    state = ("current_arrays", "momentum_vector")


class FedAdamOptions(MeanOptions):
    eta: float = Field(1e-2, gt=0)
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


@STRATEGIES.register("fedadam", help="Flower FedAdam: server Adam on the averaged update")
class FedAdamSpec(StrategySpec):
    flower = "FedAdam"
    Options = FedAdamOptions
    state = ("current_arrays", "m_t", "v_t")


class FedProxOptions(MeanOptions):
    proximal_mu: float = Field(0.01, ge=0)


@STRATEGIES.register("fedprox", help="Flower FedProx: FedAvg + a proximal term in local training")
class FedProxSpec(StrategySpec):
    """Flower's FedProx sends ``proximal-mu`` with every training message; clients add
    ``mu / 2 * ||w - w_global||^2`` to their local objective (any learner)."""

    flower = "FedProx"
    Options = FedProxOptions
