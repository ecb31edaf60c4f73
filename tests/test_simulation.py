"""End-to-end Flower simulations on a tiny synthetic scenario (6 clients, 2 rounds)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomli_w

from fedmeta.cli import run_cli
from fedmeta.config import scenario_from_dict
from fedmeta.results import RunDir
from fedmeta.simulation import simulate


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


def test_tiny_simulation_end_to_end_via_cli(tmp_path, tiny_raw, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(tomli_w.dumps(tiny_raw))
    out = tmp_path / "run"
    assert run_cli(["run", str(scenario), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "after adaptation" in printed
    summary = json.loads((out / "summary.json").read_text())
    h = summary["heldout"]
    assert h["num-clients"] == 2 and h["num-tasks"] == 6
    assert 0.0 <= h["query-acc-post"] <= 1.0 and h["query-acc-post-ci95"] >= 0
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


def _stop_cluster(temp_dir: str, port: int) -> None:
    """Stop only the Ray cluster this test started (``ray stop`` would stop every Ray cluster on
    the machine, including a user's running simulation): its processes name its temp dir or
    port, and their children go with them."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(entry.name)] = (cmd, ppid)
    mine, pid = set(), os.getpid()  # never this process or its ancestors
    while pid in procs and pid not in mine:
        mine.add(pid)
        pid = procs[pid][1]
    ours = {p for p, (cmd, _) in procs.items() if temp_dir in cmd or f":{port} " in cmd + " "}
    ours -= mine
    grew = True
    while grew:
        children = {p for p, (_, ppid) in procs.items() if ppid in ours} - ours - mine
        ours |= children
        grew = bool(children)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in ours:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        time.sleep(1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_joins_an_existing_ray_cluster(tmp_path, tiny_raw):
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = _free_port()
    env_tmp = tempfile.mkdtemp(prefix="fmray", dir="/tmp")  # Ray's socket paths must be short
    start = [
        ray_bin,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={env_tmp}",
    ]
    proc = subprocess.run(start, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    try:
        tiny_raw["backend"]["ray-address"] = f"127.0.0.1:{port}"
        tiny_raw["train"]["rounds"] = 1
        summary = simulate(scenario_from_dict(tiny_raw), RunDir(tmp_path / "run"), Quiet())
        assert summary["heldout"]["num-clients"] == 2
    finally:
        _stop_cluster(env_tmp, port)
        shutil.rmtree(env_tmp, ignore_errors=True)
