"""Run a planned study (:mod:`fedmeta.study.plan`) cell by cell on the simulation engine.

Each cell is an ordinary run directory under ``<out>/runs/``, so an interrupted study resumes
cell by cell: finished cells are skipped and a cut one resumes from its checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmeta.study.adapt import write_adapt_steps
from fedmeta.study.manifest import cell_run, write_manifest
from fedmeta.study.plan import Cell, Study
from runner.simulation import simulate


def run_study(study: Study, out: Path, progress_for: Callable[[int, Cell], Any]) -> None:
    """Run every cell not finished yet (a cut cell resumes from its checkpoint), then its
    adaptation-steps evaluation."""
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, study.manifest())
    for i, (cell, scenario) in enumerate(study.cells, 1):
        run = cell_run(out, cell.dirname, cell.tb_name)
        if not (run.path / "summary.json").exists():
            run.write_scenario(scenario.to_toml())
            simulate(scenario, run, progress_for(i, cell))
        adapt = run.path / "adapt-steps.json"
        done = json.loads(adapt.read_text()) if adapt.exists() else {}
        if done.get("steps") != study.adapt_steps or done.get("tasks") != study.adapt_tasks:
            write_adapt_steps(run, scenario, study.adapt_steps, study.adapt_tasks)
