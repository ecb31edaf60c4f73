"""A client's persistent learner state (Ditto's personal model), kept on disk by round.

A stateful learner leaves tensors in :attr:`fedmeta.learners.base.LocalContext.state` after its
local update; the ClientApp stores them as ``<dir>/<partition>/round-<r>.pt`` and, in a later
round ``q``, loads the newest file of a round before ``q``. Because the server's sampling is
seeded, a run resumed from its checkpoint at round ``R`` replays every later round's training
exactly, rewriting any file a killed run had written after ``R`` before it is read again. So a
resumed run continues with exactly the personal models an uninterrupted one would have.

Files older than the newest one at or before the server's last checkpoint are pruned: they can
never be read again, by this run or a resumed one.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fedmeta.results import atomic_torch_save

Params = dict[str, torch.Tensor]
_FILE = re.compile(r"round-(\d+)\.pt")


class StateStore:
    """The learner state of one client (``partition``) under ``root``."""

    def __init__(self, root: str | Path, partition: int) -> None:
        self.dir = Path(root) / str(partition)

    def _rounds(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        found = (_FILE.fullmatch(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _path(self, server_round: int) -> Path:
        return self.dir / f"round-{server_round:06d}.pt"

    def load(self, server_round: int) -> dict[str, Params]:
        """The state this client left in its last training round before ``server_round``."""
        before = [r for r in self._rounds() if r < server_round]
        if not before:
            return {}
        return torch.load(self._path(before[-1]), map_location="cpu", weights_only=True)

    def save(self, server_round: int, state: dict[str, Params], checkpointed: int) -> None:
        """Store the state after ``server_round``; ``checkpointed`` is the server's last
        checkpointed round (what a resumed run starts after)."""
        cpu = {key: {k: v.detach().cpu() for k, v in t.items()} for key, t in state.items()}
        atomic_torch_save(self._path(server_round), cpu)
        rounds = self._rounds()
        oldest_needed = max((r for r in rounds if r <= checkpointed), default=None)
        for r in rounds:
            if oldest_needed is not None and r < oldest_needed:
                self._path(r).unlink(missing_ok=True)


def has_saved_state(root: str | Path) -> bool:
    """Whether any client stored learner state under ``root``."""
    root = Path(root)
    return root.is_dir() and any(root.glob("*/round-*.pt"))
