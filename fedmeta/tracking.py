"""Live tracking: every metric record of a run also goes to TensorBoard.

A run's records (``metrics.jsonl``, :class:`fedmeta.results.RunDir`) are mirrored as scalars
named ``<phase>/<metric>`` (``heldout/query-acc-post``, ``train/train-loss``,
``system/wall-seconds``, ``privacy/epsilon``, ...) at step = server round, in TensorBoard event
files under the run's ``tb/`` folder. Lists (per-client values) and text are left to the JSONL.

A resumed run redoes the rounds after its checkpoint; their records are dropped from the JSONL,
and the writer is opened with ``purge_step`` at the first redone round, so TensorBoard discards
the old events of those rounds too. The writer is PyTorch's ``SummaryWriter``, which writes with
the ``tensorboard`` package.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

TB_DIR = "tb"
"""The folder of a run's TensorBoard event files."""


def tensorboard_command(logdir: Path) -> str:
    """The command that shows ``logdir``'s curves (TensorBoard listens on loopback)."""
    return f"tensorboard --logdir {logdir} --host 127.0.0.1"


class TensorBoardLog:
    """Scalars of one run, written as TensorBoard events and flushed every round.

    Parameters
    ----------
    logdir : Path
        Where the event files go (created if needed).
    first_round : int
        The first round this process writes: events of that round and later ones, left by
        an earlier process of the same run, are purged.
    """

    def __init__(self, logdir: Path, first_round: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = first_round if first_round > 0 else None
        self.writer = SummaryWriter(str(logdir), purge_step=purge)

    def log(self, server_round: int, phase: str, metrics: dict[str, Any]) -> None:
        """Every finite number of ``metrics`` as the scalar ``<phase>/<name>``."""
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{phase}/{name}", float(value), server_round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
