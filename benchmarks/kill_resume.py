"""Kill a ``fedmeta run`` with SIGKILL, resume it, and compare it with an uninterrupted run.

For every configuration and kill point it prints ``identical`` (every ``metrics.jsonl``
record, wall-clock fields aside, and ``final.pt``) or the first record that differs.

Kill points (round ``K``):

* ``mid-round``: while round ``K`` runs, a moment after round ``K - 1``'s checkpoint;
* ``after-checkpoint``: the instant round ``K``'s checkpoint appears;
* ``torn-line``: as ``after-checkpoint``, then half a JSON line appended to ``metrics.jsonl``
  by hand (what a kill during a write leaves).

Runs attach to one Ray head on 127.0.0.1 (``$FEDMETA_RAY_ADDRESS``, or one started here and
stopped at the end), so a killed run leaves no Ray process behind.

Run: ``python benchmarks/kill_resume.py [--configs fedavg-fomaml,ditto] [--points mid-round]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
import torch

BASE = {
    "name": "kill-resume",
    "seed": 3,
    "data": {"name": "synthetic", "num-classes": 40, "examples-per-class": 8},
    "task": {"n-way": 3, "k-shot": 1, "query": 2},
    "clients": {"train": 4, "heldout": 2},
    "model": {"name": "conv4", "width": 8},
    "learner": {"name": "fomaml", "local-steps": 2, "tasks-per-step": 2},
    "train": {"rounds": 6, "fraction": 0.5},
    "evaluation": {"every": 2, "tasks-per-client": 3},
}
CONFIGS = {
    "fedavg-fomaml": {},
    "fedadam-maml": {"learner": {"name": "maml"}, "strategy": {"name": "fedadam"}},
    "dp-adaptive": {
        "train": {"fraction": 1.0},
        "privacy": {"central": "server-adaptive", "noise-multiplier": 0.1},
    },
    "ditto": {"learner": {"name": "ditto"}},
    "kept-adam": {"learner": {"outer-state": "keep"}},  # each client's Adam moments, on disk
}
POINTS = ("mid-round", "after-checkpoint", "torn-line")
TIMING = ("seconds", "wall")


def scenario(config: str) -> dict:
    raw = copy.deepcopy(BASE)
    for table, values in CONFIGS[config].items():
        raw[table] = {**raw.get(table, {}), **values}
    return raw


def _launch(args: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen:
    log = (out.parent / f"{out.name}.log").open("a")
    cmd = [sys.executable, "-m", "runner.cli", *args]
    return subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)


def _checkpoint_round(out: Path) -> int:
    path = out / "checkpoint.pt"
    if not path.exists():
        return -1
    try:
        return int(torch.load(path, weights_only=False)["counters"]["round"])
    except (EOFError, RuntimeError, OSError):  # replaced while being read: ask again
        return -1


def _wait(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 300) -> None:
    t0, seen_mtime = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before the kill point")
        path = out / "checkpoint.pt"
        mtime = path.stat().st_mtime_ns if path.exists() else None
        if mtime != seen_mtime:
            seen_mtime = mtime
            if _checkpoint_round(out) >= at_least:
                return
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint of round {at_least} within {timeout}s")


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def interrupted_run(
    raw: dict, out: Path, kills: list[tuple[str, int]], env: dict, finish: bool = True
) -> None:
    """Run ``raw`` into ``out``, killing it at each ``(point, round)`` in turn and resuming it
    after each kill; the last resume runs to the end (with ``finish=False`` the run is left
    killed after the last kill, for another engine to resume)."""
    path = out.parent / f"{out.name}.toml"
    path.write_text(tomli_w.dumps(raw))
    proc = _launch(["run", str(path), "--out", str(out)], out, env)
    for point, rnd in kills:
        if point == "mid-round":
            _wait(proc, out, rnd - 1)
            time.sleep(0.3)
        else:
            _wait(proc, out, rnd)
        _kill(proc)
        if point == "torn-line":
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"round": rnd + 1, "phase": "train", "metric": "x"})[:30])
        if not finish and (point, rnd) == kills[-1]:
            return
        proc = _launch(["resume", str(out)], out, env)
    if proc.wait(timeout=600) != 0:
        raise RuntimeError(f"the resumed run failed; see {out.parent / (out.name + '.log')}")


def full_run(raw: dict, out: Path, env: dict) -> None:
    interrupted_run(raw, out, [], env)


def records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if not any(t in r["metric"] for t in TIMING)]


def compare(reference: Path, other: Path) -> str:
    """``identical``, or the first difference between two finished runs."""
    a, b = records(reference), records(other)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"record {i} differs: {x} vs {y}"
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} records"
    fa = torch.load(reference / "final.pt", weights_only=True)
    fb = torch.load(other / "final.pt", weights_only=True)
    if fa.keys() != fb.keys() or not all(torch.equal(fa[k], fb[k]) for k in fa):
        return "final.pt differs"
    return "identical"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--points", default=",".join(POINTS))
    p.add_argument("--round", type=int, default=3, help="the round K of the kill points")
    args = p.parse_args()
    configs, points = args.configs.split(","), args.points.split(",")
    from runner.ray_head import RayHead

    head = None if os.environ.get("FEDMETA_RAY_ADDRESS") else RayHead()
    env = dict(os.environ)
    if head is not None:
        env["FEDMETA_RAY_ADDRESS"] = head.address
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"| configuration | {' | '.join(points)} |")
            print("|---|" + "---|" * len(points))
            for config in configs:
                raw = scenario(config)
                full_run(raw, Path(tmp) / f"{config}-ref", env)
                cells = []
                for point in points:
                    out = Path(tmp) / f"{config}-{point}"
                    interrupted_run(raw, out, [(point, args.round)], env)
                    cells.append(compare(Path(tmp) / f"{config}-ref", out))
                print(f"| {config} | {' | '.join(cells)} |", flush=True)
    finally:
        if head is not None:
            head.stop()


if __name__ == "__main__":
    main()
