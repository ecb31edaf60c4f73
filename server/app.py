"""The fedmeta ServerApp.

``make_server_app`` builds the app the ``fedmeta`` command runs in-process (scenario and run
directory passed in a closure). The module-level ``app`` is the entry point for ``flwr run``
(a local simulation or the Deployment Engine): the run config names the scenario, and the
results go to a run directory with the same files as ``fedmeta run`` (:func:`run_from_config`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmeta.errors import FedmetaError
from fedmeta.experiment import build_experiment
from fedmeta.privacy.audit import run_audit
from fedmeta.results import RunDir
from fedmeta.scenario import Scenario, load_scenario
from server.loop import Progress, run_rounds

log = logging.getLogger("fedmeta")


class LogProgress:
    """Progress as plain log lines (used under ``flwr run``)."""

    def start(self, total_rounds: int, first_round: int) -> None:
        self.total = total_rounds

    def update(self, server_round: int, info: dict[str, Any]) -> None:
        acc = info.get("latest", {}).get("query-acc-post")
        log.warning(
            "round %d/%d clients=%s acc-post=%s",
            server_round,
            self.total,
            info.get("clients"),
            f"{acc:.3f}" if acc is not None else "-",
        )

    def finish(self) -> None:
        pass


def serve(
    grid: Grid, scenario: Scenario, run_dir: RunDir, progress: Progress, pool_size: int = 0
) -> dict[str, Any]:
    """Run a scenario on ``grid`` and write its final results into ``run_dir`` (``pool_size``:
    see :func:`server.loop.run_rounds`)."""
    exp = build_experiment(scenario)
    summary = run_rounds(grid, exp, run_dir, progress, pool_size)
    params = run_dir.load_checkpoint()["params"]
    if scenario.privacy.audit:
        summary["audit"] = run_audit(exp, params, exp.initial_params())
    run_dir.write_final(params, summary)
    return summary


def make_server_app(
    scenario: Scenario,
    run_dir: RunDir,
    progress: Progress,
    result: dict[str, Any],
    pool_size: int = 0,
) -> ServerApp:
    """A ServerApp bound to one scenario; the summary is stored in ``result["summary"]``, or
    the exception that stopped the run in ``result["error"]`` (Flower runs the app in a thread
    of its own and would only log it). ``pool_size``: the simulation's nodes are a pool that
    serves any client (:mod:`server.roster`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            result["summary"] = serve(grid, scenario, run_dir, progress, pool_size)
        except Exception as exc:  # handed to the caller of run_simulation, who raises it
            result["error"] = exc

    return app


APP_ROOT = Path(__file__).resolve().parents[1]
"""The app's own folder (the FAB under ``flwr run``): relative scenario paths start here."""


def runs_home() -> Path:
    """Where ``flwr run`` results go by default: ``$FEDMETA_RUNS``, else
    ``$XDG_DATA_HOME/fedmeta/runs`` (``~/.local/share/fedmeta/runs``)."""
    if os.environ.get("FEDMETA_RUNS"):
        return Path(os.environ["FEDMETA_RUNS"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "fedmeta" / "runs"


def run_from_config(run_config: dict[str, Any], run_id: int) -> tuple[Scenario, RunDir]:
    """The scenario and run directory a ``flwr run`` names in its run config.

    ``resume`` (a run directory) continues that run. Otherwise ``scenario`` is a path, relative
    to the app's folder unless absolute, and ``out`` the run directory (absolute; by default
    ``runs_home() / "<scenario name>-<flwr run id>"``).
    """
    resume = str(run_config.get("resume", ""))
    if resume:
        run_dir = RunDir(Path(resume).expanduser())
        if not (run_dir.path / "scenario.toml").exists():
            raise FedmetaError(f"run config resume={resume!r} is not a run directory")
        return load_scenario(run_dir.path / "scenario.toml"), run_dir
    path = Path(str(run_config["scenario"])).expanduser()
    path = path if path.is_absolute() else APP_ROOT / path
    if not path.exists():
        raise FedmetaError(
            f"run config scenario={str(run_config['scenario'])!r}: no file {path}; give a path "
            f"relative to the app folder (e.g. scenarios/quickstart.toml) or an absolute one"
        )
    scenario = load_scenario(path)
    out = str(run_config.get("out", ""))
    if out and not Path(out).expanduser().is_absolute():
        raise FedmetaError(
            f"run config out={out!r} must be an absolute path (the ServerApp does not run in "
            f"your folder)"
        )
    run_dir = RunDir(Path(out).expanduser() if out else runs_home() / f"{scenario.name}-{run_id}")
    if (run_dir.path / "checkpoint.pt").exists():
        raise FedmetaError(
            f"run config out={str(run_dir.path)!r} already holds a run; pass "
            f"resume='{run_dir.path}' to continue it, or another out"
        )
    run_dir.write_scenario(scenario.to_toml())
    return scenario, run_dir


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: the run config names the scenario and the run directory
    (:func:`run_from_config`). A failure is logged as one line and fails the Flower run."""
    try:
        scenario, run_dir = run_from_config(dict(context.run_config), context.run_id)
        log.warning("fedmeta: running %r -> %s", scenario.name, run_dir.path)
        summary = serve(grid, scenario, run_dir, LogProgress())
    except Exception as exc:
        log.error("fedmeta: %s", exc)
        raise
    heldout = summary["heldout"]
    log.warning(
        "fedmeta: finished %r: held-out accuracy after adaptation %s (%s of %s clients); "
        "results in %s",
        scenario.name,
        heldout.get("query-acc-post"),
        heldout.get("num-clients"),
        heldout.get("num-clients-expected"),
        run_dir.path,
    )
