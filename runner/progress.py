"""Live progress for ``fedmeta run``: round, clients, failures by kind, latest held-out accuracy
(and how many held-out clients it covers, when not all), the epsilon spent (private runs) and
ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    """A one-line rich progress bar on stderr (stdout stays clean); when stderr is not a
    terminal (a log file, CI), one plain line per round instead."""

    def __init__(self, name: str, console: Console | None = None) -> None:
        self.name = name
        self.console = console or Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = None

    def start(self, total_rounds: int, first_round: int) -> None:
        self.total = total_rounds
        if not self.console.is_terminal:
            return
        self.bar.start()
        done = max(0, first_round - 1)
        self.task = self.bar.add_task(
            self.name, total=total_rounds, completed=done, status="starting clients"
        )

    def update(self, server_round: int, info: dict[str, Any]) -> None:
        latest = info.get("latest") or {}
        parts = [f"round {server_round}"]
        if "clients" in info:
            parts.append(f"clients {info['clients']}")
        faults = [f"{info[k]} {k}" for k in ("failed", "rejected", "timed-out") if info.get(k)]
        if faults:
            parts.append("(" + ", ".join(faults) + ")")
        scored, expected = latest.get("num-clients"), latest.get("num-clients-expected")
        coverage = f", {scored} of {expected} clients" if scored != expected else ""
        if "query-acc-post" in latest:
            parts.append(
                f"held-out acc {latest['query-acc-pre']:.3f} -> {latest['query-acc-post']:.3f}"
                f" (r{latest['round']}{coverage})"
            )
        elif "query-loss-post" in latest:
            parts.append(
                f"held-out loss {latest['query-loss-post']:.3f} (r{latest['round']}{coverage})"
            )
        if "epsilon" in info:
            parts.append(f"epsilon {info['epsilon']:.3g}")
        if self.task is None:
            wall = info.get("wall", 0.0)
            self.console.print(
                f"{self.name}: {'  '.join(parts)}  of {self.total}  [{wall:.0f}s]",
                highlight=False,
                soft_wrap=True,
            )
            return
        self.bar.update(self.task, completed=max(server_round, 0), status="  ".join(parts))

    def finish(self) -> None:
        if self.task is not None:
            self.bar.stop()
