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

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from clients.mods import NOISE
from fedmeta.experiment import Experiment, rng_for, scenario_json
from fedmeta.privacy.options import UNIT_WEIGHT
from fedmeta.results import RunDir
from server.privacy import Privacy
from server.secagg import secure_round
from server.strategies import FedMetaMixin, build_strategy


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
        Message(RecordDict({"config": config}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    partition_of = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        _raise_if_error(reply)
        partition_of[reply.metadata.src_node_id] = int(reply.content["info"]["partition-id"])
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


def run_rounds(grid, exp: Experiment, run_dir: RunDir, progress: Progress) -> dict[str, Any]:
    """Run (or resume) the whole federated training; returns the summary dict."""
    sc = exp.scenario
    config = ConfigRecord({"scenario": scenario_json(sc)})
    if sc.evaluation.inner_steps is not None:
        config["eval-inner-steps"] = sc.evaluation.inner_steps
    nodes = wait_for_nodes(grid, exp.n_clients)
    partition_of = map_partitions(grid, nodes, config, sc.train.timeout)
    weight_key = UNIT_WEIGHT if sc.privacy.central_dp else "num-examples"
    strategy: FedMetaMixin = build_strategy(sc.strategy.name, sc.strategy.options, weight_key)
    private = Privacy(strategy, sc)  # private.strategy: Flower's DP wrapper, or strategy
    exchange = make_exchange(exp, weight_key)
    strategy.bind(
        partition_of,
        sc.clients.train,
        sc.train.fraction,
        sc.seed,
        eval_rounds(exp),
        sc.train.dropout,
    )

    ckpt = run_dir.load_checkpoint()
    if ckpt is None:
        arrays = ArrayRecord(exp.initial_params())
        state = {"round": -1, "bytes": 0, "wall": 0.0, "compute": 0.0}
    else:
        arrays = ArrayRecord(ckpt["params"])
        strategy.load_state(ckpt["strategy"])
        private.load_state(ckpt.get("privacy", {}))
        state = ckpt["counters"]
        run_dir.truncate_metrics(state["round"])
    progress.start(sc.train.rounds, state["round"] + 1)
    latest = last_heldout(run_dir)
    t_resume = time.monotonic() - state["wall"]
    model_bytes = array_bytes(arrays)  # every message carries one model of this size

    for rnd in range(state["round"] + 1, sc.train.rounds + 1):
        info: dict[str, Any] = {}
        if rnd > 0:
            t_train = time.monotonic()
            trainer = private.strategy
            msgs = list(trainer.configure_train(rnd, arrays, ConfigRecord(config), grid))
            replies, ok = exchange(grid, msgs)
            state["bytes"] += model_bytes * (len(msgs) + len(ok))  # down and up
            compute = [float(r.content["metrics"]["compute-seconds"]) for r in ok]
            state["compute"] += sum(compute)
            np.random.seed(rng_for(sc.seed, NOISE, rnd).integers(2**32))  # Flower's DP noise
            new_arrays, train_metrics = trainer.aggregate_train(rnd, replies)
            if new_arrays is not None:
                arrays = new_arrays
            info = {
                "clients": len(ok),
                "failed": len(replies) - len(ok),
                "dropped": strategy.dropped,
                "round-train-seconds": time.monotonic() - t_train,
                **private.after_round(ok, strategy.partition_of, new_arrays is not None),
            }
            metrics = {k: v for k, v in (train_metrics or {}).items() if k != "compute-seconds"}
            run_dir.append_metrics(
                rnd, "train", {**metrics, **info, "client-compute-seconds": compute}
            )
        out_of_time = sc.train.max_seconds is not None and (
            time.monotonic() - t_resume > sc.train.max_seconds
        )
        if out_of_time:
            strategy.eval_rounds.add(rnd)  # the last round is always evaluated
        msgs = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(config), grid))
        if msgs:
            replies, _ = _check(grid.send_and_receive(msgs, timeout=sc.train.timeout))
            state["bytes"] += model_bytes * len(msgs)
            heldout = strategy.aggregate_evaluate(rnd, replies)
            if heldout is not None:
                latest = {"round": rnd, **dict(heldout)}
                run_dir.append_metrics(rnd, "heldout", dict(heldout))
        state["round"] = rnd
        state["wall"] = time.monotonic() - t_resume
        run_dir.append_metrics(
            rnd, "system", {"wall-seconds": state["wall"], "bytes-communicated": state["bytes"]}
        )
        if rnd % sc.train.checkpoint_every == 0 or rnd == sc.train.rounds or out_of_time:
            run_dir.save_checkpoint(
                {
                    "params": arrays.to_torch_state_dict(),
                    "strategy": strategy.state(),
                    "privacy": private.state(),
                    "counters": dict(state),
                }
            )
        progress.update(rnd, {**info, "latest": latest, "wall": state["wall"]})
        if out_of_time:
            break
    progress.finish()
    return summarize(exp, latest, state, private.summary())


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
