"""Flower's own engines: ``flwr run`` on Flower's simulation runtime, the Deployment Engine on
loopback (plain, with a SuperNode killed mid-run, and secure), and a two-node Ray cluster.

Every test starts its own SuperLink, SuperNodes or Ray nodes on 127.0.0.1, with its own
``$FLWR_HOME``, and stops them by process id, on failure too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w
import torch
from conftest import benchmark_module
from flwr.common.constant import ErrorCode

from fedmeta.protocol import INFO, PARTITION_ID
from fedmeta.results import RunDir
from runner.cli import run_cli
from runner.deploy import APP
from runner.flower import Federation
from runner.procs import kill_tree
from runner.ray_head import RayHead
from server.exchange import QUERY_ATTEMPTS, ClientFailure, connect

pytestmark = pytest.mark.usefixtures("shared_ray")


def _engine_raw(tiny_raw: dict, train: int = 3, heldout: int = 1, rounds: int = 2) -> dict:
    tiny_raw["clients"] = {"train": train, "heldout": heldout}
    tiny_raw["train"] |= {"rounds": rounds, "fraction": 1.0, "timeout": 60}
    tiny_raw["data"]["num-classes"] = 30
    return tiny_raw


def _write(tmp_path: Path, raw: dict, name: str = "engine.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(raw))
    return path


def _metrics(run: Path, phases=("heldout", "train")) -> list[tuple]:
    """Every record but wall-clock ones and where clients ran."""
    return [
        (r["round"], r["phase"], r["metric"], r["value"])
        for r in RunDir(run).read_metrics()
        if r["phase"] in phases
        and "seconds" not in r["metric"]
        and r["metric"] != "clients-per-node"
    ]


# -- connecting nodes to partitions (no processes) ---------------------------------------------


class FakeGrid:
    """A grid whose nodes answer the partition QUERY with the partition ids given; a node in
    ``unavailable`` is reported unavailable by the SuperLink that many times first."""

    def __init__(self, partitions: dict[int, int], unavailable: dict[int, int] | None = None):
        self.partitions = partitions
        self.unavailable = dict(unavailable or {})
        self.batches: list[int] = []

    def get_node_ids(self):
        return list(self.partitions)

    def reply(self, node: int) -> SimpleNamespace:
        if self.unavailable.get(node, 0) > 0:
            self.unavailable[node] -= 1
            return SimpleNamespace(
                has_error=lambda: True,
                error=SimpleNamespace(code=ErrorCode.NODE_UNAVAILABLE, reason="Node Unavailable"),
                metadata=SimpleNamespace(src_node_id=0),
            )
        return SimpleNamespace(
            has_error=lambda: False,
            metadata=SimpleNamespace(src_node_id=node),
            content={INFO: {PARTITION_ID: self.partitions[node]}},
        )

    def send_and_receive(self, msgs, timeout):
        self.batches.append(len(msgs))
        return [self.reply(m.metadata.dst_node_id) for m in msgs]


@pytest.mark.usefixtures("flower_task")
def test_the_server_uses_exactly_the_nodes_the_scenario_names(caplog):
    from flwr.app import ConfigRecord

    grid = FakeGrid({100 + p: p for p in range(7)})  # 7 nodes, the scenario names 4
    with caplog.at_level("WARNING", logger="fedmeta"):
        roster = connect(grid, 4, ConfigRecord(), settle=0.2)
    assert roster.node_of == {0: 100, 1: 101, 2: 102, 3: 103}
    assert "ignoring 3 extra node(s) (holding partition 4-6)" in caplog.text
    many = FakeGrid({1000 + p: p for p in range(40)})  # asked a batch at a time
    assert connect(many, 40, ConfigRecord(), settle=0.2).node_of == {p: 1000 + p for p in range(40)}
    assert many.batches == [8, 8, 8, 8, 8]


@pytest.mark.usefixtures("flower_task")
def test_a_node_reported_unavailable_is_asked_again_then_fails_with_one_line(caplog):
    """A SuperNode starved of CPU misses its heartbeats: the SuperLink answers for it with
    "Node Unavailable". It is asked again, up to QUERY_ATTEMPTS times."""
    from flwr.app import ConfigRecord

    grid = FakeGrid({100 + p: p for p in range(4)}, unavailable={101: 2})
    with caplog.at_level("WARNING", logger="fedmeta"):
        assert connect(grid, 4, ConfigRecord(), settle=5).node_of == {p: 100 + p for p in range(4)}
    assert "unavailable to the partition query; asking again" in caplog.text
    gone = FakeGrid({100 + p: p for p in range(4)}, unavailable={102: QUERY_ATTEMPTS})
    with pytest.raises(ClientFailure, match=f"node 102 did not answer .* {QUERY_ATTEMPTS} times"):
        connect(gone, 4, ConfigRecord(), settle=5)


@pytest.mark.usefixtures("flower_task")
def test_too_few_nodes_or_a_shared_partition_fail_with_one_clear_line():
    from flwr.app import ConfigRecord

    with pytest.raises(
        ClientFailure,
        match=r"needs 5 clients but only 3 connected \(no node "
        r"holds partition 3-4\).*num-supernodes=5",
    ):
        connect(FakeGrid({1: 0, 2: 1, 3: 2}), 5, ConfigRecord(), settle=0.3)
    with pytest.raises(ClientFailure, match="two nodes hold partition 1"):
        connect(FakeGrid({1: 0, 2: 1, 3: 1}), 3, ConfigRecord(), settle=0.3)


def test_flwr_run_config_resolves_paths_and_refuses_relative_output(tmp_path, monkeypatch):
    from fedmeta.errors import FedmetaError
    from server.app import run_from_config

    monkeypatch.setenv("FEDMETA_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)  # not the app folder: paths resolve against the app, not here
    for i, path in enumerate(sorted((APP / "scenarios").glob("*.toml"))):  # every shipped one
        scenario, run_dir = run_from_config({"scenario": f"scenarios/{path.name}"}, i)
        assert run_dir.path == tmp_path / "runs" / f"{scenario.name}-{i}"
        assert (run_dir.path / "scenario.toml").exists()
    with pytest.raises(FedmetaError, match="out='runs' must be an absolute path"):
        run_from_config({"scenario": "scenarios/heart-loho.toml", "out": "runs"}, 8)
    with pytest.raises(FedmetaError, match="no file"):
        run_from_config({"scenario": "scenarios/nope.toml"}, 9)


def test_a_status_flwr_cannot_read_now_is_unknown_not_a_crash(tmp_path, monkeypatch):
    """``flwr list`` answers with an error object (or times out) when the SuperLink is too busy;
    following the run then keeps polling instead of failing."""
    fed = Federation(tmp_path)
    answers = iter(
        [
            SimpleNamespace(stdout='{"success": false, "error-message": "busy"}'),
            subprocess.TimeoutExpired("flwr", 120),
            SimpleNamespace(stdout='{"runs": [{"status": "finished:completed"}]}'),
        ]
    )

    def flwr(*args, check=True):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(fed, "flwr", flwr)
    assert [fed.status(7) for _ in range(3)] == ["unknown", "unknown", "finished:completed"]


def test_an_unreachable_ray_address_exits_2_at_validate_and_run(tmp_path, tiny_raw, capsys):
    from runner.procs import free_port

    tiny_raw["backend"]["ray-address"] = f"127.0.0.1:{free_port()}"
    path = _write(tmp_path, tiny_raw)
    for argv in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "r")]):
        assert run_cli(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "backend.ray-address" in err[0] and "no Ray cluster" in err[0]
    assert not (tmp_path / "r").exists()


def test_bad_deploy_values_exit_2_with_one_line(tmp_path, tiny_raw, capsys):
    path = _write(tmp_path, tiny_raw)
    for argv, needle in (
        (["--data-root", str(tmp_path / "nowhere")], "--data-root"),
        (["--timeout", "0"], "--timeout"),
    ):
        assert run_cli(["deploy", str(path), "--out", str(tmp_path / "d"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "d").exists()  # nothing was started


# -- flwr run on Flower's simulation runtime ---------------------------------------------------


def test_flwr_run_matches_fedmeta_run_and_ignores_extra_nodes(tmp_path, tiny_raw):
    raw = _engine_raw(tiny_raw, train=4, heldout=1)  # 5 clients, not the old fixed 60
    path = _write(tmp_path, raw)
    assert run_cli(["run", str(path), "--out", str(tmp_path / "sim")]) == 0
    before = subprocess.run(["git", "status", "--porcelain"], cwd=APP, capture_output=True)
    out, log = tmp_path / "flwr-run", tmp_path / "flwr.log"
    with Federation(tmp_path / "fed") as fed, log.open("w") as f:
        fed.start_superlink(simulation=True)
        run_id = fed.submit(
            APP,
            {"scenario": str(path), "out": str(out)},
            {"num-supernodes": 7, "client-resources-num-cpus": 1},
        )
        status = fed.follow(run_id, out=f, timeout=600)
    assert status == "finished:completed", log.read_text()[-3000:]
    assert _metrics(out) == _metrics(tmp_path / "sim")
    assert json.loads((out / "summary.json").read_text())["heldout"]["num-clients"] == 1
    text = log.read_text()
    assert "ignoring 2 extra node(s)" in text
    assert "Traceback" not in text
    after = subprocess.run(["git", "status", "--porcelain"], cwd=APP, capture_output=True)
    assert after.stdout == before.stdout  # flwr run changed no file of the project


def test_a_failed_flwr_run_is_reported_failed_not_completed(tmp_path, tiny_raw):
    raw = _engine_raw(tiny_raw, train=3, heldout=1)
    raw["data"] = {"name": "omniglot", "root": str(tmp_path / "missing")}  # no data there
    path = _write(tmp_path, raw)
    log = tmp_path / "flwr.log"
    with Federation(tmp_path / "fed") as fed, log.open("w") as f:
        fed.start_superlink(simulation=True)
        run_id = fed.submit(
            APP, {"scenario": str(path), "out": str(tmp_path / "o")}, {"num-supernodes": 4}
        )
        status = fed.follow(run_id, out=f, timeout=300)
    assert status == "finished:failed"
    assert "fedmeta: data.root" in log.read_text()


def test_a_killed_fedmeta_run_resumes_under_flwr_run(tmp_path, shared_ray):
    """``--run-config "resume='<run dir>'"`` continues a run another engine left: killed after
    round 2's checkpoint, resumed by ``flwr run``, it ends like an uninterrupted run."""
    kr = benchmark_module("kill_resume")
    raw, env = kr.scenario("fedavg-fomaml"), dict(os.environ)
    kr.full_run(raw, tmp_path / "reference", env)
    out = tmp_path / "killed"
    kr.interrupted_run(raw, out, [("after-checkpoint", 2)], env, finish=False)
    assert not (out / "final.pt").exists()
    log = tmp_path / "flwr.log"
    clients = raw["clients"]["train"] + raw["clients"]["heldout"]
    with Federation(tmp_path / "fed") as fed, log.open("w") as f:
        fed.start_superlink(simulation=True)
        run_id = fed.submit(APP, {"resume": str(out)}, {"num-supernodes": clients})
        status = fed.follow(run_id, out=f, timeout=600)
    assert status == "finished:completed", log.read_text()[-3000:]
    assert _metrics(out) == _metrics(tmp_path / "reference")
    final, reference = (
        torch.load(p / "final.pt", weights_only=True) for p in (out, tmp_path / "reference")
    )
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)


# -- the Deployment Engine on loopback ---------------------------------------------------------


def test_deploy_runs_the_scenario_like_the_simulation(tmp_path, tiny_raw, capsys):
    raw = _engine_raw(tiny_raw, train=3, heldout=1)
    path = _write(tmp_path, raw)
    assert run_cli(["run", str(path), "--out", str(tmp_path / "sim")]) == 0
    capsys.readouterr()
    out = tmp_path / "deployed"
    assert run_cli(["deploy", str(path), "--out", str(out), "--timeout", "600"]) == 0
    stdout = capsys.readouterr().out
    assert json.loads(stdout.splitlines()[0])["status"] == "finished:completed"
    assert _metrics(out) == _metrics(tmp_path / "sim")
    pids = json.loads((out / "deploy" / "processes.json").read_text())
    assert len(pids) == 1 + 4
    assert not any(Path(f"/proc/{p}").exists() for p in pids.values())  # all stopped


@pytest.mark.slow
def test_deployed_sites_read_their_own_data_root(tmp_path, tiny_raw, omniglot_env, capfd):
    """Real data on the Deployment Engine: every SuperNode loads Omniglot from its node
    config's ``data-root``. The right folder gives the simulation's records; an empty one
    fails the run on the nodes with the data line."""
    raw = _engine_raw(tiny_raw, train=3, heldout=1)
    raw["data"] = {"name": "omniglot", "root": str(omniglot_env / "omniglot")}  # the server's
    raw["task"] = {"n-way": 3, "k-shot": 1, "query": 2}
    path = _write(tmp_path, raw)
    assert run_cli(["run", str(path), "--out", str(tmp_path / "sim")]) == 0
    site = tmp_path / "site-data"
    site.symlink_to(omniglot_env / "omniglot")  # a site's own folder holding the same files
    out = tmp_path / "deployed"
    args = ["deploy", str(path), "--out", str(out), "--timeout", "900", "--data-root", str(site)]
    assert run_cli(args) == 0
    assert _metrics(out) == _metrics(tmp_path / "sim")
    empty = tmp_path / "empty"
    empty.mkdir()
    capfd.readouterr()
    bad = ["deploy", str(path), "--out", str(tmp_path / "bad"), "--timeout", "600"]
    assert run_cli([*bad, "--data-root", str(empty)]) == 1
    assert json.loads(capfd.readouterr().out.splitlines()[0])["status"] == "finished:failed"
    for node in range(4):  # every site failed on its own folder, named in its log
        assert str(empty) in (tmp_path / "bad" / "deploy" / f"supernode-{node}.log").read_text()


def test_killed_supernodes_are_counted_and_the_run_completes(tmp_path, tiny_raw):
    raw = _engine_raw(tiny_raw, train=3, heldout=1, rounds=4)
    raw["train"]["timeout"] = 30
    path = _write(tmp_path, raw)
    out = tmp_path / "deployed"
    cmd = [sys.executable, "-m", "runner.cli", "deploy", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(r["phase"] == "train" for r in RunDir(out).read_metrics()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(1.0)
        pids = json.loads((out / "deploy" / "processes.json").read_text())
        kill_tree([pids["supernode-0"]], first=signal.SIGKILL)  # a hospital crashes,
        kill_tree([pids["supernode-1"]])  # and another one shuts down (it unregisters)
        stdout, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # the deploy command stops its own processes on SIGTERM
            kill_tree([proc.pid], grace=10.0)
    assert proc.returncode == 0, stdout
    summary = json.loads((out / "summary.json").read_text())
    faults = summary["faults"]
    assert faults["failed"] + faults["timed-out"] >= 5  # rounds 2-4 miss partitions 0 and 1
    assert summary["rounds"] == 4 and summary["heldout"]["num-clients"] == 1


def test_a_secure_deployment_refuses_nodes_without_credentials_or_tls(tmp_path, tiny_raw):
    raw = _engine_raw(tiny_raw, train=2, heldout=1)
    path = _write(tmp_path, raw)
    out, log = tmp_path / "secure", tmp_path / "flwr.log"
    with Federation(tmp_path / "fed", secure=True) as fed, log.open("w") as f:
        fed.start_superlink()
        for pid in range(3):
            fed.add_supernode(pid, 3)
        fed.add_supernode(7, 3, register=False)  # TLS, but a key the SuperLink does not know
        fed.add_supernode(8, 3, insecure=True)  # plain text
        run_id = fed.submit(APP, {"scenario": str(path), "out": str(out)})
        status = fed.follow(run_id, out=f, timeout=600)
        registered = fed.flwr("supernode", "list", "--format", "json").stdout
    text = log.read_text()
    assert status == "finished:completed", text[-3000:]
    assert "extra node" not in text  # neither rogue node reached the run
    assert json.loads((out / "summary.json").read_text())["heldout"]["num-clients"] == 1
    nodes = json.loads(registered)["nodes"]  # the three registered nodes, and no other
    assert sorted(n["status"] for n in nodes) == ["online"] * 3, registered


# -- a two-node Ray cluster --------------------------------------------------------------------


def test_a_two_node_ray_cluster_is_used_and_gives_the_same_metrics(tmp_path, monkeypatch):
    sets = ["--set", "train.rounds=3", "--set", "evaluation.every=3"]
    quickstart = str(APP / "scenarios" / "quickstart.toml")
    assert run_cli(["run", quickstart, *sets, "--out", str(tmp_path / "one")]) == 0
    cluster = RayHead(num_cpus=1)
    try:
        cluster.add_node(num_cpus=1)
        monkeypatch.setenv("FEDMETA_RAY_ADDRESS", cluster.address)
        assert run_cli(["run", quickstart, *sets, "--out", str(tmp_path / "two")]) == 0
    finally:
        cluster.stop()
    per_node = json.loads((tmp_path / "two" / "summary.json").read_text())["clients-per-node"]
    assert len(per_node) == 2 and sum(per_node.values()) == 30, per_node
    assert _metrics(tmp_path / "two") == _metrics(tmp_path / "one")
