"""Shared test fixtures: real-data location, tiny scenarios and one Ray instance."""

from __future__ import annotations

import contextlib
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

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def data_root() -> Path | None:
    """``$FEDMETA_DATA`` or ``../shared/data`` when it exists."""
    env = os.environ.get("FEDMETA_DATA")
    for cand in ([Path(env)] if env else []) + [SHARED_DATA]:
        if (cand / "omniglot").is_dir():
            return cand
    return None


@pytest.fixture
def omniglot_env(monkeypatch):
    root = data_root()
    if root is None:
        pytest.skip("Omniglot not found: set FEDMETA_DATA or place it in ../shared/data")
    monkeypatch.setenv("FEDMETA_DATA", str(root))
    return root


TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {"name": "synthetic", "num-classes": 40, "examples-per-class": 8},
    "task": {"n-way": 3, "k-shot": 1, "query": 2},
    "clients": {"train": 4, "heldout": 2},
    "partition": {"name": "label-split"},
    "model": {"name": "conv4", "width": 8},
    "learner": {"name": "fomaml", "local-steps": 2, "tasks-per-step": 2, "inner-steps": 1},
    "strategy": {"name": "fedavg"},
    "train": {"rounds": 2, "fraction": 0.5},
    "evaluation": {"every": 1, "tasks-per-client": 3},
    "backend": {"num-cpus": 1},
}


@pytest.fixture
def tiny_raw():
    import copy

    return copy.deepcopy(TINY)


# -- one Ray instance for the simulations of a session -----------------------------------------


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


@pytest.fixture(scope="session")
def _ray_head():
    """A Ray head on 127.0.0.1 started once for the session and stopped, by its processes'
    ids, at its end. Simulations attach to it through ``FEDMETA_RAY_ADDRESS`` instead of
    starting and stopping a Ray instance each (about 5 s per simulation on 2 cores)."""
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="fmray", dir="/tmp")  # Ray's socket paths must be short
    env = dict(os.environ)
    root = data_root()
    if root is not None:  # the cluster's workers see the environment it started with
        env["FEDMETA_DATA"] = str(root)
    start = [
        ray_bin,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    proc = subprocess.run(start, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def shared_ray(_ray_head, monkeypatch):
    """Simulations in this test attach to the session's Ray head; yields its address."""
    monkeypatch.setenv("FEDMETA_RAY_ADDRESS", _ray_head)
    return _ray_head
