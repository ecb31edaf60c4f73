"""Client mods: behaviour wrapped around the ClientApp's handlers, outside every learner.

Order on the training handler (outermost first): :func:`secure_aggregation_mod`,
:func:`privacy_mod`, :func:`byzantine_mod`, :func:`fault_mod`. So a Byzantine reply is still
clipped and noised by the client's privacy mods, what SecAgg+ masks is exactly what would have
been sent, and an injected fault happens where a real one would: in the local update.
"""

from __future__ import annotations

import functools
import json
import time

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from fedmeta.adversary import attack_weights
from fedmeta.experiment import Experiment, experiment_from_json
from fedmeta.faults import draw_fault, heldout_crashes
from fedmeta.privacy.dpsgd import REPORTED
from fedmeta.privacy.options import PrivacyOptions
from fedmeta.protocol import (
    ARRAYS,
    ATTEMPT,
    COMPUTE_SECONDS,
    CONFIG,
    DATA_LOADS,
    DATA_ROOT,
    DEADLINE,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    SCENARIO,
    SECAGG_NAMES,
    SECAGG_WEIGHT_KEY,
    SERVER_ROUND,
    UNIT_WEIGHT,
    Stream,
    rng_for,
)

CLIPPING_MODS = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}


def node_experiment(scenario_json: str, context: Context) -> Experiment:
    """This node's (cached) experiment of a scenario sent as JSON; a node config's
    ``data-root`` (a deployed site's own data folder) replaces the scenario's ``data.root``."""
    root = context.node_config.get(DATA_ROOT)
    return experiment_from_json(scenario_json, None if root is None else str(root))


def partition_id(msg: Message, context: Context, config: ConfigRecord | None = None) -> int:
    """The client a message is for: the one its config (or ``config``) names (a simulation
    node serves any client the server names), else the node's own partition (a deployed
    site)."""
    config = msg.content.config_records.get(CONFIG) if config is None else config
    if config is not None and PARTITION_ID in config:
        return int(config[PARTITION_ID])
    return int(context.node_config[PARTITION_ID])


def _experiment(msg: Message, context: Context) -> Experiment:
    return node_experiment(str(msg.content[CONFIG][SCENARIO]), context)


def _seed_numpy(exp: Experiment, config: ConfigRecord, pid: int, *keys: int) -> None:
    """Seed numpy's global generator (which Flower's DP and SecAgg+ code draws from) per
    scenario seed, round, client ``pid`` and ``keys``, so private runs are reproducible."""
    rnd = int(config[SERVER_ROUND])
    np.random.seed(rng_for(exp.scenario.seed, Stream.NOISE, rnd, pid, *keys).integers(2**32))


def byzantine_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Replace a Byzantine client's training reply by its attack (see :mod:`fedmeta.adversary`);
    honest clients, and every client without ``[adversary]``, pass through unchanged."""
    reply = call_next(msg, context)
    exp = _experiment(msg, context)
    pid = partition_id(msg, context)
    if reply.has_error() or pid not in exp.byzantine:
        return reply
    sent = msg.content[ARRAYS].to_torch_state_dict()
    honest = reply.content[ARRAYS].to_torch_state_dict()
    rnd = int(msg.content[CONFIG][SERVER_ROUND])
    rng = rng_for(exp.scenario.seed, Stream.ADVERSARY, Stream.TRAIN, rnd, pid)
    reply.content[ARRAYS] = ArrayRecord(attack_weights(exp.scenario.adversary, sent, honest, rng))
    return reply


def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Inject the fault this training client draws this round (:mod:`fedmeta.faults`): raise,
    sleep past the server's timeout, or reply with NaN weights."""
    exp = _experiment(msg, context)
    faults = exp.scenario.faults
    if not faults.active:
        return call_next(msg, context)
    rnd, pid = int(msg.content[CONFIG][SERVER_ROUND]), partition_id(msg, context)
    kind = draw_fault(faults, exp.scenario.seed, rnd, pid)
    if kind == "crash":
        raise RuntimeError(f"injected fault: client {pid} crashed in round {rnd}")
    if kind == "straggle":
        time.sleep(faults.straggle_seconds or exp.scenario.train.timeout + 1.0)
    reply = call_next(msg, context)
    if kind == "nan" and not reply.has_error():
        arrays = reply.content[ARRAYS]
        nan = {k: np.full_like(arrays[k].numpy(), np.nan) for k in arrays}
        reply.content[ARRAYS] = ArrayRecord({k: Array(v) for k, v in nan.items()})
    return reply


def deadline_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Skip an instruction whose round already stopped waiting (its ``deadline`` passed): reply
    at once with an error, which the server drops as a late reply.

    A simulation runs clients on a few Ray actors and queues the rest, and Flower runs a queued
    instruction even after its round timed out; without this, the work queued behind a
    straggler spills into the next rounds, which then time out too. A deployed client that
    starts after the deadline (by its own clock) saves the work as well.
    """
    config = msg.content.config_records.get(CONFIG)
    if config is not None and DEADLINE in config and time.time() > float(config[DEADLINE]):
        reason = "skipped: its round had stopped waiting before this client started"
        return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, reason), reply_to=msg)
    return call_next(msg, context)


def heldout_fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Make a held-out client's evaluation raise when it draws ``heldout-crash``."""
    exp = _experiment(msg, context)
    config = msg.content[CONFIG]
    rnd, pid = int(config[SERVER_ROUND]), partition_id(msg, context)
    attempt = int(config[ATTEMPT]) if ATTEMPT in config else 0
    if heldout_crashes(exp.scenario.faults, exp.scenario.seed, rnd, pid, attempt):
        raise RuntimeError(f"injected fault: held-out client {pid} crashed in round {rnd}")
    return call_next(msg, context)


@functools.lru_cache(maxsize=4)
def _privacy_chain(options: PrivacyOptions) -> tuple:
    """Flower's client mods that ``[privacy]`` asks for, outermost first."""
    chain: list = []
    if options.central in CLIPPING_MODS:
        chain.append(CLIPPING_MODS[options.central])
    if options.local_epsilon is not None:
        # any two clipped updates are at most 2 C apart: local DP's sensitivity
        c = options.clipping_norm
        chain.append(LocalDpMod(c, 2 * c, options.local_epsilon, options.local_delta))
    return tuple(chain)


PUBLIC_METRICS = frozenset(
    {NUM_EXAMPLES, UNIT_WEIGHT, COMPUTE_SECONDS, DATA_LOADS, KEY_NORM_BIT, *REPORTED}
)
"""Reply metrics that say nothing about a client's data (counts, timing, the clipping bit of
adaptive clipping, DP-SGD's ledger entry). Under DP every other metric (training losses) is
dropped: it would be released without noise or accounting."""


def privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's client-side DP mods that the scenario's ``[privacy]`` table enables
    (``fixedclipping_mod``/``adaptiveclipping_mod`` for client-side clipping, ``LocalDpMod``
    for local DP) and, under any DP, keep only the :data:`PUBLIC_METRICS` of the reply.
    Without DP the message passes through unchanged."""
    exp = _experiment(msg, context)
    options = exp.scenario.privacy
    if not options.dp:
        return call_next(msg, context)
    _seed_numpy(exp, msg.content[CONFIG], partition_id(msg, context))
    handler = call_next
    for mod in reversed(_privacy_chain(options)):
        handler = functools.partial(mod, call_next=handler)
    reply = handler(msg, context)
    if not reply.has_error():
        metrics = reply.content[METRICS]
        reply.content[METRICS] = MetricRecord(
            {k: v for k, v in metrics.items() if k in PUBLIC_METRICS}
        )
    return reply


# -- secure aggregation ----------------------------------------------------------------------


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _legacy_step(call_next: ClientAppCallable) -> ClientAppCallable:
    """The training step SecAgg+ wraps: legacy FitIns in, fedmeta's chain, legacy FitRes out."""

    def step(msg: Message, context: Context) -> Message:
        ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        config = dict(ins.config)
        names = json.loads(str(config.pop(SECAGG_NAMES)))
        weight_key = str(config.pop(SECAGG_WEIGHT_KEY))
        arrays = dict(zip(names, parameters_to_ndarrays(ins.parameters), strict=True))
        msg.content = RecordDict({ARRAYS: _record(arrays), CONFIG: ConfigRecord(config)})
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        arrays = reply.content[ARRAYS]
        out = [arrays[name].numpy() for name in names]  # the order the server sent
        metrics = dict(reply.content[METRICS])
        fitres = FitRes(
            status=Status(code=Code.OK, message=""),
            parameters=ndarrays_to_parameters(out),
            num_examples=int(metrics[weight_key]),
            metrics=metrics,
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    return step


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ messages; everything else passes through.

    SecAgg+ speaks the legacy FitIns/FitRes layout, so the training step it wraps converts the
    message to fedmeta's layout, runs the rest of the chain, and converts the reply back. Its
    weight is the reply metric the server names (``num-examples``, or ``unit-weight`` under
    central DP). The masks are drawn from ``os.urandom`` and cancel exactly; numpy's generator
    (stochastic rounding in the quantizer) is seeded for reproducibility."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    if "fitins.config" in msg.content.config_records:  # the stage that quantizes
        config = msg.content.config_records["fitins.config"]
        pid = partition_id(msg, context, config)
        _seed_numpy(node_experiment(str(config[SCENARIO]), context), config, pid, 1)
    return secaggplus_mod(msg, context, _legacy_step(call_next))
