"""Secure aggregation: one training round through Flower's SecAgg+ workflow.

Bell, Bonawitz, Gascon, Lepoint and Raykova (2020), "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS. Every sampled client quantizes its reply, adds pairwise and
private masks, and the server only ever sees the masked vectors and their sum; Shamir shares let
it remove the masks of clients that drop out.

In flwr 1.41 SecAgg+ exists only as the legacy ``SecAggPlusWorkflow`` (FitIns/FitRes layout and
a legacy strategy's ``configure_fit``/``aggregate_fit``). :class:`_LegacyShim` gives it those two
hooks over the messages the fedmeta strategy configured; the client side converts layouts in
``clients.mods.secure_aggregation_mod``. The workflow hands the shim the unmasked weighted mean,
which is passed to the fedmeta strategy's ``aggregate_train`` as every client's reply, so
FedAvgM/FedAdam's server step and a client-side DP wrapper's noise apply to it unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid

from fedmeta.privacy.options import PrivacyOptions
from fedmeta.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    PARTITION_ID,
    PLACEMENT,
    SECAGG_NAMES,
    SECAGG_WEIGHT_KEY,
    SERVER_ROUND,
)
from server.roster import sent_partition


class _Proxy:
    """The only part of a legacy ClientProxy the workflow uses."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _LegacyShim:
    """The two legacy-strategy hooks ``SecAggPlusWorkflow`` calls."""

    def __init__(self, messages: list[Message], weight_key: str) -> None:
        self.messages, self.weight_key = messages, weight_key
        self.results: list[tuple[Any, Any]] = []
        self.failures: list[Any] = []

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any):
        out = []
        for msg in self.messages:
            arrays = msg.content[ARRAYS]
            config = {**dict(msg.content[CONFIG]), SECAGG_NAMES: json.dumps(list(arrays.keys()))}
            config[SECAGG_WEIGHT_KEY] = self.weight_key
            params = ndarrays_to_parameters(arrays.to_numpy_ndarrays())
            out.append((_Proxy(msg.metadata.dst_node_id), FitIns(params, config)))
        return out

    def aggregate_fit(self, server_round: int, results: list, failures: list):
        self.results, self.failures = results, failures
        return None, {}


def secure_round(
    grid: Grid,
    messages: list[Message],
    options: PrivacyOptions,
    weight_key: str,
    max_weight: float,
    timeout: float | None,
) -> list[Message]:
    """Run SecAgg+ over the configured training ``messages``.

    Returns one reply per client that finished, each carrying the *aggregate* weights and that
    client's own metrics (with weight 1). Raises
    ``RuntimeError`` when the protocol halts (too many dropouts for the threshold).
    """
    if not messages:
        return []
    shim = _LegacyShim(messages, weight_key)
    n = len(messages)
    shares = options.secagg_shares or n
    threshold = options.secagg_threshold or max(2, -(-2 * shares // 3))
    workflow = SecAggPlusWorkflow(
        num_shares=shares if shares < n else 1.0,
        reconstruction_threshold=threshold,
        max_weight=max_weight,
        clipping_range=options.secagg_clipping_range,
        timeout=timeout,
    )
    state = RecordDict()
    server_round = int(messages[0].content[CONFIG][SERVER_ROUND])
    state.config_records["config"] = ConfigRecord({"current_round": server_round})
    state.array_records["parameters"] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(messages[0].content[ARRAYS].to_numpy_ndarrays()), True
    )
    base = Context(run_id=0, node_id=0, node_config={}, state=state, run_config={})
    workflow(grid, LegacyContext(base, strategy=shim))  # type: ignore[arg-type]
    if not shim.results:
        raise RuntimeError(
            "secure aggregation halted: too few clients answered for the reconstruction threshold"
        )
    sent = messages[0].content[ARRAYS]
    mean = parameters_to_ndarrays(shim.results[0][1].parameters)  # float64 after dequantizing
    dtypes = [a.dtype for a in sent.to_numpy_ndarrays()]
    aggregate = ArrayRecord(
        {k: Array(v.astype(t)) for k, v, t in zip(sent.keys(), mean, dtypes, strict=True)}
    )
    by_node = {proxy.node_id: fitres for proxy, fitres in shim.results}
    replies = []
    for msg in messages:
        fitres = by_node.get(msg.metadata.dst_node_id)
        if fitres is not None:
            metrics = MetricRecord({**fitres.metrics, weight_key: 1})
            placement = ConfigRecord({PARTITION_ID: sent_partition(msg)})
            content = RecordDict({ARRAYS: aggregate, METRICS: metrics, PLACEMENT: placement})
            replies.append(Message(content, reply_to=msg))
    return replies
