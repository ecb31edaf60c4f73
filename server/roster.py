"""Which Flower node serves which client (partition) in an exchange.

Two rosters, one interface:

* **per partition** (``flwr run`` and the Deployment Engine): every client is a node of its
  own, a hospital's SuperNode, found by asking each node its ``partition-id``
  (:func:`server.exchange.connect`);
* **pooled** (``fedmeta run``'s in-process simulation): a pool of interchangeable simulation
  nodes, each serving whichever client a message names. Flower's simulation engine polls every
  registered node for work, and its in-memory state scans every stored message per node, so
  with one node per client a round's cost grows with N (and start-up with N squared). A pool
  sized to the clients of one exchange keeps both flat: N clients cost nothing until they are
  sampled.

Every message names its client in its config (``partition-id``), and every reply names it back
(its ``placement`` record), so results do not depend on the roster: the same scenario and
seed give the same metrics either way.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from fedmeta.protocol import CONFIG, PARTITION_ID, PLACEMENT


class Roster:
    """The nodes that clients' messages go to.

    Parameters
    ----------
    node_of : dict, optional
        Partition id -> node id (a node per partition).
    pool : list, optional
        Interchangeable node ids; an exchange sends at most ``len(pool)`` messages, one per node.
    """

    def __init__(self, node_of: dict[int, int] | None = None, pool: list[int] | None = None):
        if (node_of is None) == (pool is None):
            raise ValueError("give node_of or pool")
        self.node_of, self.pool = node_of, pool

    @property
    def capacity(self) -> int:
        """The most clients one exchange can address (each on a node of its own)."""
        return len(self.pool) if self.pool is not None else len(self.node_of or {})

    def nodes(self, pids: list[int]) -> list[int]:
        """Distinct nodes for the clients ``pids`` of one exchange."""
        if self.pool is None:
            return [self.node_of[p] for p in pids]  # type: ignore[index]
        if len(pids) > len(self.pool):
            raise ValueError(f"{len(pids)} clients in one exchange but a pool of {len(self.pool)}")
        return self.pool[: len(pids)]

    def address(self, template: Message, pids: list[int]) -> list[Message]:
        """One message per client: ``template``'s records, its config naming the client."""
        config = template.content[CONFIG]
        out = []
        for pid, node in zip(pids, self.nodes(pids), strict=True):
            content = RecordDict(dict(template.content))
            content[CONFIG] = ConfigRecord({**config, PARTITION_ID: pid})
            out.append(
                Message(content, dst_node_id=node, message_type=template.metadata.message_type)
            )
        return out


def sent_partition(msg: Message) -> int:
    """The client a message was addressed to."""
    return int(msg.content[CONFIG][PARTITION_ID])


def reply_partition(reply: Message) -> int:
    """The client a successful reply comes from (it names itself)."""
    return int(reply.content[PLACEMENT][PARTITION_ID])


def chunks(pids: list[int], size: int) -> list[list[int]]:
    """``pids`` in consecutive groups of at most ``size`` (one exchange each)."""
    return [pids[i : i + size] for i in range(0, len(pids), max(1, size))]
