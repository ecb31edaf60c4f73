"""Faults: torn metrics, client state kept by round, seeded fault draws, and runs that survive
crashing, diverging and slow clients (the simulations attach to the session's Ray head)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import Quiet

from fedmeta.client_state import StateStore, has_saved_state
from fedmeta.errors import FedmetaError
from fedmeta.faults import FaultOptions, draw_fault, heldout_crashes
from fedmeta.protocol import Stream, rng_for, sample_size
from fedmeta.results import RunDir
from fedmeta.scenario import scenario_from_dict
from runner.cli import run_cli


def _scenario_file(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


# -- metrics.jsonl after a kill ----------------------------------------------------------------


def test_a_torn_last_line_is_dropped_and_truncation_removes_it(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics(0, "heldout", {"query-acc-post": 0.5})
    run.append_metrics(1, "train", {"train-loss": 1.0, "clients": 2})
    with run.metrics_path.open("a") as f:
        f.write('{"round": 2, "phase": "train", "metr')  # killed mid-write
    assert [r["round"] for r in run.read_metrics()] == [0, 1, 1]
    torn = run.truncate_metrics(1)
    assert torn.startswith('{"round": 2')
    assert run.metrics_path.read_text().endswith("\n")
    assert len(run.read_metrics()) == 3 and run.truncate_metrics(0) is None
    assert [r["round"] for r in run.read_metrics()] == [0]


def test_a_damaged_line_before_the_end_is_an_error(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_path.write_text('{"round": 0}\nnot json\n{"round": 1}\n')
    with pytest.raises(FedmetaError, match="line 2 is not a JSON record"):
        run.read_metrics()


# -- client state by round ---------------------------------------------------------------------


def _state(v: float) -> dict:
    return {"personal": {"w": torch.full((2,), v)}}


def test_client_state_loads_the_newest_round_before_and_prunes_what_no_resume_needs(tmp_path):
    store = StateStore(tmp_path, 3)
    assert store.load(5) == {} and not has_saved_state(tmp_path)
    store.save(2, _state(2.0), checkpointed=1)
    store.save(4, _state(4.0), checkpointed=3)
    store.save(7, _state(7.0), checkpointed=6)
    assert has_saved_state(tmp_path)
    assert store.load(5)["personal"]["w"].tolist() == [4.0, 4.0]
    assert store.load(8)["personal"]["w"].tolist() == [7.0, 7.0]
    # a resumed run starts after round 6 at the earliest: round 4's state is the oldest it reads
    assert sorted(p.name for p in store.dir.iterdir()) == ["round-000004.pt", "round-000007.pt"]
    store.save(9, _state(9.0), checkpointed=8)
    assert sorted(p.name for p in store.dir.iterdir()) == ["round-000007.pt", "round-000009.pt"]


# -- seeded fault draws ------------------------------------------------------------------------


def test_fault_draws_are_seeded_and_follow_the_probabilities():
    options = FaultOptions(crash=0.1, nan=0.2, straggle=0.3)
    draws = [draw_fault(options, 7, r, p) for r in range(1, 101) for p in range(50)]
    assert draws == [draw_fault(options, 7, r, p) for r in range(1, 101) for p in range(50)]
    for kind, p in (("crash", 0.1), ("nan", 0.2), ("straggle", 0.3)):
        assert abs(draws.count(kind) / len(draws) - p) < 0.02
    assert abs(draws.count(None) / len(draws) - 0.4) < 0.02
    assert draw_fault(FaultOptions(), 7, 1, 1) is None
    attempts = [heldout_crashes(FaultOptions(heldout_crash=0.5), 1, 3, 9, a) for a in range(200)]
    assert 0.4 < sum(attempts) / 200 < 0.6  # each attempt draws anew


@pytest.mark.parametrize(
    ("faults", "needle"),
    [
        ({"crash": 0.6, "nan": 0.5}, "must be at most 1"),
        ({"straggle": 1.5}, "faults.straggle"),
        ({"crash": -0.1}, "faults.crash"),
        ({"explode": 0.1}, "faults.explode"),
        ({"straggle-seconds": 0}, "faults.straggle-seconds"),
    ],
)
def test_bad_fault_settings_exit_2_with_one_line(tmp_path, tiny_raw, capsys, faults, needle):
    tiny_raw["faults"] = faults
    path = _scenario_file(tmp_path, tiny_raw)
    assert run_cli(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


# -- runs with faults --------------------------------------------------------------------------


def _sampled(sc, rnd: int) -> list[int]:
    """The training clients the server samples in a round, recomputed from the seed."""
    n = sc.clients.train
    k = sample_size(sc.train.fraction, n)
    return sorted(int(i) for i in rng_for(sc.seed, rnd, Stream.SAMPLE).choice(n, k, replace=False))


def _by_round(records, phase: str, metric: str) -> dict[int, float]:
    return {
        r["round"]: r["value"] for r in records if r["phase"] == phase and r["metric"] == metric
    }


def _check_outcomes(records, rnd: int, drawn: list) -> None:
    """Each sampled client ends its round aggregated, failed, rejected or timed out. A client
    shows its own fault, or times out: a straggler always, and in the simulation also a client
    queued behind a straggler on the Ray actor the straggler holds while it sleeps."""
    kinds = ("clients", "failed", "rejected", "timed-out")
    got = {k: _by_round(records, "train", k)[rnd] for k in kinds}
    assert sum(got.values()) == len(drawn), rnd
    assert got["failed"] <= drawn.count("crash"), rnd
    assert got["rejected"] <= drawn.count("nan"), rnd
    assert got["clients"] <= drawn.count(None), rnd
    assert got["timed-out"] >= drawn.count("straggle"), rnd


@pytest.mark.usefixtures("shared_ray")
def test_a_fault_mix_is_counted_as_drawn_and_never_reaches_the_model(tmp_path, tiny_raw):
    from runner.simulation import simulate

    tiny_raw["clients"] = {"train": 8, "heldout": 2}
    tiny_raw["train"] |= {"rounds": 6, "fraction": 0.5, "timeout": 3.0}
    tiny_raw["faults"] = {"crash": 0.2, "nan": 0.2, "straggle": 0.1}
    sc = scenario_from_dict(tiny_raw)
    summary = simulate(sc, RunDir(tmp_path / "run"), Quiet())
    records = RunDir(tmp_path / "run").read_metrics()
    injected = {"crash": 0, "nan": 0, "straggle": 0}
    for rnd in range(1, 7):
        drawn = [draw_fault(sc.faults, sc.seed, rnd, pid) for pid in _sampled(sc, rnd)]
        _check_outcomes(records, rnd, drawn)
        for k in injected:
            injected[k] += drawn.count(k)
    assert all(injected.values())  # the seed injects every kind
    faults = summary["faults"]
    assert {k: faults[f"injected-{k}"] for k in injected} == injected
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final.values())
    assert math.isfinite(summary["heldout"]["query-loss-post"])


@pytest.mark.usefixtures("shared_ray")
def test_held_out_failures_are_retried_once_then_reported(tmp_path, tiny_raw):
    from runner.simulation import simulate

    tiny_raw["clients"] = {"train": 4, "heldout": 2}
    tiny_raw["train"]["rounds"] = 4
    tiny_raw["faults"] = {"heldout-crash": 0.5}  # seed 3: some retries succeed, some do not
    sc = scenario_from_dict(tiny_raw)
    summary = simulate(sc, RunDir(tmp_path / "run"), Quiet())
    records = RunDir(tmp_path / "run").read_metrics()
    saw_retry_scored = saw_missing = False
    for rnd in range(0, 5):
        first = [heldout_crashes(sc.faults, sc.seed, rnd, pid, 0) for pid in (4, 5)]
        second = [heldout_crashes(sc.faults, sc.seed, rnd, pid, 1) for pid in (4, 5)]
        scored = sum(not a or not b for a, b in zip(first, second, strict=True))
        assert _by_round(records, "heldout", "retried")[rnd] == sum(first)
        assert _by_round(records, "heldout", "num-clients")[rnd] == scored
        assert _by_round(records, "heldout", "num-clients-expected")[rnd] == 2
        saw_retry_scored |= any(a and not b for a, b in zip(first, second, strict=True))
        saw_missing |= scored < 2
    assert saw_retry_scored and saw_missing  # the seed exercises both paths
    h = summary["heldout"]
    assert h["num-clients-expected"] == 2 and h["num-clients"] <= 2


@pytest.mark.usefixtures("shared_ray")
def test_a_diverging_run_keeps_a_finite_model_and_stops_resumably(tmp_path, tiny_raw, capsys):
    tiny_raw["learner"]["inner-lr"] = 1e20
    tiny_raw["train"] |= {"rounds": 6, "max-stalled-rounds": 2}
    path = _scenario_file(tmp_path, tiny_raw)
    out = tmp_path / "run"
    assert run_cli(["run", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no round could be aggregated in the last 2 rounds" in err and "fedmeta resume" in err
    run = RunDir(out)
    ckpt = run.load_checkpoint()
    assert ckpt["counters"]["round"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["params"].values())
    assert _by_round(run.read_metrics(), "train", "rejected") == {1: 2, 2: 2}
    assert _by_round(run.read_metrics(), "train", "clients") == {1: 0, 2: 0}


@pytest.mark.usefixtures("flower_task")
def test_the_server_check_rejects_any_non_finite_weight_or_metric():
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from server.exchange import finite_reply

    def reply(w, metrics):
        content = {"arrays": ArrayRecord({"w": torch.tensor(w)}), "metrics": MetricRecord(metrics)}
        return Message(RecordDict(content), dst_node_id=1, message_type="train")

    assert finite_reply(reply([1.0, 2.0], {"loss": 1.0, "per-task": [0.5, 0.25]}))
    assert not finite_reply(reply([1.0, float("nan")], {"loss": 1.0}))
    assert not finite_reply(reply([1.0, 2.0], {"loss": float("inf")}))
    assert not finite_reply(reply([1.0, 2.0], {"per-task": [0.5, float("nan")]}))


@pytest.mark.usefixtures("shared_ray")
def test_max_seconds_stops_on_time_and_the_run_resumes_exactly(tmp_path, tiny_raw, capsys):
    tiny_raw["train"] |= {"rounds": 5, "max-seconds": 0.01}
    path = _scenario_file(tmp_path, tiny_raw)
    out, reference = tmp_path / "cut", tmp_path / "reference"
    assert run_cli(["run", str(path), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == 1  # out of time at once
    assert run_cli(["resume", str(out), "--set", "learner.inner-lr=0.1"]) == 2  # how it trains
    assert "may only change train.rounds" in capsys.readouterr().err
    assert run_cli(["resume", str(out), "--set", "train.max-seconds=600"]) == 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == 5
    del tiny_raw["train"]["max-seconds"]
    path = _scenario_file(tmp_path, tiny_raw)
    assert run_cli(["run", str(path), "--out", str(reference)]) == 0

    def untimed(run):
        records = RunDir(run).read_metrics()
        return [r for r in records if "seconds" not in r["metric"]]

    assert untimed(out) == untimed(reference)


@pytest.mark.usefixtures("shared_ray")
def test_a_stateful_run_whose_client_state_is_lost_refuses_to_resume(tmp_path, tiny_raw, capsys):
    import shutil

    tiny_raw["learner"] = {"name": "ditto", "local-steps": 2, "tasks-per-step": 2}
    tiny_raw["train"]["rounds"] = 2
    path = _scenario_file(tmp_path, tiny_raw)
    out = tmp_path / "run"
    assert run_cli(["run", str(path), "--out", str(out)]) == 0
    assert any((out / "client-state").glob("*/round-*.pt"))
    shutil.rmtree(out / "client-state")
    assert run_cli(["resume", str(out), "--set", "train.rounds=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "keeps per-client state" in err[-1] and "start a new run" in err[-1]


QUICKSTART_20 = ["train.timeout=10", "faults.crash=0.07", "faults.nan=0.07", "faults.straggle=0.06"]
"""A 20% fault mix for the quickstart: each sampled client crashes, sends NaN or straggles."""


@pytest.mark.slow  # two 30-round quickstart runs, about 4 minutes
@pytest.mark.usefixtures("shared_ray")
def test_the_quickstart_survives_a_20_percent_fault_mix(tmp_path):
    from fedmeta.scenario import load_scenario
    from runner.simulation import simulate

    repo = Path(__file__).resolve().parents[1]
    clean_sc = load_scenario(repo / "scenarios" / "quickstart.toml")
    sc = load_scenario(repo / "scenarios" / "quickstart.toml", QUICKSTART_20)
    clean = simulate(clean_sc, RunDir(tmp_path / "clean"), Quiet())
    faulty = simulate(sc, RunDir(tmp_path / "faulty"), Quiet())
    records = RunDir(tmp_path / "faulty").read_metrics()
    totals = {"crash": 0, "nan": 0, "straggle": 0}
    for rnd in range(1, sc.train.rounds + 1):
        drawn = [draw_fault(sc.faults, sc.seed, rnd, pid) for pid in _sampled(sc, rnd)]
        _check_outcomes(records, rnd, drawn)
        for k in totals:
            totals[k] += drawn.count(k)
    assert {k: faulty["faults"][f"injected-{k}"] for k in totals} == totals
    drop = clean["heldout"]["query-acc-post"] - faulty["heldout"]["query-acc-post"]
    assert abs(drop) <= 0.025  # measured: 0.7064 clean, 0.6838 faulty (RESULTS.md)


@pytest.mark.usefixtures("shared_ray")
def test_rounds_where_every_client_crashes_stall_and_the_stop_names_the_error(
    tmp_path, tiny_raw, capsys
):
    tiny_raw["train"] |= {"rounds": 5, "max-stalled-rounds": 2}
    tiny_raw["faults"] = {"crash": 1.0}
    path = _scenario_file(tmp_path, tiny_raw)
    out = tmp_path / "run"
    assert run_cli(["run", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "in the last 2 rounds" in err and "injected fault: client" in err
    assert _by_round(RunDir(out).read_metrics(), "train", "failed") == {1: 2, 2: 2}
