"""A study directory: ``study.json`` (the manifest) and one run directory per cell.

The manifest names every cell with its strategy, seed, swept values, directory and a hash of
its resolved scenario, so that a rerun with the same ``--out`` recognises finished cells.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmeta.errors import FedmetaError
from fedmeta.results import RunDir, atomic_write_text
from fedmeta.tracking import TB_DIR


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``study.json``. An existing study may gain or lose cells (to add a strategy or a
    seed), but a cell it shares must have been run with exactly the same scenario."""
    path = out / "study.json"
    if path.exists():
        old = {c["dir"]: c.get("scenario-sha256") for c in json.loads(path.read_text())["cells"]}
        for cell in manifest["cells"]:
            if cell["dir"] in old and old[cell["dir"]] != cell["scenario-sha256"]:
                raise FedmetaError(
                    f"--out {str(out)!r} already ran {cell['dir']} with other settings; "
                    f"use another --out directory"
                )
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def read_manifest(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "study.json").read_text())
    except FileNotFoundError:
        raise FedmetaError(f"{str(out)!r} is not a study directory (no study.json)") from None


def cell_run(out: Path, dirname: str, tb_name: str | None = None) -> RunDir:
    """The run directory of one cell; its TensorBoard events go to ``<out>/tb/<tb_name>``
    (see :attr:`fedmeta.study.plan.Cell.tb_name`)."""
    return RunDir(out / "runs" / dirname, out / TB_DIR / tb_name if tb_name else None)
