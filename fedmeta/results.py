"""Run directories: atomic writes, per-round metrics, checkpoints and resume.

Layout of ``runs/<name>-<timestamp>/``::

    scenario.toml       the resolved scenario (every default written out)
    metrics.jsonl       one JSON record per round per metric
    checkpoint.pt       latest meta-parameters, server-optimiser state and counters
    final.pt            final meta-parameters (a torch state dict)
    summary.json        final held-out accuracy with CI, wall time, bytes communicated

Every file is written to a temporary file and moved into place, so a crash never leaves a
half-written result; ``metrics.jsonl`` is appended line by line and truncated back to the last
checkpointed round on resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from fedmeta.errors import FedmetaError
from fedmeta.tracking import TB_DIR, TensorBoardLog

if TYPE_CHECKING:
    import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # torch only where tensors are written: plots and reports never need it

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """Reads and writes one run directory.

    Parameters
    ----------
    path : str or Path
        The run directory.
    tb_dir : str or Path, optional
        Where the run's TensorBoard events go once :meth:`open_tracking` is called; by default
        ``<path>/tb`` (a study puts its cells under one folder, named so that TensorBoard
        overlays them).
    """

    def __init__(self, path: str | Path, tb_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.tb_dir = Path(tb_dir) if tb_dir is not None else self.path / TB_DIR
        self._tracker: TensorBoardLog | None = None

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_scenario(self, resolved: dict) -> None:
        atomic_write_text(self.path / "scenario.toml", tomli_w.dumps(resolved))

    def append_metrics(self, server_round: int, phase: str, metrics: dict[str, Any]) -> None:
        """Append one record per metric: ``{"round", "phase", "metric", "value"}``."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            for name, value in metrics.items():
                rec = {"round": server_round, "phase": phase, "metric": name, "value": value}
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tracker is not None:
            self._tracker.log(server_round, phase, metrics)

    def open_tracking(self, first_round: int) -> None:
        """Mirror the records of ``first_round`` on to TensorBoard (:mod:`fedmeta.tracking`);
        events an earlier process left for those rounds are purged."""
        self.close_tracking()
        self._tracker = TensorBoardLog(self.tb_dir, first_round)

    def close_tracking(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record; a torn last line (a kill during :meth:`append_metrics`) is left out
        (:meth:`truncate_metrics` removes it from the file)."""
        return self._read_records()[0]

    def _read_records(self) -> tuple[list[dict[str, Any]], str | None]:
        """The records and the torn last line, if any. A bad line anywhere else is not a
        kill's doing: it raises."""
        if not self.metrics_path.exists():
            return [], None
        text = self.metrics_path.read_text()
        lines = text.split("\n")
        records, torn = [], None
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:  # only the unfinished last line can be torn
                    raise FedmetaError(
                        f"{self.metrics_path} line {i + 1} is not a JSON record; the file was "
                        f"edited or damaged, restore it or start the run again"
                    ) from None
                torn = line
        return records, torn

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        import torch

        return torch.load(self.checkpoint_path, weights_only=False)

    def truncate_metrics(self, last_round: int) -> str | None:
        """Drop metric records of rounds after ``last_round`` (work lost in a crash), and a torn
        last line; returns the torn line, if there was one."""
        records, torn = self._read_records()
        kept = [r for r in records if r["round"] <= last_round]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return torn

    def write_final(self, params: dict[str, torch.Tensor], summary: dict[str, Any]) -> None:
        atomic_torch_save(self.path / "final.pt", params)
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "summary.json").read_text())
        except FileNotFoundError:
            raise FedmetaError(f"{self.path} has no summary.json; is it a finished run?") from None
