"""Server strategies: the Flower strategy a spec names, made deterministic and held-out aware.

A fedmeta strategy is the Flower strategy class of a :class:`~fedmeta.strategies.StrategySpec`
(FedAvg, FedAvgM, FedAdam, FedProx, Krum, ...) with :class:`FedMetaMixin` in front of it. The
mixin overrides only ``configure_train``, ``configure_evaluate``, ``aggregate_train`` and
``aggregate_evaluate``:

* training messages go to a deterministic sample of *training* clients
  (``rng_for(seed, round, Stream.SAMPLE)`` over their partition ids), each message naming its
  client and sent to the node the :class:`~server.roster.Roster` gives it;
* evaluation messages go to *held-out* clients, on evaluation rounds only;
* replies are sorted by partition id before Flower aggregates them, so float sums are
  reproducible;
* held-out metrics are pooled over tasks, with a 95% confidence interval.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, ClassVar

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedmeta.options import Options
from fedmeta.protocol import NUM_EXAMPLES, UNIT_WEIGHT, Stream, rng_for, sample_size
from fedmeta.scenario import Scenario
from fedmeta.strategies import STRATEGIES, StrategySpec
from server.evaluation import pool_heldout_metrics
from server.roster import Roster, reply_partition


class _SubsetGrid:
    """A view of a Grid that exposes only the chosen node ids (Flower's samplers then take all
    of them) and forwards everything else."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class FedMetaMixin:
    """Deterministic sampling and held-out evaluation on top of a Flower strategy class.

    Call :meth:`bind` once the roster (which node serves which client) is known.
    """

    spec: ClassVar[type[StrategySpec]]

    def bind(
        self,
        roster: Roster,
        n_train: int,
        n_heldout: int,
        fraction: float,
        seed: int,
        eval_rounds: set[int],
        dropout: float = 0.0,
    ) -> None:
        self.roster, self.n_train = roster, n_train
        self.heldout = list(range(n_train, n_train + n_heldout))
        self.fraction, self.seed, self.eval_rounds = fraction, seed, eval_rounds
        self.dropout, self.dropped = dropout, 0

    def sample_train(self, server_round: int) -> list[int]:
        """A seeded sample of ``fraction`` of the training clients (partition ids, sorted); with
        ``dropout``, each sampled client then drops out of the round with that probability (at
        least one stays). ``self.dropped`` counts the dropped ones."""
        k = sample_size(self.fraction, self.n_train)
        rng = rng_for(self.seed, server_round, Stream.SAMPLE)
        picked = sorted(int(i) for i in rng.choice(self.n_train, size=k, replace=False))
        stay = [i for i in picked if rng.uniform() >= self.dropout] if self.dropout else picked
        stay = stay or picked[:1]
        self.dropped = len(picked) - len(stay)
        return stay

    def _sorted(self, replies: Iterable[Message]) -> list[Message]:
        """Successful replies ordered by client (errors first), so float sums are reproducible."""
        return sorted(replies, key=lambda m: -1 if m.has_error() else reply_partition(m))

    def _addressed(self, messages: Iterable[Message], pids: list[int]) -> list[Message]:
        """The Flower strategy's message (configured for one node) once per client ``pids``."""
        template = next(iter(messages), None)
        return [] if template is None else self.roster.address(template, pids)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        pids = self.sample_train(server_round)
        view = _SubsetGrid(grid, self.roster.nodes(pids[:1]))
        one = super().configure_train(server_round, arrays, config, view)  # type: ignore[misc]
        return self._addressed(one, pids)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's aggregate of the replies sorted by partition, in the dtypes the clients
        sent (FedAdam's step is a NumPy float64 scalar, which would turn float32 weights into
        float64 under NumPy 2's promotion rules)."""
        replies = self._sorted(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        sent = next((r.content.array_records for r in replies if not r.has_error()), None)
        if arrays is not None and sent:
            dtypes = {k: a.numpy().dtype for k, a in next(iter(sent.values())).items()}
            out = {k: a.numpy() for k, a in arrays.items()}
            arrays = ArrayRecord(
                {k: Array(v.astype(dtypes.get(k, v.dtype), copy=False)) for k, v in out.items()}
            )
        return arrays, metrics

    def configure_evaluate(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        pids: list[int] | None = None,
    ) -> Iterable[Message]:
        """Evaluation messages to the held-out clients ``pids`` (at most the roster's
        capacity; by default every held-out client), on evaluation rounds only."""
        pids = self.heldout[: self.roster.capacity] if pids is None else pids
        if server_round not in self.eval_rounds or not pids:  # Flower would wait for a node
            return []
        view = _SubsetGrid(grid, self.roster.nodes(pids[:1]))
        one = super().configure_evaluate(server_round, arrays, config, view)  # type: ignore[misc]
        return self._addressed(one, pids)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        valid = [m for m in self._sorted(replies) if not m.has_error()]
        if not valid:
            return None
        return pool_heldout_metrics([m.content for m in valid])

    def state(self) -> dict[str, Any]:
        """The server optimiser's state that the spec declares, for checkpoints."""
        return {k: getattr(self, k) for k in self.spec.state if hasattr(self, k)}

    def load_state(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def flower_class(spec: type[StrategySpec]) -> type:
    """The Flower strategy class a spec names (``"FedAvg"`` or ``"module:Class"``)."""
    module, _, name = spec.flower.rpartition(":")
    return getattr(importlib.import_module(module or "flwr.serverapp.strategy"), name)


def reply_weight_key(scenario: Scenario) -> str:
    """The reply metric the aggregate weights by: ``unit-weight`` (1 for every reply) when
    ``strategy.weight = "uniform"``, else ``num-examples``."""
    spec = STRATEGIES.get(scenario.strategy.name, key="strategy.name")
    return UNIT_WEIGHT if spec.uniform(scenario.strategy.options) else NUM_EXAMPLES


def build_strategy(
    name: str, options: Options, weighted_by_key: str = NUM_EXAMPLES
) -> FedMetaMixin:
    """Instantiate the fedmeta strategy named ``name`` (sampling is done by the mixin, so
    Flower's own fractions are 1 and its minimums 1). Replies are weighted by their metric
    ``weighted_by_key``."""
    spec = STRATEGIES.get(name, key="strategy.name")
    base = flower_class(spec)
    cls = type(f"FedMeta{base.__name__}", (FedMetaMixin, base), {"spec": spec})
    return cls(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=weighted_by_key,
        **spec.kwargs(options),
    )
