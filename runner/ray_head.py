"""A Ray head on 127.0.0.1 for many simulations on one machine, stopped by its processes' ids.

Simulations attach to it through ``backend.ray-address`` or ``$FEDMETA_RAY_ADDRESS`` instead of
starting a Ray instance each. The test suite and ``benchmarks/kill_resume.py`` use it; a killed
``fedmeta run`` attached to it leaves no Ray process behind (the head reaps a dead driver's
actors).
"""

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[str, int]]:
    """pid -> (command line, parent pid) of every process we can read."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(entry.name)] = (cmd, ppid)
    return procs


class RayHead:
    """``ray start --head`` on 127.0.0.1 with its own temp dir and port.

    Parameters
    ----------
    num_cpus : int
        CPUs the head offers (each client actor takes ``backend.num-cpus``).
    env : dict, optional
        Extra environment for the head and the workers it starts (they see the environment
        the head started with, not a driver's).
    """

    def __init__(self, num_cpus: int = 2, env: dict[str, str] | None = None) -> None:
        ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="fmray", dir="/tmp")  # socket paths are short
        full_env = {**os.environ, **(env or {}), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        start = [
            ray_bin,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
        ]
        proc = subprocess.run(start, capture_output=True, text=True, timeout=120, env=full_env)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {proc.stderr.strip()[-500:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop only this head's processes (``ray stop`` would stop every Ray instance on the
        machine, a user's running simulation included): those naming its temp dir or port, and
        their children; never this process or its ancestors."""
        procs, mine, pid = _processes(), set(), os.getpid()
        while pid in procs and pid not in mine:
            mine.add(pid)
            pid = procs[pid][1]
        ours = {
            p
            for p, (cmd, _) in procs.items()
            if self.temp_dir in cmd or f":{self.port} " in cmd + " "
        } - mine
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
        shutil.rmtree(self.temp_dir, ignore_errors=True)
