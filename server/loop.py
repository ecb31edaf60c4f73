"""The server's round loop: train, aggregate, evaluate held-out clients, checkpoint.

It drives a Flower strategy through its four hooks (``configure_train``, ``aggregate_train``,
``configure_evaluate``, ``aggregate_evaluate``), like ``Strategy.start``, but also maps nodes to
partitions first, evaluates before round 1, writes metrics every round, checkpoints, and resumes
from a checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedmeta.experiment import Experiment
from fedmeta.protocol import (
    COMPUTE_SECONDS,
    CONFIG,
    EVAL_INNER_STEPS,
    INFO,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    SCENARIO,
    UNIT_WEIGHT,
)
from fedmeta.results import RunDir
from server.privacy import Privacy
from server.secagg import secure_round
from server.strategies import build_strategy


class ClientFailure(RuntimeError):
    """Every client of a phase failed (a crash, an out-of-memory kill, a lost Ray worker)."""


class Progress(Protocol):
    def start(self, total_rounds: int, first_round: int) -> None: ...
    def update(self, server_round: int, info: dict[str, Any]) -> None: ...
    def finish(self) -> None: ...


def wait_for_nodes(grid, expected: int, timeout: float = 300.0) -> list[int]:
    """Block until ``expected`` nodes are connected (the ServerApp starts before they register)."""
    t0 = time.monotonic()
    while len(nodes := list(grid.get_node_ids())) < expected:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"only {len(nodes)} of {expected} clients connected in {timeout}s")
        time.sleep(0.1)
    return sorted(nodes)


def map_partitions(grid, nodes: list[int], config: ConfigRecord, timeout: float) -> dict[int, int]:
    """One QUERY round: node id -> partition id."""
    msgs = [
        Message(RecordDict({CONFIG: config}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    partition_of = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        _raise_if_error(reply)
        partition_of[reply.metadata.src_node_id] = int(reply.content[INFO][PARTITION_ID])
    return partition_of


def _raise_if_error(reply: Message) -> None:
    if reply.has_error():
        reason = reply.error.reason.strip().splitlines()
        raise ClientFailure(f"a client failed: {reason[-1] if reason else 'unknown error'}")


def array_bytes(arrays: ArrayRecord) -> int:
    return int(sum(a.numpy().nbytes for a in arrays.values()))


def _check(replies: Iterable[Message]) -> tuple[list[Message], list[Message]]:
    """All replies and the successful ones; raises :class:`ClientFailure` if every one failed."""
    replies = list(replies)
    ok = [r for r in replies if not r.has_error()]
    if replies and not ok:
        _raise_if_error(replies[0])
    return replies, ok


def make_exchange(exp: Experiment, weight_key: str):
    """``exchange(grid, messages) -> (replies, successful replies)`` for one training round:
    plain send-and-receive, or Flower's SecAgg+ when ``privacy.secure-aggregation``."""
    sc = exp.scenario
    if not sc.privacy.secure_aggregation:
        return lambda grid, msgs: _check(grid.send_and_receive(msgs, timeout=sc.train.timeout))
    max_weight = (
        1.0
        if weight_key == UNIT_WEIGHT
        else float(max(exp.shard(p).size for p in range(sc.clients.train)))
    )

    def secure(grid, msgs):
        replies = secure_round(grid, msgs, sc.privacy, weight_key, max_weight, sc.train.timeout)
        if msgs and not replies:
            raise ClientFailure("every client failed during secure aggregation")
        return replies, replies

    return secure


def eval_rounds(exp: Experiment) -> set[int]:
    ev, rounds = exp.scenario.evaluation, exp.scenario.train.rounds
    out = {r for r in range(1, rounds + 1) if r % ev.every == 0} | {rounds}
    return out | ({0} if ev.at_start else set())


class RoundLoop:
    """One run's federated training, or its resumption from the last checkpoint.

    Construction maps nodes to partitions, builds the strategy (wrapped for privacy) and
    restores a checkpoint if there is one; :meth:`run` then alternates :meth:`train_round`,
    :meth:`evaluate_round` and :meth:`checkpoint`, writing metrics every round.
    """

    def __init__(self, grid, exp: Experiment, run_dir: RunDir, progress: Progress) -> None:
        sc = exp.scenario
        self.grid, self.exp, self.run_dir, self.progress = grid, exp, run_dir, progress
        self.config = ConfigRecord({SCENARIO: sc.to_json()})
        if sc.evaluation.inner_steps is not None:
            self.config[EVAL_INNER_STEPS] = sc.evaluation.inner_steps
        nodes = wait_for_nodes(grid, exp.n_clients)
        partition_of = map_partitions(grid, nodes, self.config, sc.train.timeout)
        weight_key = UNIT_WEIGHT if sc.privacy.central_dp else NUM_EXAMPLES
        self.strategy = build_strategy(sc.strategy.name, sc.strategy.options, weight_key)
        self.private = Privacy(self.strategy, sc)  # .strategy: Flower's DP wrapper, or strategy
        self.exchange = make_exchange(exp, weight_key)
        self.strategy.bind(
            partition_of,
            sc.clients.train,
            sc.train.fraction,
            sc.seed,
            eval_rounds(exp),
            sc.train.dropout,
        )
        self.arrays, self.state = self._restore()
        self.latest = last_heldout(run_dir)
        self.model_bytes = array_bytes(self.arrays)  # every message carries one model

    def _restore(self) -> tuple[ArrayRecord, dict[str, Any]]:
        """The initial parameters and zero counters, or those of the last checkpoint (whose
        later metric records are dropped: that work is redone)."""
        ckpt = self.run_dir.load_checkpoint()
        if ckpt is None:
            arrays = ArrayRecord(self.exp.initial_params())
            return arrays, {"round": -1, "bytes": 0, "wall": 0.0, "compute": 0.0}
        self.strategy.load_state(ckpt["strategy"])
        self.private.load_state(ckpt.get("privacy", {}))
        self.run_dir.truncate_metrics(ckpt["counters"]["round"])
        return ArrayRecord(ckpt["params"]), ckpt["counters"]

    def run(self) -> dict[str, Any]:
        """Train to ``train.rounds`` (or ``train.max-seconds``); returns the summary dict."""
        sc, state = self.exp.scenario, self.state
        self.progress.start(sc.train.rounds, state["round"] + 1)
        t_resume = time.monotonic() - state["wall"]
        for rnd in range(state["round"] + 1, sc.train.rounds + 1):
            info = self.train_round(rnd) if rnd > 0 else {}
            out_of_time = sc.train.max_seconds is not None and (
                time.monotonic() - t_resume > sc.train.max_seconds
            )
            if out_of_time:
                self.strategy.eval_rounds.add(rnd)  # the last round is always evaluated
            self.evaluate_round(rnd)
            state["round"] = rnd
            state["wall"] = time.monotonic() - t_resume
            self.run_dir.append_metrics(
                rnd, "system", {"wall-seconds": state["wall"], "bytes-communicated": state["bytes"]}
            )
            if rnd % sc.train.checkpoint_every == 0 or rnd == sc.train.rounds or out_of_time:
                self.checkpoint()
            self.progress.update(rnd, {**info, "latest": self.latest, "wall": state["wall"]})
            if out_of_time:
                break
        self.progress.finish()
        return summarize(self.exp, self.latest, state, self.private.summary())

    def train_round(self, rnd: int) -> dict[str, Any]:
        """Sample, train and aggregate one round; returns the round's counts for progress."""
        t_train = time.monotonic()
        trainer = self.private.strategy
        msgs = list(trainer.configure_train(rnd, self.arrays, ConfigRecord(self.config), self.grid))
        replies, ok = self.exchange(self.grid, msgs)
        self.state["bytes"] += self.model_bytes * (len(msgs) + len(ok))  # down and up
        compute = [float(r.content[METRICS][COMPUTE_SECONDS]) for r in ok]
        self.state["compute"] += sum(compute)
        new_arrays, train_metrics = self.private.aggregate(rnd, replies)
        if new_arrays is not None:
            self.arrays = new_arrays
        info = {
            "clients": len(ok),
            "failed": len(replies) - len(ok),
            "dropped": self.strategy.dropped,
            "round-train-seconds": time.monotonic() - t_train,
            **self.private.after_round(ok, self.strategy.partition_of, new_arrays is not None),
        }
        metrics = {k: v for k, v in (train_metrics or {}).items() if k != COMPUTE_SECONDS}
        self.run_dir.append_metrics(
            rnd, "train", {**metrics, **info, "client-compute-seconds": compute}
        )
        return info

    def evaluate_round(self, rnd: int) -> None:
        """Held-out evaluation, on the rounds the strategy evaluates."""
        config = ConfigRecord(self.config)
        msgs = list(self.strategy.configure_evaluate(rnd, self.arrays, config, self.grid))
        if not msgs:
            return
        timeout = self.exp.scenario.train.timeout
        replies, _ = _check(self.grid.send_and_receive(msgs, timeout=timeout))
        self.state["bytes"] += self.model_bytes * len(msgs)
        heldout = self.strategy.aggregate_evaluate(rnd, replies)
        if heldout is not None:
            self.latest = {"round": rnd, **dict(heldout)}
            self.run_dir.append_metrics(rnd, "heldout", dict(heldout))

    def checkpoint(self) -> None:
        """Save everything a resumed run needs: parameters, server-optimiser and privacy state,
        and the counters."""
        self.run_dir.save_checkpoint(
            {
                "params": self.arrays.to_torch_state_dict(),
                "strategy": self.strategy.state(),
                "privacy": self.private.state(),
                "counters": dict(self.state),
            }
        )


def run_rounds(grid, exp: Experiment, run_dir: RunDir, progress: Progress) -> dict[str, Any]:
    """Run (or resume) the whole federated training; returns the summary dict."""
    return RoundLoop(grid, exp, run_dir, progress).run()


def last_heldout(run_dir: RunDir) -> dict[str, Any]:
    """The latest held-out metrics already written (after a resume), as ``{"round", ...}``."""
    records = [r for r in run_dir.read_metrics() if r["phase"] == "heldout"]
    if not records:
        return {}
    last = max(r["round"] for r in records)
    return {"round": last, **{r["metric"]: r["value"] for r in records if r["round"] == last}}


def summarize(
    exp: Experiment, latest: dict[str, Any], state: dict[str, Any], privacy: dict[str, Any]
) -> dict[str, Any]:
    """``summary.json``: the final held-out metrics with CIs, wall time, bytes and, for private
    runs, the epsilon spent (:meth:`server.privacy.Privacy.summary`)."""
    sc = exp.scenario
    heldout = {k: v for k, v in latest.items() if not k.endswith("-per-client")}
    return {
        "name": sc.name,
        "rounds": state["round"],
        "heldout": heldout,
        "wall-seconds": round(state["wall"], 3),
        "client-compute-seconds": round(state["compute"], 3),
        "bytes-communicated": state["bytes"],
        "mb-communicated": round(state["bytes"] / 2**20, 3),
        **({"privacy": privacy} if privacy else {}),
    }
