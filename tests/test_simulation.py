"""End-to-end Flower simulations on a tiny synthetic scenario (6 clients, 2 rounds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from fedmeta.evaluate import evaluate_tasks
from fedmeta.experiment import build_experiment
from fedmeta.results import RunDir
from fedmeta.scenario import scenario_from_dict
from fedmeta.stats import mean_ci95
from runner.cli import run_cli
from runner.simulation import backend_config, simulate

pytestmark = pytest.mark.usefixtures("shared_ray")  # simulations attach to one Ray head


class Quiet:
    def start(self, total_rounds, first_round):
        self.first = first_round

    def update(self, server_round, info):
        pass

    def finish(self):
        pass


class SimulatedCrash(Exception):
    pass


class Crash(Quiet):
    """Simulates a crash after ``after`` rounds."""

    def __init__(self, after):
        self.after = after

    def update(self, server_round, info):
        if server_round >= self.after:
            raise SimulatedCrash


def heldout_metrics(run: Path) -> list[tuple]:
    return [
        (r["round"], r["metric"], r["value"])
        for r in RunDir(run).read_metrics()
        if r["phase"] in ("heldout", "train") and "seconds" not in r["metric"]
    ]


def test_tiny_simulation_end_to_end_via_cli(tmp_path, tiny_raw, capsys, monkeypatch):
    monkeypatch.delenv("FEDMETA_RAY_ADDRESS")  # the default path: a Ray instance of its own
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(tomli_w.dumps(tiny_raw))
    out = tmp_path / "run"
    assert run_cli(["run", str(scenario), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert f"live curves: tensorboard --logdir {out / 'tb'} --host 127.0.0.1" in captured.err
    assert any((out / "tb").glob("events.out.tfevents.*"))
    assert "after adaptation" in printed
    summary = json.loads((out / "summary.json").read_text())
    h = summary["heldout"]
    assert h["num-clients"] == 2 and h["num-tasks"] == 6
    # the server's pooled accuracy is the final meta-parameters' accuracy on the held-out
    # clients' fixed tasks, evaluated here directly
    exp = build_experiment(scenario_from_dict(tiny_raw))
    final = torch.load(out / "final.pt", weights_only=True)
    per_client = [
        evaluate_tasks(exp.learner, final, exp.eval_tasks(pid), exp.source.kind)["query-acc-post"]
        for pid in (4, 5)
    ]
    pooled = [a for accs in per_client for a in accs]
    client_means = [float(np.mean(accs)) for accs in per_client]
    assert h["query-acc-post"] == pytest.approx(np.mean(pooled))
    # the interval is over the 2 clients' means (t with 1 degree of freedom), the task-level
    # one is kept beside it, and the summary and the printed line name the method
    assert h["query-acc-post-ci95"] == pytest.approx(mean_ci95(client_means, "t")[1], nan_ok=True)
    assert h["query-acc-post-ci95-tasks"] == pytest.approx(mean_ci95(pooled)[1])
    assert h["ci-method"] == "t over client means"
    assert "95% CI: t over client means" in printed
    assert summary["bytes-communicated"] > 0
    records = RunDir(out).read_metrics()
    rounds = {r["round"] for r in records if r["phase"] == "heldout"}
    assert rounds == {0, 1, 2}
    train = [r for r in records if r["phase"] == "train" and r["metric"] == "clients"]
    assert [r["value"] for r in train] == [2, 2]  # fraction 0.5 of 4 training clients
    assert (out / "final.pt").exists() and (out / "scenario.toml").exists()
    resolved = scenario_from_dict(__import__("tomllib").loads((out / "scenario.toml").read_text()))
    assert resolved == scenario_from_dict(tiny_raw)


def test_same_seed_gives_identical_metrics_and_resume_continues_exactly(tmp_path, tiny_raw):
    sc = scenario_from_dict(tiny_raw)
    a, b = tmp_path / "a", tmp_path / "b"
    simulate(sc, RunDir(a), Quiet())
    with pytest.raises(SimulatedCrash):
        simulate(sc, RunDir(b), Crash(after=1))
    assert not (b / "summary.json").exists()
    assert RunDir(b).load_checkpoint()["counters"]["round"] == 1
    progress = Quiet()
    simulate(sc, RunDir(b), progress)
    assert progress.first == 2  # resumed after the checkpointed round
    assert heldout_metrics(a) == heldout_metrics(b)


def test_joins_an_existing_ray_cluster(tmp_path, tiny_raw, shared_ray, monkeypatch):
    """``backend.ray-address`` attaches to a running cluster (the suite's own Ray head)."""
    monkeypatch.delenv("FEDMETA_RAY_ADDRESS")
    tiny_raw["backend"]["ray-address"] = shared_ray
    tiny_raw["train"]["rounds"] = 1
    scenario = scenario_from_dict(tiny_raw)
    assert backend_config(scenario)["init_args"]["address"] == shared_ray
    summary = simulate(scenario, RunDir(tmp_path / "run"), Quiet())
    assert summary["heldout"]["num-clients"] == 2
