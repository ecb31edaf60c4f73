"""What the ClientApp and the ServerApp agree on, in one place that both import.

* the names of records and of the metrics and config keys in them (kebab-case);
* the random streams: every random draw of a run comes from ``rng_for(seed, stream, ...)``, so a
  scenario and its seed fix the partition, the sampled clients, the tasks and all noise;
* the clients-per-round rule, which the server's sampling and the DP accountant share.

Nothing here imports Flower: the core, the server and the clients all depend on this module.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """Random-stream ids, the second entropy word after the scenario seed (their values are
    part of a run's identity: changing one changes every metric drawn from it)."""

    TRAIN = 1
    """A client's training tasks of one round (``TRAIN, round, partition``)."""
    EVAL = 2
    """A held-out client's fixed evaluation tasks (``EVAL, held-out index``)."""
    INIT = 3
    """The initial meta-parameters."""
    SKEW = 4
    """Per-client feature and label skew (``SKEW, held-out?, index``)."""
    ADVERSARY = 5
    """Which training clients are Byzantine, and their noise."""
    NOISE = 6
    """Numpy's global generator, which Flower's DP and SecAgg+ code draw from."""
    AUDIT = 7
    """The privacy audit: held-back examples, audited clients and tasks."""
    FAULTS = 8
    """Injected faults (``FAULTS, round, partition[, attempt]``)."""
    EVAL_SAMPLE = 9
    """The held-out clients scored in one evaluation round (``EVAL_SAMPLE, round``), when
    ``evaluation.clients`` asks for a sample."""
    AUGMENT = 10
    """A training client's distortions of its images in one round (``AUGMENT, round,
    partition``)."""
    SAMPLE = 0x7A1
    """The server's sample of training clients (``round, SAMPLE``: the round comes first)."""
    PARTITION = 0x5EED
    """The training clients' partition."""
    HELDOUT = 0x4E1D
    """The held-out clients' split of the held-out pool."""


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator determined by the scenario seed and integer keys (stream, round, client)."""
    return np.random.default_rng([seed, *(int(k) for k in keys)])


def torch_seed_for(seed: int, *keys: int) -> int:
    """A torch seed determined like :func:`rng_for`."""
    return int(rng_for(seed, *keys).integers(2**62))


def sample_size(fraction: float, n_train: int) -> int:
    """How many of ``n_train`` training clients a round samples (before dropout). Central DP
    calibrates its noise and its accountant's sampling rate to this number."""
    return max(1, round(fraction * n_train))


# -- records ---------------------------------------------------------------------------------
ARRAYS, METRICS, CONFIG, INFO = "arrays", "metrics", "config", "info"
"""Record names in a message's content."""

# -- config keys (server -> client) -----------------------------------------------------------
SCENARIO = "scenario"
"""The resolved scenario as JSON (:meth:`fedmeta.scenario.Scenario.to_json`)."""
EVAL_INNER_STEPS = "eval-inner-steps"
"""Adaptation steps at evaluation, when the scenario overrides the learner's."""
SERVER_ROUND = "server-round"
"""Set by Flower's strategies on every message."""
PROXIMAL_MU = "proximal-mu"
"""Set by Flower's FedProx on training messages."""
CLIENT_STATE_DIR = "client-state-dir"
"""Where stateful learners keep their per-client state (:mod:`fedmeta.client_state`)."""
CHECKPOINT_ROUND = "checkpoint-round"
"""The server's last checkpointed round (client state older than what it needs is pruned)."""
DEADLINE = "deadline"
"""When the message's round stops waiting for replies (seconds since the epoch): a client that
only gets to it later skips it (:func:`clients.mods.deadline_mod`)."""
ATTEMPT = "attempt"
"""A held-out evaluation's attempt in its round (0, then 1 for the retry of failed clients)."""
SECAGG_NAMES = "fedmeta-array-names"
"""SecAgg+ FitIns config: the JSON list of array names (legacy Parameters carry none)."""
SECAGG_WEIGHT_KEY = "fedmeta-weight-key"
"""SecAgg+ FitIns config: the reply metric SecAgg+ weights this client's vector by."""

# -- node config and reply metrics (client -> server) -------------------------------------------
PARTITION_ID = "partition-id"
"""A client (partition): a node's own (node config; the reply to the server's QUERY), the one a
message is for (its config) and the one a reply comes from (its :data:`PLACEMENT` record)."""
DATA_ROOT = "data-root"
"""Node config: a deployed site's own data folder (replaces the scenario's ``data.root``)."""
PLACEMENT = "placement"
"""A reply's config record saying which client answered (:data:`PARTITION_ID`) and where it ran
(:data:`WORKER`; under Ray also :data:`RAY_NODE`)."""
WORKER = "worker"
"""The id of the process a client ran in (a Ray actor under a simulation)."""
RAY_NODE = "ray-node"
"""The id of the Ray node a simulated client ran on (its first 12 hex digits)."""
NUM_EXAMPLES = "num-examples"
"""A training reply's shard size (the default aggregation weight); a held-out reply's tasks."""
UNIT_WEIGHT = "unit-weight"
"""Every training reply carries it with value 1: the aggregation weight under central DP and
secure aggregation (an unweighted mean)."""
COMPUTE_SECONDS = "compute-seconds"
"""The client's own time for its local update."""
DATA_LOADS = "process-data-loads"
"""How many times the client's process has built a data source (1 for a whole run)."""
PER_TASK = ("query-acc-pre", "query-acc-post", "query-loss-pre", "query-loss-post")
"""Held-out replies carry one value per evaluated task for each of these."""
