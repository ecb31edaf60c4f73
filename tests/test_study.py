"""Studies: planning (identical partitions and tasks across strategies), results, plots."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import tomli_w
import torch
from matplotlib import image

from fedmeta.experiment import build_experiment
from fedmeta.learners import LEARNERS
from fedmeta.study.plan import deep_merge, parse_param, plan_study
from fedmeta.study.plots import COMPARE_PLOTS
from runner.cli import run_cli

pytestmark = pytest.mark.usefixtures("shared_ray")  # simulations attach to one Ray head


def _same_shard(a, b) -> bool:
    return a.examples.keys() == b.examples.keys() and all(
        np.array_equal(a.examples[c], b.examples[c]) for c in a.examples
    )


def test_strategies_see_identical_partitions_and_eval_tasks(tiny_raw):
    strategies = ["fomaml", "fedmaml", "fedreptile", "fedavg-ft", "perfedavg-hf", "centralized"]
    study = plan_study(tiny_raw, "compare", strategies, seeds=2)
    assert len(study.cells) == len(strategies) * 2
    assert {c.seed for c, _ in study.cells} == {3, 4}
    for seed in (3, 4):
        exps = {c.strategy: build_experiment(sc) for c, sc in study.cells if c.seed == seed}
        ref = exps["fomaml"]
        for name, exp in exps.items():
            assert exp.scenario.seed == seed
            for i, shard in enumerate(exp.layout.heldout):
                assert _same_shard(shard, ref.layout.heldout[i]), name
            for pid in range(4, 6):
                for ta, tb in zip(exp.eval_tasks(pid), ref.eval_tasks(pid), strict=True):
                    assert torch.equal(ta.support_x, tb.support_x), name
                    assert torch.equal(ta.query_y, tb.query_y), name
            if name != "centralized":  # the one strategy that pools the data by design
                for a, b in zip(exp.layout.train, ref.layout.train, strict=True):
                    assert _same_shard(a, b), name
    other = {c.seed: build_experiment(sc) for c, sc in study.cells if c.strategy == "fomaml"}
    a, b = other[3].eval_tasks(4)[0], other[4].eval_tasks(4)[0]
    assert not torch.equal(a.support_x, b.support_x)  # seeds differ


def test_strategy_overrides_and_centralized_budget(tiny_raw):
    tiny_raw["compare"] = {
        "define": {"reptile-sgd": {"learner": {"name": "reptile", "outer-optimizer": "sgd"}}}
    }
    study = plan_study(tiny_raw, "compare", ["reptile-sgd", "centralized", "maml"], seeds=1)
    sc = {c.strategy: s for c, s in study.cells}
    assert sc["reptile-sgd"].learner.name == "reptile"
    assert sc["reptile-sgd"].learner.options.outer_optimizer == "sgd"
    assert sc["reptile-sgd"].learner.options.local_steps == 2  # kept from the scenario
    assert sc["maml"].learner.name == "maml"
    # a strategy that changes the learner keeps the scenario's optimiser (fomaml: Adam), though
    # Reptile and pFedMe default to SGD; naming one (reptile-sgd) wins
    study = plan_study(tiny_raw, "compare", ["fedreptile", "pfedme"], seeds=1)
    assert [s.learner.options.outer_optimizer for _, s in study.cells] == ["adam", "adam"]
    assert LEARNERS.get("reptile").Options().outer_optimizer == "sgd"
    cen = sc["centralized"]
    assert cen.partition.name == "pooled" and cen.learner.name == "fomaml"
    # one client per round taking the meta-steps of the 2 clients it replaces
    assert round(cen.train.fraction * cen.clients.train) == 1
    assert cen.learner.options.local_steps == 2 * 2
    exp = build_experiment(cen)
    pool = set(exp.source.pool("train").tolist())
    assert all(set(s.examples) == pool for s in exp.layout.train)


def test_deep_merge_drops_options_the_new_entry_does_not_take():
    base = {"partition": {"name": "label-split", "by": "group"}, "learner": {"local-steps": 3}}
    out = deep_merge(base, {"partition": {"name": "dirichlet", "alpha": 0.1}})
    assert out["partition"] == {"name": "dirichlet", "alpha": 0.1}
    assert deep_merge(base, {"learner": {"name": "reptile"}})["learner"] == {
        "local-steps": 3,
        "name": "reptile",
    }
    assert base["partition"]["by"] == "group"  # not modified


def test_parse_param():
    assert parse_param("partition.alpha=0.05, 0.1,100") == ("partition.alpha", [0.05, 0.1, 100])
    assert parse_param("partition.by=class,group") == ("partition.by", ["class", "group"])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--strategies", "maml,nosuch"], "unknown strategy 'nosuch'"),
        (["--strategies", "maml,maml"], "twice"),
        (["--seeds", "0"], "--seeds"),
        (["--strategies", "fomaml", "--set", "learner.inner-lr=-1"], "'learner.inner-lr'"),
    ],
)
def test_compare_bad_input_is_one_line_exit_2(tmp_path, tiny_raw, capsys, args, needle):
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_raw))
    assert run_cli(["compare", str(path), "--out", str(tmp_path / "c"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "param, needle",
    [
        ("partition.alpha", "key=v1,v2"),
        ("train.fraction=0.5,7", "'train.fraction'"),
        ("learner.nosuch=1,2", "'learner.nosuch'"),
    ],
)
def test_sweep_bad_param_is_one_line_exit_2(tmp_path, tiny_raw, capsys, param, needle):
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_raw))
    assert run_cli(["sweep", str(path), "--param", param, "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def _has_data_pixels(path) -> bool:
    """A plot is not empty: it has saturated (coloured) pixels, i.e. drawn lines or bands,
    beyond the grey axes, text and grid."""
    img = image.imread(path)[..., :3]
    saturation = img.max(axis=-1) - img.min(axis=-1)
    return int((saturation > 0.3).sum()) > 300


def test_tiny_comparison_writes_results_table_and_every_plot(tmp_path, tiny_raw, capsys):
    tiny_raw["compare"] = {"adapt-steps": [0, 1, 3], "target": 0.3}
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_raw))
    out = tmp_path / "cmp"
    argv = ["compare", str(path), "--strategies", "fomaml,reptile", "--seeds", "2"]
    assert run_cli([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "| fomaml |" in printed.out and "| reptile |" in printed.out

    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["strategy", "seed", "round", "phase", "metric", "value"]
    keys = {(r["strategy"], r["seed"], r["round"], r["metric"]) for r in rows}
    for strategy in ("fomaml", "reptile"):
        for seed in ("3", "4"):
            for rnd in ("0", "1", "2"):
                assert (strategy, seed, rnd, "query-acc-post") in keys
            assert (strategy, seed, "2", "bytes-communicated") in keys
    assert len(keys) == len(rows)  # one row per strategy, seed, round and metric
    assert all(float(r["value"]) == float(r["value"]) for r in rows if "acc" in r["metric"])

    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| strategy |") and len(table) == 4
    assert all(" ± " in line and "| 2 |" in line for line in table[2:])

    for name in COMPARE_PLOTS:
        assert _has_data_pixels(out / f"{name}.png"), name
    with (out / "adapt_steps.csv").open() as f:
        steps = {(r["strategy"], r["adapt-steps"]) for r in csv.DictReader(f)}
    assert ("reptile", "3") in steps and ("fomaml", "0") in steps

    # plots regenerate from saved results; the report links every plot
    for name in COMPARE_PLOTS:
        (out / f"{name}.png").unlink()
    assert run_cli(["plot", str(out)]) == 0
    assert all((out / f"{name}.png").exists() for name in COMPARE_PLOTS)
    assert run_cli(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert all(f"({name}.png)" in report for name in COMPARE_PLOTS) and "| fomaml |" in report

    # rerunning the same command resumes: finished runs are not repeated
    metrics = out / "runs" / "fomaml_seed3" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    assert run_cli([*argv, "--out", str(out)]) == 0
    assert metrics.stat().st_mtime_ns == before


def test_tiny_sweep_plots_accuracy_against_the_parameter(tmp_path, tiny_raw, capsys):
    tiny_raw["train"]["rounds"] = 1
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_raw))
    out = tmp_path / "sw"
    argv = ["sweep", str(path), "--param", "train.fraction=0.25,1.0", "--strategies", "fomaml"]
    assert run_cli([*argv, "--out", str(out)]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["strategy", "seed", "train.fraction"]
    assert {r["train.fraction"] for r in rows} == {"0.25", "1.0"}
    clients = {r["train.fraction"]: r["value"] for r in rows if r["metric"] == "clients"}
    assert clients == {"0.25": "1", "1.0": "4"}
    assert _has_data_pixels(out / "sweep.png")
    assert "sweep.png" in (out / "report.md").read_text()


@pytest.mark.slow  # 9 simulations, about 90 s
def test_every_comparison_strategy_runs_in_a_flower_simulation(tmp_path, tiny_raw, capsys):
    """The learners and presets with their own machinery (extra meta-parameters, client state,
    the FedProx config key, zero rounds, pooled data) run end to end in Flower."""
    tiny_raw["train"]["rounds"] = 1
    tiny_raw["compare"] = {
        "adapt-steps": [0, 2],
        "define": {
            "relationnet": {"learner": {"name": "relationnet"}, "model": {"relation-module": True}}
        },
    }
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_raw))
    out = tmp_path / "all"
    names = (
        "meta-sgd,ditto,fedprox,local-only,centralized,protonet,anil,pfedme,fedavg-ft,"
        "relationnet,meta-lstm"
    )
    assert run_cli(["compare", str(path), "--strategies", names, "--out", str(out)]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    post = {r["strategy"]: float(r["value"]) for r in rows if r["metric"] == "query-acc-post"}
    assert set(post) == set(names.split(","))
    for strategy, value in post.items():  # the CSV's last held-out value is the run's final
        summary = json.loads((out / "runs" / f"{strategy}_seed3" / "summary.json").read_text())
        assert value == summary["heldout"]["query-acc-post"]
    rounds = {(r["strategy"], r["round"]) for r in rows if r["metric"] == "query-acc-post"}
    assert ("local-only", "1") not in rounds and ("local-only", "0") in rounds
    personal = [
        r for r in rows if r["strategy"] == "ditto" and r["metric"] == "personal-train-loss"
    ]
    assert personal and all(math.isfinite(float(r["value"])) for r in personal)
    assert _has_data_pixels(out / "acc_vs_round.png")
    assert (out / "tb" / "relationnet" / "seed3").is_dir()  # TensorBoard: strategy/seed


def test_every_preset_is_listed(capsys):
    from fedmeta.study.plan import PRESETS

    assert all(PRESETS.describe(name) for name in PRESETS)
    assert run_cli(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in PRESETS)


def test_presets_follow_the_swept_values(tiny_raw):
    params = {"train.fraction": [0.5, 1.0], "train.rounds": [3]}
    study = plan_study(tiny_raw, "sweep", ["centralized", "local-only", "fomaml"], 1, params)
    cells = {(c.strategy, dict(c.params)["train.fraction"]): sc for c, sc in study.cells}
    # centralized: one client per round taking the meta-steps of all sampled clients
    assert cells["centralized", 0.5].learner.options.local_steps == 2 * 2
    assert cells["centralized", 1.0].learner.options.local_steps == 2 * 4
    assert cells["local-only", 1.0].train.rounds == 0  # the preset wins over the sweep
    assert cells["fomaml", 1.0].train.rounds == 3 and cells["fomaml", 0.5].train.fraction == 0.5


def test_a_study_dir_refuses_a_changed_cell_but_accepts_new_ones(tmp_path, tiny_raw):
    from fedmeta.errors import FedmetaError
    from fedmeta.study.manifest import write_manifest

    write_manifest(tmp_path, plan_study(tiny_raw, "compare", ["fomaml"], 1).manifest())
    write_manifest(tmp_path, plan_study(tiny_raw, "compare", ["fomaml", "reptile"], 1).manifest())
    tiny_raw["learner"]["inner-lr"] = 0.01
    with pytest.raises(FedmetaError, match="fomaml_seed3 with other settings"):
        write_manifest(tmp_path, plan_study(tiny_raw, "compare", ["fomaml"], 1).manifest())


def test_curves_align_seeds_by_round_not_by_x():
    from fedmeta.study.plots import _series
    from fedmeta.study.results import CellResult

    def cell(seed, mbs, accs):
        recs = []
        for rnd, (mb, acc) in enumerate(zip(mbs, accs, strict=True)):
            recs.append(
                {
                    "round": rnd,
                    "phase": "system",
                    "metric": "bytes-communicated",
                    "value": mb * 2**20,
                }
            )
            recs.append(
                {"round": rnd, "phase": "heldout", "metric": "query-acc-post", "value": acc}
            )
        return CellResult("s", seed, {}, recs, {"heldout": {}}, None)

    cells = [cell(0, [0, 10.5, 20.4], [0.2, 0.5, 0.7]), cell(1, [0, 9.7, 19.1], [0.2, 0.7, 0.9])]

    def points(c):
        mb = c.system("bytes-communicated")
        return {r: (mb[r] / 2**20, v, float("nan")) for r, v in c.curve()}

    x, mean, ci = _series(cells, points)
    np.testing.assert_allclose(x, [0, 10.1, 19.75])
    np.testing.assert_allclose(mean, [0.2, 0.6, 0.8])
    assert ci[0] == 0 and ci[1] > 0
