"""Server strategies: Flower's FedAvg family, made deterministic and held-out aware.

A fedmeta strategy is a Flower strategy class (FedAvg, FedAvgM or FedAdam) with
:class:`FedMetaMixin` in front of it. The mixin overrides only ``configure_train``,
``configure_evaluate``, ``aggregate_train`` and ``aggregate_evaluate``:

* training messages go to a deterministic sample of *training* clients
  (``np.random.default_rng([seed, round])`` over the partition-sorted list);
* evaluation messages go to every *held-out* client, on evaluation rounds only;
* replies are sorted by partition id before Flower aggregates them, so float sums are
  reproducible;
* held-out metrics are pooled over tasks, with a 95% confidence interval.

Server optimisers: McMahan et al. (2017) FedAvg; Hsu, Qi and Brown (2019) FedAvgM; Reddi et al.
(2021), "Adaptive Federated Optimization", FedAdam; Li et al. (2020) FedProx.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx
from pydantic import Field

from fedmeta.options import Options
from fedmeta.registry import Registry
from server.evaluation import pool_heldout_metrics


class _SubsetGrid:
    """A view of a Grid that exposes only the chosen node ids (Flower's samplers then take all
    of them) and forwards everything else."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def sample_size(fraction: float, n_train: int) -> int:
    """How many of ``n_train`` training clients a round samples (before dropout). Central DP
    calibrates its noise and its accountant's sampling rate to this number."""
    return max(1, round(fraction * n_train))


class FedMetaMixin:
    """Deterministic sampling and held-out evaluation on top of a Flower FedAvg-family class.

    Call :meth:`bind` once the node -> partition map is known.
    """

    def bind(
        self,
        partition_of: dict[int, int],
        n_train: int,
        fraction: float,
        seed: int,
        eval_rounds: set[int],
        dropout: float = 0.0,
    ) -> None:
        self.partition_of = partition_of
        by_pid = sorted(partition_of, key=partition_of.get)
        self.train_nodes = [n for n in by_pid if partition_of[n] < n_train]
        self.heldout_nodes = [n for n in by_pid if partition_of[n] >= n_train]
        self.fraction, self.seed, self.eval_rounds = fraction, seed, eval_rounds
        self.dropout, self.dropped = dropout, 0

    def sample_train_nodes(self, server_round: int) -> list[int]:
        """A seeded sample of ``fraction`` of the training clients; with ``dropout``, each
        sampled client then drops out of the round with that probability (at least one
        stays). ``self.dropped`` counts the dropped ones."""
        k = sample_size(self.fraction, len(self.train_nodes))
        rng = np.random.default_rng([self.seed, server_round, 0x7A1])
        picked = sorted(rng.choice(len(self.train_nodes), size=k, replace=False))
        stay = [i for i in picked if rng.uniform() >= self.dropout] if self.dropout else picked
        stay = stay or picked[:1]
        self.dropped = len(picked) - len(stay)
        return [self.train_nodes[i] for i in stay]

    def _sorted(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(replies, key=lambda m: self.partition_of[m.metadata.src_node_id])

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        view = _SubsetGrid(grid, self.sample_train_nodes(server_round))
        return super().configure_train(server_round, arrays, config, view)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, self._sorted(replies))  # type: ignore[misc]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round not in self.eval_rounds:
            return []
        view = _SubsetGrid(grid, self.heldout_nodes)
        return super().configure_evaluate(server_round, arrays, config, view)  # type: ignore[misc]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        valid = [m for m in self._sorted(replies) if not m.has_error()]
        if not valid:
            return None
        return pool_heldout_metrics([m.content for m in valid])

    def state(self) -> dict[str, Any]:
        """The server optimiser's state, for checkpoints (momentum, Adam moments)."""
        return {k: getattr(self, k) for k in STATEFUL if hasattr(self, k)}

    def load_state(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


STATEFUL = ("current_arrays", "momentum_vector", "m_t", "v_t")


class StrategySpec:
    """A registry entry: the Flower base class and the options it takes. Every option is
    passed to the Flower constructor under its own name, or under ``renames[name]``."""

    base: type[FedAvg] = FedAvg
    Options: type[Options]
    renames: ClassVar[dict[str, str]] = {}
    mean_aggregation: ClassVar[bool] = True
    """Whether the aggregate is a (weighted) mean of the replies, which central DP's noise
    scale and secure aggregation's masked sum both assume."""

    @classmethod
    def kwargs(cls, options: Options) -> dict[str, Any]:
        return {cls.renames.get(f, f): getattr(options, f) for f in type(options).model_fields}


STRATEGIES: Registry[type[StrategySpec]] = Registry("strategy")


class FedAvgOptions(Options):
    pass


@STRATEGIES.register("fedavg", help="Flower FedAvg: weighted mean of client weights")
class FedAvgSpec(StrategySpec):
    base = FedAvg
    Options = FedAvgOptions


class FedAvgMOptions(Options):
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)


@STRATEGIES.register("fedavgm", help="Flower FedAvgM: server SGD with momentum")
class FedAvgMSpec(StrategySpec):
    base = FedAvgM
    Options = FedAvgMOptions
    renames = {"server_lr": "server_learning_rate", "momentum": "server_momentum"}


class FedAdamOptions(Options):
    eta: float = Field(1e-2, gt=0)
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


@STRATEGIES.register("fedadam", help="Flower FedAdam: server Adam on the averaged update")
class FedAdamSpec(StrategySpec):
    base = FedAdam
    Options = FedAdamOptions


class FedProxOptions(Options):
    proximal_mu: float = Field(0.01, ge=0)


@STRATEGIES.register("fedprox", help="Flower FedProx: FedAvg + a proximal term in local training")
class FedProxSpec(StrategySpec):
    """Li et al. (2020), "Federated Optimization in Heterogeneous Networks", MLSys. Flower's
    FedProx sends ``proximal-mu`` with every training message; clients add
    ``mu / 2 * ||w - w_global||^2`` to their local objective (any learner)."""

    base = FedProx
    Options = FedProxOptions


def build_strategy(name: str, options: Any, weighted_by_key: str = "num-examples") -> FedMetaMixin:
    """Instantiate the fedmeta strategy named ``name`` (sampling is done by the mixin, so
    Flower's own fractions are 1 and its minimums 1). Replies are weighted by their metric
    ``weighted_by_key``."""
    spec = STRATEGIES.get(name, key="strategy.name")
    cls = type(f"FedMeta{spec.base.__name__}", (FedMetaMixin, spec.base), {})
    return cls(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=weighted_by_key,
        **spec.kwargs(options),
    )


# Registered in their own module; imported here so that STRATEGIES is complete.
from server import robust  # noqa: E402, F401
