"""The ``fedmeta`` command: bad input gives one line and exit code 2; list and validate work."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomli_w

from runner.cli import run_cli


def write(tmp_path, raw, name="s.toml"):
    path = tmp_path / name
    path.write_text(tomli_w.dumps(raw))
    return str(path)


def fedmeta(*args):
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_misspelled_key_exits_2_and_names_it(tmp_path, tiny_raw):
    tiny_raw["learner"]["inner-lrr"] = 0.1
    proc = fedmeta("run", write(tmp_path, tiny_raw))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "learner.inner-lrr" in lines[0] and "inner-lr" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("patch", "args", "needle"),
    [
        ({"task": {"n-way": 30, "k-shot": 1, "query": 2}}, [], "n-way = 30"),
        ({"task": {"n-way": 3, "k-shot": 5, "query": 5}}, [], "k-shot + query = 10"),
        ({"data": {"name": "omniglot", "root": "/nonexistent/omniglot"}}, [], "data.root"),
        ({"data": {"name": "sinusoid"}, "model": {"name": "mlp"}}, [], "task.n-way"),
        (
            {
                "model": {"name": "conv4"},
                "data": {"name": "sinusoid"},
                "task": {"n-way": 1, "k-shot": 2, "query": 2},
            },
            [],
            "model.name = 'conv4'",
        ),
        ({}, ["--set", "train.rounds"], "key=value"),
        ({}, ["--set", "train.rounds=-3"], "train.rounds"),
        ({}, ["--bogus"], "--bogus"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_raw, capsys, patch, args, needle):
    raw = {**tiny_raw, **patch}
    code = run_cli(["validate", write(tmp_path, raw), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and needle in err, err


def test_missing_scenario_file(capsys):
    assert run_cli(["validate", "does-not-exist.toml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_run_refuses_to_overwrite_a_run(tmp_path, tiny_raw, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert run_cli(["run", write(tmp_path, tiny_raw), "--out", str(out)]) == 2
    assert "fedmeta resume" in capsys.readouterr().err


def test_validate_and_list(tmp_path, tiny_raw, capsys):
    assert run_cli(["validate", write(tmp_path, tiny_raw)]) == 0
    assert capsys.readouterr().out.startswith("ok: tiny")
    assert run_cli(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "synthetic",
        "omniglot",
        "sinusoid",
        "label-split",
        "dirichlet",
        "iid",
        "conv4",
        "mlp",
        "maml",
        "fomaml",
        "reptile",
        "perfedavg-fo",
        "perfedavg-hf",
        "fedavg",
        "fedavgm",
        "fedadam",
    ):
        assert f"  {name} " in out, name


def test_shipped_scenarios_validate_offline():
    """Every shipped scenario parses; those on embedded data also build fully."""
    from pathlib import Path

    from fedmeta.scenario import load_scenario

    for path in sorted(Path(__file__).parents[1].glob("scenarios/*.toml")):
        sc = load_scenario(path)
        if sc.data.name in ("synthetic", "sinusoid"):  # embedded data: no files needed
            assert run_cli(["validate", str(path)]) == 0, path


def test_a_crash_mid_run_points_to_resume(tmp_path, tiny_raw, capsys, monkeypatch):
    import runner.simulation

    def crash(scenario, run_dir, progress):
        raise RuntimeError("raylet died")

    monkeypatch.setattr(runner.simulation, "simulate", crash)
    out = tmp_path / "run"
    assert run_cli(["run", write(tmp_path, tiny_raw), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "raylet died" in err and f"fedmeta resume {out}" in err
    assert (out / "scenario.toml").exists()
