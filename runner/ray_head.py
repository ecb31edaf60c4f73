"""A Ray head on 127.0.0.1 for many simulations on one machine (and, for tests, a second Ray
node joining it), stopped by its processes' ids.

Simulations attach to it through ``backend.ray-address`` or ``$FEDMETA_RAY_ADDRESS`` instead of
starting a Ray instance each. The test suite and ``benchmarks/kill_resume.py`` use it; a killed
``fedmeta run`` attached to it leaves no Ray process behind (the head reaps a dead driver's
actors).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from runner.procs import free_port, kill_tree, processes

LOOPBACK_WORKER = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
from ray.scripts.scripts import main
constants.ENABLE_RAY_CLUSTER = True  # may join a head (this process only)
services.resolve_ip_for_localhost = lambda host: host  # and stays on 127.0.0.1
sys.argv[0] = "ray"
sys.exit(main())
"""
"""``ray start`` for a second node on this machine (see :meth:`RayHead.add_node`)."""


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
        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="fmray", dir="/tmp")  # socket paths are short
        self.env = {**os.environ, **(env or {}), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false"], num_cpus)

    def _start(self, role: list[str], num_cpus: int, ray: list[str] | None = None) -> None:
        ray = ray or [shutil.which("ray") or str(Path(sys.executable).parent / "ray")]
        start = [*ray, "start", *role, "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}"]
        start += ["--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        proc = subprocess.run(start, capture_output=True, text=True, timeout=120, env=self.env)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {proc.stderr.strip()[-500:]}")

    def add_node(self, num_cpus: int = 1) -> None:
        """Start a second Ray node on this machine that joins the head (``ray start
        --address``), as a worker machine of a cluster would; :meth:`stop` stops it too.

        With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (what keeps Ray on 127.0.0.1) Ray refuses
        to add a node, and with it set to 1 it swaps 127.0.0.1 for the machine's address. So the
        node is started by :data:`LOOPBACK_WORKER`: cluster joining on, loopback kept.
        """
        ports = [f"--{name}-port={free_port()}" for name in ("node-manager", "object-manager")]
        ports += [
            f"--{name}-port={free_port()}" for name in ("metrics-export", "runtime-env-agent")
        ]
        ports += [f"--dashboard-agent-{kind}-port={free_port()}" for kind in ("grpc", "listen")]
        worker = [sys.executable, "-c", LOOPBACK_WORKER]
        self._start([f"--address={self.address}", *ports], num_cpus, worker)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop only this head's processes (``ray stop`` would stop every Ray instance on the
        machine, a user's running simulation included): those naming its temp dir or port, and
        their children; never this process or its ancestors."""
        ours = {
            p
            for p, (cmd, _) in processes().items()
            if self.temp_dir in cmd or f":{self.port} " in cmd + " "
        }
        kill_tree(ours, grace=1.0)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
