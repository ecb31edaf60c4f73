"""The fedmeta ClientApp: a hospital.

Every message carries the resolved scenario (JSON) and the client it is for (``partition-id``)
in its config record; the client builds the experiment once per process and looks up that
client's shard (a deployed site's node serves its own partition; a simulation node serves
whichever client the server names, see :mod:`server.roster`). Every reply names its client.
Training clients run
their learner's local update and reply with weights (``w + delta``), so Flower's aggregation and
DP wrappers apply unchanged. Held-out clients never train: they adapt on each of their fixed
evaluation tasks and reply with per-task metrics before and after adaptation.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.mods import (
    byzantine_mod,
    deadline_mod,
    fault_mod,
    heldout_fault_mod,
    node_experiment,
    partition_id,
    privacy_mod,
    secure_aggregation_mod,
)
from fedmeta.client_state import StateStore
from fedmeta.evaluate import evaluate_tasks
from fedmeta.experiment import Experiment, data_loads, scenario_clients
from fedmeta.learners.base import LocalContext
from fedmeta.protocol import (
    ARRAYS,
    CHECKPOINT_ROUND,
    CLIENT_STATE_DIR,
    COMPUTE_SECONDS,
    CONFIG,
    DATA_LOADS,
    EVAL_INNER_STEPS,
    INFO,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    PLACEMENT,
    PROXIMAL_MU,
    RAY_NODE,
    SCENARIO,
    SERVER_ROUND,
    UNIT_WEIGHT,
    WORKER,
)

app = ClientApp()


def _setup(msg: Message, context: Context) -> Experiment:
    exp = node_experiment(str(msg.content[CONFIG][SCENARIO]), context)
    torch.set_num_threads(exp.scenario.backend.torch_threads)
    return exp


def _placement(pid: int) -> RecordDict:
    """Who answers (the client ``pid``) and where it runs: its process and, under a
    simulation, its Ray node."""
    where = ConfigRecord({PARTITION_ID: pid, WORKER: os.getpid()})
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        where[RAY_NODE] = ray.get_runtime_context().get_node_id()[:12]
    return RecordDict({PLACEMENT: where})


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this node's partition id (the server maps node ids to partitions once). A node
    whose partition the scenario names also loads its data now; any other node is ignored."""
    pid = int(context.node_config[PARTITION_ID])
    if pid < scenario_clients(str(msg.content[CONFIG][SCENARIO])):
        _setup(msg, context)
    info = MetricRecord({PARTITION_ID: pid})
    return Message(RecordDict({INFO: info}), reply_to=msg)


@app.train(mods=[deadline_mod, secure_aggregation_mod, privacy_mod, byzantine_mod, fault_mod])
def train(msg: Message, context: Context) -> Message:
    """Local meta-training from the global meta-parameters on this client's tasks."""
    exp, pid = _setup(msg, context), partition_id(msg, context)
    if exp.is_heldout(pid):
        raise RuntimeError(f"held-out client {pid} was asked to train")
    t0 = time.perf_counter()
    params = exp.to_device(msg.content[ARRAYS].to_torch_state_dict())
    config = msg.content[CONFIG]
    rnd = int(config[SERVER_ROUND])
    sample = exp.train_sampler(pid, rnd)
    store = StateStore(str(config[CLIENT_STATE_DIR]), pid) if CLIENT_STATE_DIR in config else None
    state = store.load(rnd) if store is not None else {}
    ctx = LocalContext(
        proximal_mu=float(config[PROXIMAL_MU]) if PROXIMAL_MU in config else 0.0,
        state={key: exp.to_device(tensors) for key, tensors in state.items()},
        sample_rate=exp.sampler(pid).inclusion_probability(),
        server_round=rnd,
    )
    with exp.training_precision():
        new_params, metrics = exp.local_learner.local_update(params, sample, ctx)
    if store is not None and ctx.state:
        store.save(rnd, ctx.state, int(config[CHECKPOINT_ROUND]))
    metrics = {
        **metrics,
        NUM_EXAMPLES: exp.shard(pid).size,
        UNIT_WEIGHT: 1,
        COMPUTE_SECONDS: time.perf_counter() - t0,
        DATA_LOADS: data_loads(),
    }
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({k: v.cpu() for k, v in new_params.items()}),
            METRICS: MetricRecord(metrics),
            **_placement(pid),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate(mods=[deadline_mod, heldout_fault_mod])
def evaluate(msg: Message, context: Context) -> Message:
    """Adapt on each fixed evaluation task's support set and score its query set."""
    exp, pid = _setup(msg, context), partition_id(msg, context)
    params = exp.to_device(msg.content[ARRAYS].to_torch_state_dict())
    config = msg.content[CONFIG]
    steps = int(config[EVAL_INNER_STEPS]) if EVAL_INNER_STEPS in config else None
    tasks = exp.eval_tasks(pid)
    results = evaluate_tasks(exp.learner, params, tasks, exp.source.kind, steps=steps)
    metrics = MetricRecord({**results, NUM_EXAMPLES: len(tasks)})
    return Message(RecordDict({METRICS: metrics, **_placement(pid)}), reply_to=msg)
