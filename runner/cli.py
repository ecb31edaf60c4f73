"""The ``fedmeta`` command: run, resume, deploy, compare, sweep, plot, report, audit,
partition, validate, list.

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
            clients = h.get("num-clients", "?")
            if h.get("num-clients-expected", clients) != clients:
                clients = f"only {clients} of {h['num-clients-expected']}"
            lines.append(
                f"held-out {metric} before adaptation: {pre:.4f} ± {h[f'{metric}-pre-ci95']:.4f}"
                f"   after adaptation: {post:.4f} ± {h[f'{metric}-post-ci95']:.4f}"
                f"   ({h.get('num-tasks', '?')} tasks, {clients} clients; 95% CI: "
                f"{h.get('ci-method', 'over tasks')})"
            )
    faults = {k: v for k, v in summary.get("faults", {}).items() if v}
    if faults:
        lines.append("faults: " + ", ".join(f"{v} {k}" for k, v in faults.items()))
    p = summary.get("privacy", {})
    if "epsilon" in p:
        lines.append(
            f"privacy: epsilon {p['epsilon']:.3g} at delta {p['delta']:g} ({p['central']} DP, "
            f"noise multiplier {p['noise-multiplier']:.3g}, {p['accountant']} accountant)"
        )
    if "local-epsilon" in p:
        lines.append(
            f"privacy: local DP, each reply ({p['local-epsilon-per-reply']:g}, "
            f"{p['local-delta-per-reply']:g})-DP; the busiest client ({p['local-epsilon']:.3g}, "
            f"{p['local-delta']:.2g})-DP by basic composition"
        )
    if "example-epsilon" in p:
        lines.append(f"privacy: example-level (DP-SGD) epsilon {p['example-epsilon']:.3g}")
    if "audit" in summary:
        lines.append(_fmt_audit(summary["audit"]))
    return "\n".join(lines)


def _fmt_audit(a: dict) -> str:
    return (
        f"membership inference ({a['members']} member / {a['nonmembers']} non-member examples):"
        f" loss attack AUC {a['loss-auc']:.3f} (TPR {a['loss-tpr-at-1pct-fpr']:.3f} at 1% FPR),"
        f" calibrated AUC {a['calibrated-auc']:.3f}"
        f" (TPR {a['calibrated-tpr-at-1pct-fpr']:.3f} at 1% FPR)"
    )


def _preflight(scenario):
    """Fail fast, before starting Ray, on bad data and on a Ray cluster that does not answer;
    returns the experiment."""
    from fedmeta.experiment import build_experiment
    from runner.simulation import check_ray_address

    exp = build_experiment(scenario, check_all=True)
    check_ray_address(scenario)
    return exp


def cmd_run(args: argparse.Namespace) -> int:
    from fedmeta.scenario import load_scenario

    scenario = load_scenario(args.scenario, args.set)
    _preflight(scenario)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{scenario.name}-{stamp}"
    if (out / "checkpoint.pt").exists() or (out / "summary.json").exists():
        raise FedmetaError(
            f"--out {str(out)!r} already holds a run; use 'fedmeta resume {out}' or another --out"
        )
    return _execute(scenario, out)


RESUMABLE_KEYS = ("train.rounds", "train.max-seconds", "train.max-stalled-rounds")
"""What ``fedmeta resume --set`` may change: how long the run goes on, never how it trains."""


def cmd_resume(args: argparse.Namespace) -> int:
    from fedmeta.scenario import load_scenario

    run = Path(args.run_dir)
    if not (run / "scenario.toml").exists():
        raise FedmetaError(f"{str(run)!r} is not a run directory (no scenario.toml)")
    for item in args.set:
        key = item.partition("=")[0].strip()
        if key not in RESUMABLE_KEYS:
            raise FedmetaError(
                f"resume --set {key!r}: a resumed run may only change {', '.join(RESUMABLE_KEYS)}"
                f"; start a new run to change anything else"
            )
    return _execute(load_scenario(run / "scenario.toml", args.set), run)


def cmd_deploy(args: argparse.Namespace) -> int:
    from fedmeta.experiment import build_experiment
    from fedmeta.scenario import load_scenario
    from runner.deploy import deploy

    scenario = load_scenario(args.scenario, args.set)
    build_experiment(scenario, check_all=True)  # fail fast on bad data before starting Flower
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise FedmetaError(f"--data-root {args.data_root!r} is not a folder; give the data folder")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{scenario.name}-deploy-{stamp}"
    try:
        result = deploy(scenario, out, args.simulation, args.secure, args.data_root, args.timeout)
    except KeyboardInterrupt:
        print(f"interrupted; every process was stopped; results so far: {out}", file=sys.stderr)
        return 130
    print(json.dumps(result))
    if result["status"] != "finished:completed":
        print(
            f"error: flwr run {result['run-id']} ended {result['status']}; "
            f"logs in {out / 'deploy'}",
            file=sys.stderr,
        )
        return 1
    print(_fmt(json.loads((out / "summary.json").read_text())))
    print(f"results: {out}")
    return 0


def _execute(scenario, out: Path) -> int:
    from fedmeta.results import RunDir
    from fedmeta.tracking import tensorboard_command
    from runner.progress import RichProgress
    from runner.simulation import simulate

    run_dir = RunDir(out)
    run_dir.write_scenario(scenario.to_toml())
    print(f"fedmeta: running {scenario.name!r} -> {out}", file=sys.stderr)
    print(f"live curves: {tensorboard_command(run_dir.tb_dir)}", file=sys.stderr)
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


def _csv_list(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise FedmetaError(f"{flag} {text!r} names nothing; give a comma-separated list")
    return items


def _run_study(args: argparse.Namespace, kind: str, params: dict) -> int:
    from fedmeta.scenario import read_scenario
    from fedmeta.study.plan import plan_study
    from fedmeta.study.report import write_report
    from fedmeta.tracking import TB_DIR, tensorboard_command
    from runner.progress import RichProgress
    from runner.study import run_study

    raw = read_scenario(args.scenario, args.set)
    study = plan_study(raw, kind, _csv_list(args.strategies, "--strategies"), args.seeds, params)
    for _, scenario in study.cells:
        _preflight(scenario)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{kind}-{study.name}-{stamp}"
    total, t0 = len(study.cells), time.monotonic()
    print(f"fedmeta: {kind} {study.name!r}: {total} runs -> {out}", file=sys.stderr)
    print(f"live curves: {tensorboard_command(out / TB_DIR)}", file=sys.stderr)

    started: list[int] = []  # runs started by this invocation (a resumed study skips some)

    def progress_for(i: int, cell) -> RichProgress:
        elapsed = time.monotonic() - t0
        done_here = len(started)
        started.append(i)
        eta = ""
        if done_here:
            eta = f", about {elapsed / done_here * (total - i + 1) / 60:.0f} min left"
        print(
            f"{kind}: run {i}/{total}: {cell.dirname} ({elapsed / 60:.1f} min elapsed{eta})",
            file=sys.stderr,
        )
        return RichProgress(f"[{i}/{total}] {cell.dirname}")

    try:
        run_study(study, out, progress_for)
    except KeyboardInterrupt:
        print(f"interrupted; finished runs are saved: rerun with --out {out}", file=sys.stderr)
        return 130
    except FedmetaError:
        raise
    except Exception as exc:
        print(
            f"error: the {kind} failed ({type(exc).__name__}: {exc}); finished runs are saved, "
            f"continue by rerunning the same command with --out {out}",
            file=sys.stderr,
        )
        return 1
    report = write_report(out)
    print((out / "table.md").read_text(), end="")
    print(f"results: {out}  (report: {report})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    return _run_study(args, "compare", {})


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedmeta.study.plan import parse_param

    if not 1 <= len(args.param) <= 2:
        raise FedmetaError("sweep needs one or two --param key=v1,v2,... options")
    params = dict(parse_param(p) for p in args.param)
    if len(params) != len(args.param):
        raise FedmetaError("--param names the same key twice; give each key once")
    return _run_study(args, "sweep", params)


def cmd_audit(args: argparse.Namespace) -> int:
    """Membership inference on a finished run's final meta-parameters (``audit.json``)."""
    import torch

    from fedmeta.experiment import build_experiment
    from fedmeta.privacy.audit import run_audit
    from fedmeta.results import atomic_write_text
    from fedmeta.scenario import load_scenario

    run = Path(args.run_dir)
    if not (run / "final.pt").exists() or not (run / "scenario.toml").exists():
        raise FedmetaError(f"{str(run)!r} is not a finished run (no final.pt and scenario.toml)")
    overrides = [f"privacy.audit-tasks={args.tasks}"] if args.tasks else []
    scenario = load_scenario(run / "scenario.toml", overrides)
    if not scenario.privacy.audit:
        raise FedmetaError(
            f"{str(run)!r} trained on all its examples (privacy.audit = false), so there are no "
            "non-members to audit with; rerun the scenario with --set privacy.audit=true"
        )
    exp = build_experiment(scenario)
    torch.set_num_threads(max(1, exp.scenario.backend.torch_threads))
    final = torch.load(run / "final.pt", map_location="cpu")
    audit = run_audit(exp, final, exp.initial_params())
    atomic_write_text(run / "audit.json", json.dumps(audit, indent=2) + "\n")
    print(_fmt_audit(audit))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from fedmeta.study.report import make_plots

    for path in make_plots(Path(args.dir)):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedmeta.study.report import write_report

    print(write_report(Path(args.dir)))
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from fedmeta.experiment import build_experiment
    from fedmeta.partition.report import class_histogram, describe, plot_heatmap
    from fedmeta.scenario import load_scenario

    sc = load_scenario(args.scenario, args.set)
    exp = build_experiment(sc, check_all=True)
    counts, _ = class_histogram(exp)
    print(describe(exp, counts))
    out = Path(args.out) if args.out else Path("runs") / f"partition-{sc.name}.png"
    print(f"heatmap: {plot_heatmap(exp, counts, out)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fedmeta.scenario import load_scenario

    sc = load_scenario(args.scenario, args.set)
    exp = _preflight(sc)
    sizes = [s.size for s in exp.layout.train]
    wider = f" (training {sc.task.train_way}-way)" if sc.task.train_way else ""
    print(
        f"ok: {sc.name}: {sc.data.name} ({exp.source.num_classes} classes), "
        f"{sc.task.n_way}-way {sc.task.k_shot}-shot{wider}, {sc.clients.train} training clients "
        f"({min(sizes)}-{max(sizes)} examples each) + {sc.clients.heldout} held-out, "
        f"learner {sc.learner.name}, strategy {sc.strategy.name}, {sc.train.rounds} rounds"
    )
    from runner.simulation import pool_size

    print(
        f"nodes: fedmeta run simulates them on {pool_size(sc)} pooled nodes; flwr run and "
        f"fedmeta deploy need {exp.n_clients} (flwr run --federation-config "
        f"'num-supernodes={exp.n_clients}')"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fedmeta.data import DATASETS
    from fedmeta.learners import LEARNERS
    from fedmeta.models import MODELS
    from fedmeta.partition import PARTITIONERS
    from fedmeta.strategies import STRATEGIES

    table = {
        "datasets": DATASETS,
        "partitioners": PARTITIONERS,
        "models": MODELS,
        "learners": LEARNERS,
        "strategies": STRATEGIES,
    }
    from fedmeta.study.plan import PRESETS

    table["compare presets (besides every learner name)"] = PRESETS
    if args.json:
        print(json.dumps({k.split()[0]: r.names() for k, r in table.items()}, indent=2))
        return 0
    for title, reg in table.items():
        print(f"{title}:")
        for name in reg.names():
            print(f"  {name:<14} {reg.describe(name)}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _set_option(
    parser: argparse.ArgumentParser,
    help: str = "override a scenario key, e.g. --set train.rounds=5 (repeatable)",
) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedmeta", description="Federated few-shot meta-learning simulator.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a scenario file")
    run.add_argument("scenario")
    _set_option(run)
    run.add_argument("--out", help="run directory (default runs/<name>-<timestamp>)")
    run.set_defaults(fn=cmd_run)
    res = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    res.add_argument("run_dir")
    _set_option(res, f"extend the run: {', '.join(RESUMABLE_KEYS)} (e.g. train.rounds=60)")
    res.set_defaults(fn=cmd_resume)
    dep = sub.add_parser(
        "deploy", help="run a scenario on Flower's Deployment Engine (SuperLink + SuperNodes)"
    )
    dep.add_argument("scenario")
    _set_option(dep)
    dep.add_argument("--out", help="run directory (default runs/<name>-deploy-<timestamp>)")
    dep.add_argument(
        "--simulation",
        action="store_true",
        help="use Flower's simulation runtime (flwr run with a simulation SuperLink) instead",
    )
    dep.add_argument(
        "--secure",
        action="store_true",
        help="TLS (a throwaway CA) and SuperNode authentication (registered keys)",
    )
    dep.add_argument("--data-root", help="every SuperNode's data folder (node config data-root)")
    dep.add_argument("--timeout", type=_positive, help="stop the run after this many seconds")
    dep.set_defaults(fn=cmd_deploy)
    val = sub.add_parser("validate", help="check a scenario (and its data) without running it")
    val.add_argument("scenario")
    _set_option(val)
    val.set_defaults(fn=cmd_validate)
    for kind, fn, text in (
        ("compare", cmd_compare, "run every strategy x seed of a scenario, then table and plots"),
        ("sweep", cmd_sweep, "run a grid over one or two scenario keys, per strategy"),
    ):
        st = sub.add_parser(kind, help=text)
        st.add_argument("scenario")
        if kind == "sweep":
            st.add_argument(
                "--param",
                action="append",
                default=[],
                metavar="KEY=V1,V2,...",
                help="a scenario key and its values, e.g. partition.alpha=0.05,0.1,1 (1 or 2)",
            )
        st.add_argument(
            "--strategies", help="comma-separated strategies (default: [compare] strategies)"
        )
        st.add_argument("--seeds", type=_positive, help="seeds per strategy (default: [compare])")
        _set_option(st)
        st.add_argument("--out", help=f"{kind} directory; an existing one is resumed")
        st.set_defaults(fn=fn)
    for kind, fn, text in (
        ("plot", cmd_plot, "regenerate every plot of a run or study directory"),
        ("report", cmd_report, "write report.md (table and plots) for a run or study directory"),
    ):
        sp = sub.add_parser(kind, help=text)
        sp.add_argument("dir")
        sp.set_defaults(fn=fn)
    aud = sub.add_parser("audit", help="membership-inference audit of a finished run")
    aud.add_argument("run_dir")
    aud.add_argument("--tasks", type=_positive, help="tasks per audited client (default: scenario)")
    aud.set_defaults(fn=cmd_audit)
    part = sub.add_parser("partition", help="print and plot who holds which classes (no training)")
    part.add_argument("scenario")
    _set_option(part)
    part.add_argument("--out", help="heatmap PNG (default runs/partition-<name>.png)")
    part.set_defaults(fn=cmd_partition)
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
