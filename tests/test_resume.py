"""Crash-safe resume: a run killed with SIGKILL at any point, then resumed, finishes exactly like
an uninterrupted run (``benchmarks/kill_resume.py`` prints the whole matrix)."""

from __future__ import annotations

import os

import pytest
from conftest import benchmark_module

kr = benchmark_module("kill_resume")

pytestmark = pytest.mark.usefixtures("shared_ray")  # killed runs leave no Ray process behind

CHAIN = [("mid-round", 2), ("after-checkpoint", 3), ("torn-line", 4)]
"""One run killed three times: while round 2 trains, right after round 3's checkpoint, and
right after round 4's with a torn metrics line written by hand; resumed after each."""


@pytest.mark.parametrize(
    "config",
    [
        "fedavg-fomaml",
        "ditto",  # personal models on disk, by round
        pytest.param("kept-adam", marks=pytest.mark.slow),  # clients' optimiser state on disk
        pytest.param("fedadam-maml", marks=pytest.mark.slow),  # server optimiser state
        pytest.param("dp-adaptive", marks=pytest.mark.slow),  # DP ledger, adaptive clip norm
    ],
)
def test_a_killed_and_resumed_run_finishes_identical(config, tmp_path):
    raw, env = kr.scenario(config), dict(os.environ)
    kr.full_run(raw, tmp_path / "reference", env)
    kr.interrupted_run(raw, tmp_path / "killed", CHAIN, env)
    assert kr.compare(tmp_path / "reference", tmp_path / "killed") == "identical"
    log = (tmp_path / "killed.log").read_text()
    assert "dropped a torn last line" in log
