"""Run a scenario as a Flower simulation (Ray backend) in this process."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

from fedmeta.errors import FedmetaError
from fedmeta.protocol import sample_size
from fedmeta.results import RunDir
from fedmeta.scenario import Scenario

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def ray_address(scenario: Scenario) -> tuple[str | None, str]:
    """The Ray cluster a run attaches to, and where it was set (for error messages)."""
    if scenario.backend.ray_address:
        return scenario.backend.ray_address, "backend.ray-address"
    return os.environ.get("FEDMETA_RAY_ADDRESS") or None, "$FEDMETA_RAY_ADDRESS"


def check_ray_address(scenario: Scenario, timeout: float = 5.0) -> None:
    """Raise :class:`FedmetaError` (one line, exit 2) when no Ray cluster answers at the
    address a run would attach to. ``auto`` means the cluster ``ray start`` last started on this
    machine (Ray records it in ``/tmp/ray/ray_current_cluster``)."""
    address, source = ray_address(scenario)
    if address is None:
        return
    target = address
    if address == "auto":
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not current.exists():
            raise FedmetaError(
                f"{source} = 'auto' but no Ray cluster was started on this machine; run "
                f"'ray start --head' first, or give the head's HOST:PORT"
            )
        target = current.read_text().strip()
    host, _, port = target.split("://", 1)[-1].rpartition(":")
    if not port.isdigit() or not host:
        raise FedmetaError(f"{source} = {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise FedmetaError(
            f"{source} = {address!r}: no Ray cluster answers at {host}:{port} "
            f"({exc.strerror or exc}); start it with 'ray start --head --port={port}' or fix "
            f"the address"
        ) from None


def backend_config(scenario: Scenario) -> dict[str, Any]:
    """Flower's backend config: per-client resources, and ``ray.init`` arguments.

    With ``backend.ray-address``, or else ``$FEDMETA_RAY_ADDRESS``, the simulation joins an
    existing Ray cluster (started with ``ray start --head``); otherwise it starts a local one.
    """
    b = scenario.backend
    init_args: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    address = ray_address(scenario)[0]
    if address:
        init_args["address"] = address
    elif b.ray_num_cpus:
        init_args["num_cpus"] = b.ray_num_cpus
    return {
        "client_resources": {"num_cpus": b.num_cpus, "num_gpus": b.num_gpus},
        "init_args": init_args,
    }


def quiet() -> None:
    """Silence Flower's per-round INFO logs and deprecation chatter; fedmeta shows progress.

    Environment variables are read when Flower and Ray are imported, and importing Flower
    resets its logger's level: call this both before and after importing them."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("flwr").setLevel(logging.ERROR)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback_only(address: str | None) -> None:
    """Keep a Ray instance on this machine listening on 127.0.0.1 only.

    Ray 2.55 replaces a loopback node address by the machine's external IP, and its servers
    then listen on every interface, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (read when
    ``ray`` is imported, and inherited by the Ray processes started from here). A cluster
    reached at another machine's address keeps Ray's default: its nodes must reach each other.
    """
    if address and address.rsplit(":", 1)[0].strip("[]") not in LOOPBACK:
        return
    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") == "0":
        import ray._private.ray_constants as ray_constants  # if ray was imported before

        ray_constants.ENABLE_RAY_CLUSTER = False


POOL_EVAL = 20
"""Held-out clients evaluated in one exchange (at most), when more than a round trains.

Every node of the pool costs time in every round, trained or not: Flower's simulation engine
polls each node for messages. Measured on the sinusoid scenario (20 clients per round, 2
cores), a pool of 64 nodes made a round take 0.65-0.75 s against 0.43 s with 20 nodes, whatever
the number of clients; so the pool stays small and held-out clients are scored in exchanges."""


def pool_size(scenario: Scenario) -> int:
    """Simulation nodes for a scenario: one per client of the largest exchange (a training
    round's sample, or up to :data:`POOL_EVAL` held-out clients), never one per client
    (:mod:`server.roster`)."""
    c = scenario.clients
    per_round = sample_size(scenario.train.fraction, c.train)
    return min(c.train + c.heldout, max(per_round, min(c.heldout, POOL_EVAL)))


def simulate(scenario: Scenario, run_dir: RunDir, progress) -> dict[str, Any]:
    """Run the scenario's federated training to the end; return the summary. The simulation
    has a pool of :func:`pool_size` nodes, each serving whichever client the server names."""
    quiet()
    config = backend_config(scenario)
    loopback_only(config["init_args"].get("address"))
    import ray
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import make_server_app

    quiet()
    result: dict[str, Any] = {}
    nodes = pool_size(scenario)
    server_app = make_server_app(scenario, run_dir, progress, result, nodes)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=nodes,
            backend_config=config,
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if "error" in result:
        raise result["error"]
    if "summary" not in result:
        raise RuntimeError("the simulation ended without a summary; see the log above")
    return result["summary"]
