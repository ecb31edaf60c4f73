"""Talking to clients: node mapping, one round's exchange, failures and late replies.

A reply can go wrong in three ways, each counted apart: an error reply (the ClientApp raised,
its node died), no reply before ``train.timeout`` (a straggler; its late reply is drained and
dropped at the next exchange, so replies never pile up in the SuperLink's state), or a reply
whose weights or metrics are not finite (rejected before aggregation).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from fedmeta.experiment import Experiment
from fedmeta.protocol import ARRAYS, CONFIG, INFO, METRICS, PARTITION_ID, UNIT_WEIGHT
from server.roster import Roster
from server.secagg import secure_round

log = logging.getLogger("fedmeta")


class ClientFailure(RuntimeError):
    """Every client of a phase failed (a crash, an out-of-memory kill, a lost Ray worker)."""


QUERY_BATCH = 8
"""Nodes asked for their partition at once. A deployed ClientApp is a new process per message
(Flower's subprocess isolation) that imports torch: 60 SuperNodes asked together on one
2-core, 24 GB machine ran 60 such processes at once and filled its memory; with 16 at once, a
SuperNode starved of CPU missed its heartbeats and the SuperLink reported it unavailable."""

QUERY_ATTEMPTS = 3
"""Times a node the SuperLink reports unavailable (or that does not answer) is asked before
the run fails: a busy machine can delay a live node's heartbeats."""


def connect(
    grid, n_clients: int, config: ConfigRecord, timeout: float = 300.0, settle: float = 30.0
) -> Roster:
    """A node per partition, for the scenario's partitions ``0 .. n_clients - 1``.

    The ServerApp starts before the nodes register (and SuperNodes of a deployment join one by
    one), so this polls the grid and asks every new node for its partition id (a QUERY, which
    also loads the node's data), :data:`QUERY_BATCH` nodes at a time. Nodes holding a
    partition the scenario does not name are ignored, and the log says so.

    Raises
    ------
    ClientFailure
        When a node's QUERY fails, when two nodes hold one partition, or when some partition
        has no node after no new node registered for ``settle`` seconds (or after ``timeout``).
    """
    t0 = last_new = time.monotonic()
    asked: set[int] = set()
    attempts: dict[int, int] = {}
    partition_of: dict[int, int] = {}
    held: set[int] = set()
    extra: list[int] = []
    while len(partition_of) < n_clients:
        new = sorted(set(grid.get_node_ids()) - asked)[:QUERY_BATCH]
        if new:
            asked |= set(new)
            answered, silent = _ask_partitions(grid, new, config, timeout)
            for node, pid in answered.items():
                if pid >= n_clients:
                    extra.append(pid)
                elif pid in held:
                    raise ClientFailure(
                        f"two nodes hold partition {pid}; give every node its own partition-id"
                    )
                else:
                    partition_of[node] = pid
                    held.add(pid)
            for node in silent:
                attempts[node] = attempts.get(node, 0) + 1  # unanswered asks so far
                if attempts[node] >= QUERY_ATTEMPTS:
                    raise ClientFailure(
                        f"node {node} did not answer the partition query {QUERY_ATTEMPTS} times "
                        f"(the SuperLink reports it unavailable); check that SuperNode's log"
                    )
                asked.discard(node)  # ask it again
            if silent:
                log.warning(
                    "%d node(s) unavailable to the partition query; asking again", len(silent)
                )
            last_new = time.monotonic()
            continue
        now = time.monotonic()
        if (asked and now - last_new > settle) or now - t0 > timeout:
            missing = sorted(set(range(n_clients)) - held)
            raise ClientFailure(
                f"the scenario needs {n_clients} clients but only {len(partition_of)} connected "
                f"(no node holds partition {_spans(missing)}); start one node per partition, "
                f"e.g. flwr run --federation-config 'num-supernodes={n_clients}'"
            )
        time.sleep(0.1)
    unasked = len(set(grid.get_node_ids()) - asked)
    if extra or unasked:
        log.warning(
            "ignoring %d extra node(s)%s: the scenario names %d clients",
            len(extra) + unasked,
            f" (holding partition {_spans(sorted(extra))})" if extra and not unasked else "",
            n_clients,
        )
    return Roster(node_of={pid: node for node, pid in partition_of.items()})


def pool(grid, size: int, timeout: float = 300.0) -> Roster:
    """A pool of ``size`` interchangeable simulation nodes (see :mod:`server.roster`): no
    message is needed, only the nodes' registration."""
    t0 = time.monotonic()
    while len(nodes := sorted(grid.get_node_ids())) < size:
        if time.monotonic() - t0 > timeout:
            raise ClientFailure(f"only {len(nodes)} of {size} simulation nodes registered")
        time.sleep(0.1)
    return Roster(pool=nodes[:size])


def _ask_partitions(
    grid, nodes: list[int], config: ConfigRecord, timeout: float
) -> tuple[dict[int, int], list[int]]:
    """The partition of every node that answered, and the nodes to ask again: those the
    SuperLink reported unavailable, or that gave no reply. Any other error fails the run."""
    msgs = [
        Message(RecordDict({CONFIG: config}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    partition_of = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE:
            continue
        _raise_if_error(reply)
        partition_of[reply.metadata.src_node_id] = int(reply.content[INFO][PARTITION_ID])
    return partition_of, [n for n in nodes if n not in partition_of]


def _spans(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def reachable(grid, msgs: list[Message]) -> tuple[list[Message], int]:
    """The messages whose node is still connected, and how many are not: a SuperNode that left
    the federation (it unregisters when it shuts down) cannot be sent anything."""
    live = set(grid.get_node_ids())
    sendable = [m for m in msgs if m.metadata.dst_node_id in live]
    return sendable, len(msgs) - len(sendable)


def error_reason(reply: Message) -> str:
    """The last line of an error reply's reason (the exception the client raised)."""
    reason = reply.error.reason.strip().splitlines()
    return reason[-1] if reason else "unknown error"


def _raise_if_error(reply: Message) -> None:
    if reply.has_error():
        raise ClientFailure(f"a client failed: {error_reason(reply)}")


def array_bytes(arrays: ArrayRecord) -> int:
    return int(sum(a.numpy().nbytes for a in arrays.values()))


def split(replies: Iterable[Message]) -> tuple[list[Message], list[Message]]:
    """All replies and the successful ones."""
    replies = list(replies)
    return replies, [r for r in replies if not r.has_error()]


def make_exchange(exp: Experiment, weight_key: str):
    """``exchange(grid, messages) -> (replies, successful replies)`` for one training round:
    plain send-and-receive, or Flower's SecAgg+ when ``privacy.secure-aggregation``."""
    sc = exp.scenario
    if not sc.privacy.secure_aggregation:
        return lambda grid, msgs: split(grid.send_and_receive(msgs, timeout=sc.train.timeout))
    max_weight = (
        1.0
        if weight_key == UNIT_WEIGHT
        else float(max(exp.shard(p).size for p in range(sc.clients.train)))
    )

    def secure(grid, msgs):  # no reply at all: a round with nothing to aggregate, as above
        replies = secure_round(grid, msgs, sc.privacy, weight_key, max_weight, sc.train.timeout)
        return replies, replies

    return secure


def finite_arrays(arrays: ArrayRecord) -> bool:
    """Whether every entry of every array is finite."""
    return all(np.isfinite(a.numpy()).all() for a in arrays.values())


def finite_reply(reply: Message) -> bool:
    """Whether a training reply's weights and metrics are all finite."""
    values = []
    for value in reply.content[METRICS].values():
        values += value if isinstance(value, list) else [value]
    return finite_arrays(reply.content[ARRAYS]) and all(math.isfinite(v) for v in values)


class LateReplies:
    """Messages that got no reply in time. Their replies, should they still come, are pulled
    and dropped at the next exchange (:meth:`drain`)."""

    def __init__(self) -> None:
        self.waiting: set[str] = set()

    def expect(self, sent: list[Message], replies: list[Message]) -> None:
        answered = {r.metadata.reply_to_message_id for r in replies}
        self.waiting |= {m.metadata.message_id for m in sent if m.metadata.message_id} - answered

    def drain(self, grid) -> int:
        """Pull (and so delete) the late replies that arrived; returns how many."""
        if not self.waiting:
            return 0
        late = list(grid.pull_messages(self.waiting))
        self.waiting -= {r.metadata.reply_to_message_id for r in late}
        return len(late)
