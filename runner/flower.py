"""Flower's own processes and CLI on this machine: a SuperLink, SuperNodes, and ``flwr``.

:class:`Federation` starts a ``flower-superlink`` on 127.0.0.1 (for the Deployment Engine, or
with ``--simulation`` for Flower's simulation runtime), SuperNodes that each hold one partition
like a hospital's own process, and talks to the SuperLink through the ``flwr`` CLI with its own
``$FLWR_HOME``, so the user's Flower configuration and the project's files are never touched.
It stops every process it started, with their children, by process id.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runner.credentials import Tls, make_node_key, make_tls
from runner.procs import free_port, kill_tree

CONNECTION = "fedmeta"
"""The connection name in this federation's ``$FLWR_HOME/config.toml``."""
QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a simulation's Ray listens on 127.0.0.1 only
}
FINISHED = "finished:"


def _bin(name: str) -> str:
    """A Flower executable next to this Python (the project's environment)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


class FlowerError(RuntimeError):
    """A Flower process or ``flwr`` command failed."""


class Federation:
    """A SuperLink and its SuperNodes on loopback, their logs and credentials in ``workdir``.

    Parameters
    ----------
    workdir : Path
        Holds ``flwr-home/``, one log per process and, with ``secure``, the credentials.
    secure : bool
        TLS with a throwaway CA, and SuperNode authentication: only SuperNodes whose public
        key was registered (:meth:`add_supernode` does it) may join.
    env : dict, optional
        Extra environment for every process (e.g. ``FEDMETA_DATA``).
    """

    def __init__(self, workdir: Path, secure: bool = False, env: dict[str, str] | None = None):
        self.workdir = workdir.resolve()
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **QUIET, **(env or {}), "FLWR_HOME": str(self.home)}
        # the SuperLink and SuperNodes start Flower's other executables by name
        bindir = str(Path(sys.executable).parent)
        self.env["PATH"] = os.pathsep.join([bindir, self.env.get("PATH", "")])
        self.tls: Tls | None = make_tls(self.workdir / "credentials") if secure else None
        self.procs: dict[str, subprocess.Popen] = {}
        self.address = ""

    # -- processes ---------------------------------------------------------------------------
    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with (self.workdir / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
            )
        self.procs[name] = proc
        return proc

    def _security(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile", str(self.tls.ca),
            "--ssl-certfile", str(self.tls.cert),
            "--ssl-keyfile", str(self.tls.key),
            "--enable-supernode-auth",
        ]  # fmt: skip

    def start_superlink(self, simulation: bool = False, timeout: float = 60.0) -> str:
        """Start the SuperLink on a free 127.0.0.1 port; returns its address."""
        self.address = f"127.0.0.1:{free_port()}"
        host, port = self.address.split(":")
        cmd = [_bin("flower-superlink"), *self._security(), "--host", host, "--port", port]
        cmd += ["--disable-runtime-dependency-installation"]
        cmd += ["--simulation"] if simulation else []
        proc = self._start("superlink", cmd)
        conn = {"address": self.address}
        conn |= {"insecure": True} if self.tls is None else {"root-certificates": str(self.tls.ca)}
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in conn.items()]
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")
        deadline = time.monotonic() + timeout
        while not _listening(host, int(port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FlowerError(f"the SuperLink did not start; see {self.workdir}/superlink.log")
            time.sleep(0.2)
        return self.address

    def add_supernode(
        self,
        partition_id: int,
        num_partitions: int,
        data_root: str | None = None,
        register: bool = True,
        insecure: bool = False,
    ) -> subprocess.Popen:
        """Start one SuperNode holding ``partition_id``, with its own ClientApp API port.

        In a secure federation it gets a key pair of its own, registered with the SuperLink
        unless ``register`` is false; ``insecure`` makes it talk plain text (both are how tests
        show that the SuperLink refuses such a node).
        """
        name = f"supernode-{partition_id}"
        node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
        if data_root is not None:
            node_config += f' data-root="{data_root}"'
        cmd = [_bin("flower-supernode"), "--superlink", self.address, "--node-config", node_config]
        cmd += ["--port", str(free_port())]
        if self.tls is None or insecure:
            cmd += ["--insecure"]
        else:
            cmd += ["--root-certificates", str(self.tls.ca)]
            private, public = make_node_key(self.workdir / "credentials", name)
            if register:
                self.flwr("supernode", "register", str(public))
            cmd += ["--auth-supernode-private-key", str(private)]
        return self._start(name, cmd)

    def stop(self) -> None:
        """Stop every process this federation started, and their children."""
        kill_tree([p.pid for p in self.procs.values()])
        for proc in self.procs.values():
            proc.wait(timeout=10)

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the flwr CLI --------------------------------------------------------------------------
    def flwr(self, *args: str, check: bool = True, timeout: float = 120.0):
        """Run ``flwr ARGS`` against this federation's SuperLink."""
        cmd = [_bin("flwr"), args[0], *args[1:]]
        if args[0] in ("list", "ls", "log", "stop") or args[:2] == ("supernode", "register"):
            cmd.append(CONNECTION)
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, cwd=self.workdir, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise FlowerError(f"{' '.join(cmd[:3])} failed: {_last_line(proc)}")
        return proc

    def submit(
        self, app: Path, run_config: dict[str, Any], federation_config: dict[str, Any] | None = None
    ) -> int:
        """``flwr run APP``; returns the run id."""
        args = ["run", str(app), CONNECTION, "--format", "json"]
        args += ["--run-config", " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())]
        if federation_config:
            fed = " ".join(f"{k}={json.dumps(v)}" for k, v in federation_config.items())
            args += ["--federation-config", fed]
        proc = self.flwr(*args)
        return int(json.loads(proc.stdout)["run-id"])

    def status(self, run_id: int) -> str:
        """The run's status, e.g. ``running`` or ``finished:completed`` (``flwr list``);
        ``unknown`` when flwr cannot tell now (a SuperLink too busy to answer in time)."""
        try:
            proc = self.flwr("list", "--run-id", str(run_id), "--format", "json", check=False)
            runs = json.loads(proc.stdout)["runs"]
        except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
            return "unknown"
        return str(runs[0]["status"]) if runs else "unknown"

    def follow(
        self, run_id: int, out=sys.stderr, poll: float = 30.0, timeout: float | None = None
    ) -> str:
        """Stream the run's logs to ``out`` until its status is ``finished:…``; returns it.

        The log stream ends when the run does; the status (``flwr list``, a second or two of
        CPU per call) is read then, and every ``poll`` seconds in case the stream broke. After
        ``timeout`` seconds the run is stopped and ``"timed-out"`` returned.
        """
        cmd = [_bin("flwr"), "log", str(run_id), CONNECTION, "--stream"]
        streamer = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        t0 = checked = time.monotonic()
        try:
            while True:
                time.sleep(0.5)
                now, ended = time.monotonic(), streamer.poll() is not None
                if now - checked > (2.0 if ended else poll):
                    if (status := self.status(run_id)).startswith(FINISHED):
                        return status
                    checked = now
                if timeout is not None and now - t0 > timeout:
                    self.flwr("stop", str(run_id), check=False)
                    return "timed-out"
        finally:
            kill_tree([streamer.pid], grace=1.0)
            streamer.wait(timeout=10)


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"
