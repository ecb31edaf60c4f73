"""The server's round loop: train, aggregate, evaluate held-out clients, checkpoint.

It drives a Flower strategy through its four hooks (``configure_train``, ``aggregate_train``,
``configure_evaluate``, ``aggregate_evaluate``), like ``Strategy.start``, but also finds which
node serves which client first (:mod:`server.roster`), evaluates before round 1, writes metrics
every round, checkpoints, and resumes from a checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message

from fedmeta.client_state import has_saved_state
from fedmeta.errors import FedmetaError
from fedmeta.experiment import Experiment
from fedmeta.faults import KINDS, draw_fault
from fedmeta.learners import LEARNERS
from fedmeta.protocol import (
    ATTEMPT,
    CHECKPOINT_ROUND,
    CLIENT_STATE_DIR,
    COMPUTE_SECONDS,
    DEADLINE,
    EVAL_INNER_STEPS,
    METRICS,
    PLACEMENT,
    RAY_NODE,
    SCENARIO,
    WORKER,
    Stream,
    rng_for,
)
from fedmeta.results import RunDir
from fedmeta.stats import CLIENT_CI, TASK_CI
from server.exchange import (
    ClientFailure,
    LateReplies,
    array_bytes,
    connect,
    error_reason,
    finite_arrays,
    finite_reply,
    make_exchange,
    pool,
    reachable,
)
from server.privacy import Privacy
from server.roster import chunks, reply_partition, sent_partition
from server.strategies import build_strategy, reply_weight_key

log = logging.getLogger("fedmeta")


class RunStalled(RuntimeError):
    """No round could be aggregated for ``train.max-stalled-rounds`` rounds in a row."""


class Progress(Protocol):
    def start(self, total_rounds: int, first_round: int) -> None: ...
    def update(self, server_round: int, info: dict[str, Any]) -> None: ...
    def finish(self) -> None: ...


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

    def __init__(
        self, grid, exp: Experiment, run_dir: RunDir, progress: Progress, pool_size: int = 0
    ) -> None:
        sc = exp.scenario
        self.grid, self.exp, self.run_dir, self.progress = grid, exp, run_dir, progress
        self.config = ConfigRecord({SCENARIO: sc.to_json()})
        if sc.evaluation.inner_steps is not None:
            self.config[EVAL_INNER_STEPS] = sc.evaluation.inner_steps
        self.state_dir = run_dir.path.resolve() / "client-state"
        self.config[CLIENT_STATE_DIR] = str(self.state_dir)
        wait = max(300.0, sc.train.timeout)
        roster = (
            pool(grid, pool_size, wait)
            if pool_size
            else connect(grid, exp.n_clients, self.config, wait)
        )
        weight_key = reply_weight_key(sc)
        self.strategy = build_strategy(sc.strategy.name, sc.strategy.options, weight_key)
        self.private = Privacy(self.strategy, sc)  # .strategy: Flower's DP wrapper, or strategy
        self.exchange = make_exchange(exp, weight_key)
        self.late = LateReplies()
        self.strategy.bind(
            roster,
            sc.clients.train,
            sc.clients.heldout,
            sc.train.fraction,
            sc.seed,
            eval_rounds(exp),
            sc.train.dropout,
        )
        self.arrays, self.state = self._restore()
        self.checkpointed = self.state["round"]
        self.latest = last_heldout(run_dir)
        self.model_bytes = array_bytes(self.arrays)  # every message carries one model

    def _restore(self) -> tuple[ArrayRecord, dict[str, Any]]:
        """The initial parameters and zero counters, or those of the last checkpoint (whose
        later metric records, and a torn last line, are dropped: that work is redone)."""
        ckpt = self.run_dir.load_checkpoint()
        last = -1 if ckpt is None else ckpt["counters"]["round"]
        torn = self.run_dir.truncate_metrics(last)
        self.run_dir.open_tracking(last + 1)
        if torn is not None:
            log.warning("metrics.jsonl: dropped a torn last line (the run was killed): %.60s", torn)
        if ckpt is None:
            arrays = ArrayRecord(self.exp.initial_params())
            return arrays, {"round": -1, "bytes": 0, "wall": 0.0, "compute": 0.0}
        sc = self.exp.scenario
        learner = LEARNERS.get(sc.learner.name, key="learner.name")
        if (
            learner.keeps_state(sc.learner.options)
            and last >= 1
            and not has_saved_state(self.state_dir)
        ):
            raise FedmetaError(
                f"cannot resume {self.run_dir.path}: learner {sc.learner.name!r} keeps per-client "
                f"state, which this run did not save in {self.state_dir}; start a new run"
            )
        self.strategy.load_state(ckpt["strategy"])
        self.private.load_state(ckpt.get("privacy", {}))
        return ArrayRecord(ckpt["params"]), ckpt["counters"]

    def run(self) -> dict[str, Any]:
        """Train to ``train.rounds`` (or ``train.max-seconds``); returns the summary dict."""
        try:
            return self._rounds()
        finally:
            self.run_dir.close_tracking()

    def _rounds(self) -> dict[str, Any]:
        sc, state = self.exp.scenario, self.state
        self.progress.start(sc.train.rounds, state["round"] + 1)
        t_resume = time.monotonic() - state["wall"]
        for rnd in range(state["round"] + 1, sc.train.rounds + 1):
            info = self.train_round(rnd) if rnd > 0 else {}
            out_of_time = sc.train.max_seconds is not None and (
                time.monotonic() - t_resume > sc.train.max_seconds
            )
            stalled = state.get("stalled", 0) >= sc.train.max_stalled_rounds
            if out_of_time:
                self.strategy.eval_rounds.add(rnd)  # the last round is always evaluated
            self.evaluate_round(rnd, final=rnd == sc.train.rounds or out_of_time or stalled)
            state["round"] = rnd
            state["wall"] = time.monotonic() - t_resume
            self.run_dir.append_metrics(
                rnd, "system", {"wall-seconds": state["wall"], "bytes-communicated": state["bytes"]}
            )
            last = rnd == sc.train.rounds or out_of_time or stalled
            if rnd % sc.train.checkpoint_every == 0 or last:
                self.checkpoint()
            self.progress.update(rnd, {**info, "latest": self.latest, "wall": state["wall"]})
            if stalled:
                self.progress.finish()
                raise RunStalled(
                    f"no round could be aggregated in the last {state['stalled']} rounds (every "
                    f"reply failed, timed out or was not finite; last: {state['stall-reason']}); "
                    f"the run is saved at round {rnd}"
                )
            if out_of_time:
                break
        self.progress.finish()
        return summarize(self.exp, self.latest, state, self.private.summary())

    def _count(self, counts: dict[str, int], totals: str = "faults") -> None:
        """Add this round's ``counts`` to the run's totals in ``state[totals]``."""
        run = self.state.setdefault(totals, {})
        for key, n in counts.items():
            run[key] = run.get(key, 0) + n

    def _deadline(self) -> float:
        """When a phase sent now stops waiting for replies (seconds since the epoch)."""
        return time.time() + self.exp.scenario.train.timeout

    def train_round(self, rnd: int) -> dict[str, Any]:
        """Sample, train and aggregate one round; returns the round's counts for progress.

        Replies that are not finite are rejected before aggregation, and an aggregate that is
        not finite is discarded: the global model then keeps the previous round's parameters.
        """
        t_train = time.monotonic()
        late = self.late.drain(self.grid)
        trainer = self.private.strategy
        config = ConfigRecord(self.config)
        config[CHECKPOINT_ROUND] = self.checkpointed
        config[DEADLINE] = self._deadline()
        sampled = list(trainer.configure_train(rnd, self.arrays, config, self.grid))
        msgs, gone = reachable(self.grid, sampled)
        replies, ok = self.exchange(self.grid, msgs)
        self.late.expect(msgs, replies)
        self.state["bytes"] += self.model_bytes * (len(msgs) + len(ok))  # down and up
        compute = [float(r.content[METRICS][COMPUTE_SECONDS]) for r in ok]
        self.state["compute"] += sum(compute)
        bad = {id(r) for r in ok if not finite_reply(r)}
        new_arrays, train_metrics = None, None
        if len(ok) > len(bad):
            kept = [r for r in replies if id(r) not in bad]
            new_arrays, train_metrics = self.private.aggregate(rnd, kept)
            if new_arrays is not None and not finite_arrays(new_arrays):
                new_arrays, train_metrics = None, None
        counts = {
            "failed": len(replies) - len(ok) + gone,
            "rejected": len(bad),
            "timed-out": len(msgs) - len(replies),
            "late": late,
        }
        counts |= self._injected(rnd, sampled)
        self._count(counts)
        aggregated = 0 if new_arrays is None else len(ok) - len(bad)
        if new_arrays is None:
            self.state["stalled"] = self.state.get("stalled", 0) + 1
            errors = [error_reason(r) for r in replies if r.has_error()]
            self.state["stall-reason"] = errors[-1] if errors else "no finite reply in time"
            log.warning(
                "round %d: nothing to aggregate (%d failed, %d not finite, %d timed out); the "
                "model keeps the previous round's parameters",
                rnd,
                counts["failed"],
                counts["rejected"],
                counts["timed-out"],
            )
        else:
            self.arrays, self.state["stalled"] = new_arrays, 0
        info = {
            "clients": aggregated,
            **counts,
            **self._per_node(ok),
            "dropped": self.strategy.dropped,
            "round-train-seconds": time.monotonic() - t_train,
            **self.private.after_round(ok, aggregated),
        }
        metrics = {k: v for k, v in (train_metrics or {}).items() if k != COMPUTE_SECONDS}
        self.run_dir.append_metrics(
            rnd, "train", {**metrics, **info, "client-compute-seconds": compute}
        )
        return info

    def _per_node(self, replies: list[Message]) -> dict[str, Any]:
        """``{"clients-per-node": {ray node: clients}}`` when the replies say where they ran
        (under Ray; the run's totals go to the summary), and the summed client compute of the
        busiest worker process (``slowest-worker-compute-seconds``)."""
        where = [r.content[PLACEMENT] for r in replies]
        nodes = Counter(str(p[RAY_NODE]) for p in where if RAY_NODE in p)
        self._count(nodes, "clients-per-node")
        work: Counter[int] = Counter()
        for r, p in zip(replies, where, strict=True):
            if WORKER in p:  # not under SecAgg+, whose replies are built by the server
                work[int(p[WORKER])] += float(r.content[METRICS][COMPUTE_SECONDS])
        out = {"slowest-worker-compute-seconds": max(work.values())} if work else {}
        return out | ({"clients-per-node": dict(sorted(nodes.items()))} if nodes else {})

    def _injected(self, rnd: int, msgs: list[Message]) -> dict[str, int]:
        """The faults the sampled clients draw this round (``[faults]``), by kind."""
        sc = self.exp.scenario
        if not sc.faults.active:
            return {}
        pids = [sent_partition(m) for m in msgs]
        drawn = [draw_fault(sc.faults, sc.seed, rnd, pid) for pid in pids]
        return {f"injected-{kind}": drawn.count(kind) for kind in KINDS}

    def evaluate_round(self, rnd: int, final: bool = False) -> None:
        """Held-out evaluation, on the rounds the strategy evaluates, in exchanges of at most
        the roster's capacity: every held-out client, or a seeded sample of
        ``evaluation.clients`` of them except in the ``final`` round. Clients that fail are
        asked once more; if some still fail, the pooled metrics say how many were scored."""
        if rnd not in self.strategy.eval_rounds:
            return
        config = ConfigRecord(self.config)
        k = None if final else self.exp.scenario.evaluation.clients
        pids = heldout_sample(self.strategy.heldout, k, self.exp.scenario.seed, rnd)
        scored = self._evaluate(rnd, config, pids)
        missing = [p for p in pids if p not in scored]
        if missing:
            config[ATTEMPT] = 1
            scored |= self._evaluate(rnd, config, missing)
        if not scored:
            raise ClientFailure(f"every held-out client failed to evaluate in round {rnd}, twice")
        heldout = dict(self.strategy.aggregate_evaluate(rnd, list(scored.values())))
        heldout |= {"num-clients-expected": len(pids), "retried": len(missing)}
        self._count({"heldout-retried": len(missing), "heldout-missing": len(pids) - len(scored)})
        if len(scored) < len(pids):
            log.warning(
                "round %d: %d of %d held-out clients failed twice; held-out metrics cover %d",
                rnd,
                len(pids) - len(scored),
                len(pids),
                len(scored),
            )
        self.latest = {"round": rnd, **heldout}
        self.run_dir.append_metrics(rnd, "heldout", heldout)

    def _evaluate(self, rnd: int, config: ConfigRecord, pids: list[int]) -> dict[int, Message]:
        """Evaluate the held-out clients ``pids`` (those whose node is still connected), an
        exchange per roster-full; the successful replies by client."""
        scored: dict[int, Message] = {}
        timeout = self.exp.scenario.train.timeout
        for chunk in chunks(pids, self.strategy.roster.capacity):
            config[DEADLINE] = self._deadline()
            ask = self.strategy.configure_evaluate(rnd, self.arrays, config, self.grid, chunk)
            msgs, _ = reachable(self.grid, list(ask))
            replies = list(self.grid.send_and_receive(msgs, timeout=timeout))
            self.late.expect(msgs, replies)
            self.state["bytes"] += self.model_bytes * len(msgs)
            scored |= {reply_partition(r): r for r in replies if not r.has_error()}
        return scored

    def checkpoint(self) -> None:
        """Save everything a resumed run needs: parameters, server-optimiser and privacy state,
        and the counters. (Clients keep their own learner state by round; see
        :mod:`fedmeta.client_state`.)"""
        self.run_dir.save_checkpoint(
            {
                "params": self.arrays.to_torch_state_dict(),
                "strategy": self.strategy.state(),
                "privacy": self.private.state(),
                "counters": copy.deepcopy(self.state),
            }
        )
        self.checkpointed = self.state["round"]


def heldout_sample(heldout: list[int], k: int | None, seed: int, rnd: int) -> list[int]:
    """The held-out clients scored in round ``rnd``: all, or a seeded sample of ``k``."""
    if k is None or k >= len(heldout):
        return list(heldout)
    rng = rng_for(seed, Stream.EVAL_SAMPLE, rnd)
    return [heldout[i] for i in sorted(rng.choice(len(heldout), size=k, replace=False))]


def run_rounds(
    grid, exp: Experiment, run_dir: RunDir, progress: Progress, pool_size: int = 0
) -> dict[str, Any]:
    """Run (or resume) the whole federated training; returns the summary dict. With
    ``pool_size``, the grid's nodes are a pool of that many simulation nodes serving any client
    (:mod:`server.roster`); otherwise every client is a node of its own."""
    return RoundLoop(grid, exp, run_dir, progress, pool_size).run()


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
    """``summary.json``: the final held-out metrics with CIs, wall time, bytes, every failure
    counted by kind and, for private runs, the epsilon spent
    (:meth:`server.privacy.Privacy.summary`)."""
    sc = exp.scenario
    heldout = {k: v for k, v in latest.items() if not k.endswith("-per-client")}
    if "ci-over-clients" in heldout:
        heldout["ci-method"] = CLIENT_CI if heldout.pop("ci-over-clients") else TASK_CI
    return {
        "name": sc.name,
        "rounds": state["round"],
        "heldout": heldout,
        "wall-seconds": round(state["wall"], 3),
        "client-compute-seconds": round(state["compute"], 3),
        "bytes-communicated": state["bytes"],
        "mb-communicated": round(state["bytes"] / 2**20, 3),
        "faults": state.get("faults", {}),
        **(
            {"clients-per-node": state["clients-per-node"]} if state.get("clients-per-node") else {}
        ),
        **({"privacy": privacy} if privacy else {}),
    }
