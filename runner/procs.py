"""Processes this command starts, and stopping them (with their children) by process id.

fedmeta never stops a process it did not start: no ``ray stop``, no killing by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[str, int]]:
    """pid -> (command line, parent pid) of every process we can read."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(entry.name)] = (cmd, ppid)
    return procs


def with_descendants(roots: Iterable[int], procs: dict[int, tuple[str, int]]) -> set[int]:
    """``roots`` and every process below them, never this process or its ancestors."""
    mine, pid = set(), os.getpid()
    while pid in procs and pid not in mine:
        mine.add(pid)
        pid = procs[pid][1]
    tree = set(roots) - mine
    grew = True
    while grew:
        children = {p for p, (_, ppid) in procs.items() if ppid in tree} - tree - mine
        tree |= children
        grew = bool(children)
    return tree


def kill_tree(roots: Iterable[int], grace: float = 3.0, first: int = signal.SIGTERM) -> None:
    """Send ``first`` (SIGTERM) to ``roots`` and their descendants, then SIGKILL whatever is
    left after ``grace`` seconds (the tree is read first: children re-parented on their
    parent's death are caught)."""
    tree = with_descendants(roots, processes())
    for p in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, first)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)
    for p in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def machine_used_bytes() -> int:
    """Memory in use on the whole machine: ``MemTotal - MemAvailable``."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


def tree_rss_bytes(root: int) -> int:
    """Summed resident memory of ``root`` and its descendants (Ray's workers included; pages
    shared between processes count once per process)."""
    total = 0
    for pid in with_descendants([root], processes()):
        with contextlib.suppress(OSError, ValueError, IndexError):
            status = Path(f"/proc/{pid}/status").read_text()
            line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), "VmRSS: 0")
            total += int(line.split()[1]) * 1024
    return total
