"""Talking to clients: node mapping, one round's exchange, failures and late replies.

A reply can go wrong in three ways, each counted apart: an error reply (the ClientApp raised,
its node died), no reply before ``train.timeout`` (a straggler; its late reply is drained and
dropped at the next exchange, so replies never pile up in the SuperLink's state), or a reply
whose weights or metrics are not finite (rejected before aggregation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedmeta.experiment import Experiment
from fedmeta.protocol import ARRAYS, CONFIG, INFO, METRICS, PARTITION_ID, UNIT_WEIGHT
from server.secagg import secure_round


class ClientFailure(RuntimeError):
    """Every client of a phase failed (a crash, an out-of-memory kill, a lost Ray worker)."""


def wait_for_nodes(grid, expected: int, timeout: float = 300.0) -> list[int]:
    """Block until ``expected`` nodes are connected (the ServerApp starts before they register)."""
    t0 = time.monotonic()
    while len(nodes := list(grid.get_node_ids())) < expected:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"only {len(nodes)} of {expected} clients connected in {timeout}s")
        time.sleep(0.1)
    return sorted(nodes)


def map_partitions(
    grid, nodes: list[int], config: ConfigRecord, timeout: float = 300.0
) -> dict[int, int]:
    """One QUERY round: node id -> partition id, for every node (a client's first message also
    loads its data, so this waits longer than a training round may)."""
    msgs = [
        Message(RecordDict({CONFIG: config}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    partition_of = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        _raise_if_error(reply)
        partition_of[reply.metadata.src_node_id] = int(reply.content[INFO][PARTITION_ID])
    if len(partition_of) < len(nodes):
        raise ClientFailure(
            f"only {len(partition_of)} of {len(nodes)} clients reported their partition in "
            f"{timeout:.0f}s"
        )
    return partition_of


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
