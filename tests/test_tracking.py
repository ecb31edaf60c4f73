"""TensorBoard tracking: the event files say what metrics.jsonl says, a resumed run's redone
rounds replace the old events, and a study names its runs strategy/seed[/param=value]."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmeta.results import RunDir
from fedmeta.scenario import scenario_from_dict
from fedmeta.study.plan import Cell
from fedmeta.tracking import TB_DIR
from runner.simulation import simulate
from tests.test_simulation import Quiet


def scalars(logdir) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def expected(run: RunDir) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in run.read_metrics():
        value = r["value"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.setdefault(f"{r['phase']}/{r['metric']}", {})[r["round"]] = float(value)
    return out


def test_a_resumed_run_dir_replaces_the_events_of_redone_rounds(tmp_path):
    run = RunDir(tmp_path / "run")
    run.open_tracking(0)
    for rnd in range(4):
        run.append_metrics(rnd, "heldout", {"query-acc-post": 0.1 * rnd, "per-client": [1, 2]})
    run.close_tracking()
    run.truncate_metrics(1)  # a crash after round 1's checkpoint: rounds 2 and 3 are redone
    run.open_tracking(2)
    for rnd in (2, 3):
        run.append_metrics(rnd, "heldout", {"query-acc-post": 0.5 + rnd, "per-client": [1, 2]})
    run.close_tracking()
    got = scalars(run.path / TB_DIR)
    assert got.keys() == expected(run).keys() == {"heldout/query-acc-post"}  # no list scalars
    assert got["heldout/query-acc-post"] == pytest.approx({0: 0.0, 1: 0.1, 2: 2.5, 3: 3.5})


@pytest.mark.usefixtures("shared_ray")
def test_a_runs_event_files_hold_its_metrics(tmp_path, tiny_raw):
    tiny_raw["train"]["rounds"] = 3
    run = RunDir(tmp_path / "run")
    simulate(scenario_from_dict(tiny_raw), run, Quiet())
    got, want = scalars(run.path / TB_DIR), expected(run)
    for tag in (
        "heldout/query-acc-pre",
        "heldout/query-acc-post",
        "heldout/query-loss-post",
        "train/train-loss",
        "train/clients",
        "train/failed",
        "system/bytes-communicated",
        "system/wall-seconds",
    ):
        assert tag in got, tag
    assert got.keys() == want.keys()
    for tag, steps in want.items():
        assert got[tag] == pytest.approx(steps, rel=1e-6), tag  # events hold float32
    assert sorted(got["heldout/query-acc-post"]) == [0, 1, 2, 3]


def test_study_cells_are_named_strategy_seed_and_params():
    assert Cell("fedmaml", 2).tb_name == "fedmaml/seed2"
    cell = Cell("protonet", 0, (("privacy.target-epsilon", 8), ("task.k-shot", 5)))
    assert cell.tb_name == "protonet/seed0/privacy.target-epsilon=8/task.k-shot=5"
