"""The fedmeta ServerApp.

``make_server_app`` builds the app the ``fedmeta`` command runs in-process (scenario and run
directory passed in a closure). The module-level ``app`` is the entry point for ``flwr run .``:
it reads the scenario path from ``run_config["scenario"]`` and writes to ``runs/``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

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


def serve(grid: Grid, scenario: Scenario, run_dir: RunDir, progress: Progress) -> dict[str, Any]:
    """Run a scenario on ``grid`` and write its final results into ``run_dir``."""
    exp = build_experiment(scenario)
    summary = run_rounds(grid, exp, run_dir, progress)
    params = run_dir.load_checkpoint()["params"]
    if scenario.privacy.audit:
        summary["audit"] = run_audit(exp, params, exp.initial_params())
    run_dir.write_final(params, summary)
    return summary


def make_server_app(
    scenario: Scenario, run_dir: RunDir, progress: Progress, result: dict[str, Any]
) -> ServerApp:
    """A ServerApp bound to one scenario; the summary is stored in ``result["summary"]``, or
    the exception that stopped the run in ``result["error"]`` (Flower runs the app in a thread
    of its own and would only log it)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            result["summary"] = serve(grid, scenario, run_dir, progress)
        except Exception as exc:  # handed to the caller of run_simulation, who raises it
            result["error"] = exc

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: scenario path from the run config."""
    scenario = load_scenario(str(context.run_config["scenario"]))
    run_dir = RunDir(Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.write_scenario(scenario.to_toml())
    serve(grid, scenario, run_dir, LogProgress())
