"""The ``fedmeta`` command: run, resume, validate and list.

Bad input (scenario keys, values, data roots, CLI values) prints one ``error:`` line and exits
with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedmeta.errors import FedmetaError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise FedmetaError(
            f"{message} (see 'fedmeta {self.prog.split()[-1]} --help')"
            if " " in self.prog
            else f"{message} (see 'fedmeta --help')"
        )


def _fmt(summary: dict) -> str:
    h = summary.get("heldout", {})
    lines = [
        f"run {summary['name']}: {summary['rounds']} rounds in {summary['wall-seconds']:.1f}s,"
        f" {summary['mb-communicated']:.1f} MB communicated"
    ]
    for metric in ("query-acc", "query-loss"):
        if f"{metric}-pre" in h:
            pre, post = h[f"{metric}-pre"], h[f"{metric}-post"]
            lines.append(
                f"held-out {metric} before adaptation: {pre:.4f} ± {h[f'{metric}-pre-ci95']:.4f}"
                f"   after adaptation: {post:.4f} ± {h[f'{metric}-post-ci95']:.4f}"
                f"   ({h.get('num-tasks', '?')} tasks, {h.get('num-clients', '?')} clients)"
            )
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from fedmeta.config import load_scenario
    from fedmeta.experiment import build_experiment

    scenario = load_scenario(args.scenario, args.set)
    build_experiment(scenario, check_all=True)  # fail fast on bad data before starting Ray
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{scenario.name}-{stamp}"
    if (out / "checkpoint.pt").exists() or (out / "summary.json").exists():
        raise FedmetaError(
            f"--out {str(out)!r} already holds a run; use 'fedmeta resume {out}' or another --out"
        )
    return _execute(scenario, out)


def cmd_resume(args: argparse.Namespace) -> int:
    from fedmeta.config import load_scenario

    run = Path(args.run_dir)
    if not (run / "scenario.toml").exists():
        raise FedmetaError(f"{str(run)!r} is not a run directory (no scenario.toml)")
    return _execute(load_scenario(run / "scenario.toml"), run)


def _execute(scenario, out: Path) -> int:
    from fedmeta.progress import RichProgress
    from fedmeta.results import RunDir
    from fedmeta.simulation import simulate

    run_dir = RunDir(out)
    run_dir.write_scenario(scenario.to_toml())
    print(f"fedmeta: running {scenario.name!r} -> {out}", file=sys.stderr)
    try:
        summary = simulate(scenario, run_dir, RichProgress(scenario.name))
    except KeyboardInterrupt:
        print(f"interrupted; finished rounds are saved: fedmeta resume {out}", file=sys.stderr)
        return 130
    except FedmetaError:
        raise
    except Exception as exc:  # a crash mid-run: say where the finished work is
        print(
            f"error: the run failed ({type(exc).__name__}: {exc}); finished rounds are saved, "
            f"continue with: fedmeta resume {out}",
            file=sys.stderr,
        )
        return 1
    print(_fmt(summary))
    print(f"results: {out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fedmeta.config import load_scenario
    from fedmeta.experiment import build_experiment

    sc = load_scenario(args.scenario, args.set)
    exp = build_experiment(sc, check_all=True)
    sizes = [s.size for s in exp.layout.train]
    print(
        f"ok: {sc.name}: {sc.data.name} ({exp.source.num_classes} classes), "
        f"{sc.task.n_way}-way {sc.task.k_shot}-shot, {sc.clients.train} training clients "
        f"({min(sizes)}-{max(sizes)} examples each) + {sc.clients.heldout} held-out, "
        f"learner {sc.learner.name}, strategy {sc.strategy.name}, {sc.train.rounds} rounds"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fedmeta.data import DATASETS
    from fedmeta.learners import LEARNERS
    from fedmeta.models import MODELS
    from fedmeta.partition import PARTITIONERS
    from server.strategies import STRATEGIES

    table = {
        "datasets": DATASETS,
        "partitioners": PARTITIONERS,
        "models": MODELS,
        "learners": LEARNERS,
        "strategies": STRATEGIES,
    }
    if args.json:
        print(json.dumps({k: r.names() for k, r in table.items()}, indent=2))
        return 0
    for title, reg in table.items():
        print(f"{title}:")
        for name in reg.names():
            print(f"  {name:<14} {reg.describe(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedmeta", description="Federated few-shot meta-learning simulator.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a scenario file")
    run.add_argument("scenario")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set train.rounds=5 (repeatable)",
    )
    run.add_argument("--out", help="run directory (default runs/<name>-<timestamp>)")
    run.set_defaults(fn=cmd_run)
    res = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    res.add_argument("run_dir")
    res.set_defaults(fn=cmd_resume)
    val = sub.add_parser("validate", help="check a scenario (and its data) without running it")
    val.add_argument("scenario")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    val.set_defaults(fn=cmd_validate)
    lst = sub.add_parser("list", help="show datasets, partitioners, models, learners, strategies")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(fn=cmd_list)
    return p


def run_cli(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except FedmetaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `fedmeta list | head`
        sys.stderr.close()
        return 0


def main() -> None:
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
