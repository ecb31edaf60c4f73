"""``fedmeta deploy``: a scenario on Flower's own engines, on this machine.

With the Deployment Engine (the default), a SuperLink and one SuperNode per client run on
127.0.0.1 as separate processes, each SuperNode holding its partition (``--node-config
"partition-id=… num-partitions=…"``, plus ``data-root``) like a hospital's own process. With
``--simulation``, the SuperLink runs Flower's simulation runtime instead (what ``flwr run .``
does with the local connection). Either way the run is submitted with ``flwr run``, its logs are
followed, its final status is read with ``flwr list`` (``flwr run --stream`` exits 0 even when a
run fails), and every process started here is stopped at the end, on failure too.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from fedmeta.errors import FedmetaError
from fedmeta.results import RunDir
from fedmeta.scenario import Scenario
from runner.flower import Federation

APP = Path(__file__).resolve().parents[1]
"""The Flower app (the folder with ``pyproject.toml``) that ``flwr run`` builds and submits."""


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def deploy(
    scenario: Scenario,
    out: Path,
    simulation: bool = False,
    secure: bool = False,
    data_root: str | None = None,
    timeout: float | None = None,
) -> dict:
    """Run ``scenario`` under a Flower engine, results in ``out``; returns the Flower run id,
    its final status and the wall time.

    The federation's logs, ``flwr-home`` and credentials go to ``out/deploy``; the run directory
    gets the same files as ``fedmeta run``.
    """
    if not (APP / "pyproject.toml").exists():
        raise FedmetaError(f"fedmeta deploy needs the project folder (no {APP}/pyproject.toml)")
    out = out.resolve()
    if (out / "checkpoint.pt").exists():
        raise FedmetaError(f"--out {str(out)!r} already holds a run; choose another --out")
    work = out / "deploy"
    work.mkdir(parents=True, exist_ok=True)
    RunDir(work).write_scenario(scenario.to_toml())  # the resolved scenario, --set included
    n = scenario.clients.train + scenario.clients.heldout
    engine = "simulation runtime" if simulation else f"Deployment Engine, {n} SuperNodes"
    print(f"fedmeta: deploying {scenario.name!r} ({engine}) -> {out}", file=sys.stderr)
    t0 = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the processes are stopped
    try:
        with Federation(work, secure=secure) as fed:
            fed.start_superlink(simulation=simulation)
            for pid in range(0 if simulation else n):
                fed.add_supernode(pid, n, data_root)
            (work / "processes.json").write_text(
                json.dumps({name: p.pid for name, p in fed.procs.items()}, indent=1)
            )
            federation_config = None
            if simulation:
                cpus = max(1, round(scenario.backend.num_cpus))  # Flower takes whole CPUs
                federation_config = {"num-supernodes": n, "client-resources-num-cpus": cpus}
            run_config = {"scenario": str(work / "scenario.toml"), "out": str(out)}
            run_id = fed.submit(APP, run_config, federation_config)
            print(f"fedmeta: flwr run {run_id} submitted to {fed.address}", file=sys.stderr)
            status = fed.follow(run_id, timeout=timeout)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {"run-id": run_id, "status": status, "wall-seconds": round(time.monotonic() - t0, 1)}
