"""Shared test fixtures: real-data location, tiny scenarios and one Ray instance."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from runner.ray_head import RayHead

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def data_root() -> Path | None:
    """``$FEDMETA_DATA`` or ``../shared/data`` when it exists."""
    env = os.environ.get("FEDMETA_DATA")
    for cand in ([Path(env)] if env else []) + [SHARED_DATA]:
        if (cand / "omniglot").is_dir():
            return cand
    return None


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` loaded by path (a dependency ships a "benchmarks" package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


class Quiet:
    """A progress sink that shows nothing (for simulations run by tests)."""

    def start(self, total_rounds, first_round):
        pass

    def update(self, server_round, info):
        pass

    def finish(self):
        pass


@pytest.fixture
def tiny_raw():
    import copy

    return copy.deepcopy(TINY)


@pytest.fixture
def flower_task(monkeypatch):
    """Let tests build Flower messages outside a Flower run (they need a run, node and task)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


# -- one Ray instance for the simulations of a session -----------------------------------------


@pytest.fixture(scope="session")
def _ray_head():
    """A Ray head on 127.0.0.1 started once for the session and stopped, by its processes'
    ids, at its end. Simulations attach to it through ``FEDMETA_RAY_ADDRESS`` instead of
    starting and stopping a Ray instance each (about 5 s per simulation on 2 cores)."""
    root = data_root()  # the head's workers see the environment it started with
    head = RayHead(env={"FEDMETA_DATA": str(root)} if root is not None else None)
    try:
        yield head.address
    finally:
        head.stop()


@pytest.fixture
def shared_ray(_ray_head, monkeypatch):
    """Simulations in this test attach to the session's Ray head; yields its address."""
    monkeypatch.setenv("FEDMETA_RAY_ADDRESS", _ray_head)
    return _ray_head
