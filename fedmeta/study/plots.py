"""Plots of a study (comparison or sweep), regenerated from its saved results.

Every curve is the mean over seeds with a shaded 95% confidence band: Student-t across seeds, or
the run's own interval over tasks when there is one seed. A strategy evaluated only before
training (``train.rounds = 0``, e.g. ``local-only``) is drawn as a dashed horizontal line.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from cycler import cycler

from fedmeta.stats import auc_ci95, mean_ci95
from fedmeta.study.results import CellResult

COMPARE_PLOTS = ("acc_vs_round", "acc_vs_mb", "acc_vs_adapt_steps", "acc_by_client")


def _label(c: CellResult) -> str:
    extra = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in c.params.items())
    return f"{c.strategy} ({extra})" if extra else c.strategy


def _groups(cells: list[CellResult]) -> dict[str, list[CellResult]]:
    out: dict[str, list[CellResult]] = {}
    for c in cells:
        out.setdefault(_label(c), []).append(c)
    return out


Points = Callable[[CellResult], dict[Any, tuple[float, float, float]]]
"""``points(cell) -> {key: (x, value, ci95)}``: one cell's curve, keyed by what aligns the
seeds (the round, the number of adaptation steps, the parameter value)."""


def _series(group: list[CellResult], points: Points) -> tuple[np.ndarray, ...]:
    """x, mean and CI half-width over the keys every seed has; x is averaged over seeds (for
    MB communicated, which differs between seeds when clients drop out)."""
    per_seed = [points(c) for c in group]
    keys = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    xs, mean, ci = [], [], []
    for key in keys:
        xs.append(float(np.mean([p[key][0] for p in per_seed])))
        if len(per_seed) == 1:
            _, m, h = per_seed[0][key]
        else:
            m, h = mean_ci95([p[key][1] for p in per_seed], "t")
        mean.append(m)
        ci.append(0.0 if math.isnan(h) else h)
    return np.array(xs), np.array(mean), np.array(ci)


LINE_STYLES = cycler(linestyle=["-", "--", ":"]) * cycler(color=plt.get_cmap("tab10").colors)
"""Ten colours, then the same colours dashed, then dotted: 30 distinguishable lines (a full
comparison has 11 strategies; a sweep of the audit, two attacks per strategy)."""


def _axes(width: float = 7.0) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(width, 4.5))
    ax.set_prop_cycle(LINE_STYLES)
    return fig, ax


def _draw(ax, label: str, x, mean, ci, xspan: tuple[float, float] | None = None) -> None:
    if len(x) == 1 and xspan is not None:  # evaluated once: a flat reference line
        ax.hlines(mean[0], *xspan, linestyles="--", colors="0.4", label=f"{label} (no training)")
        ax.axhspan(mean[0] - ci[0], mean[0] + ci[0], color="0.6", alpha=0.15)
        return
    (line,) = ax.plot(x, mean, marker="o", ms=3, label=label)
    ax.fill_between(x, mean - ci, mean + ci, alpha=0.2, color=line.get_color())


def _finish(fig, ax, out: Path, xlabel: str, ylabel: str, title: str) -> Path:
    if "acc" in ylabel:  # accuracies (and their CI bands) live in [0, 1]
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -0.02), min(hi, 1.02))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _heldout_points(metric: str, x_of: Callable[[CellResult, int], float]) -> Points:
    def points(c: CellResult) -> dict[Any, tuple[float, float, float]]:
        ci = dict(c.curve(f"{metric}-ci95"))
        return {rnd: (x_of(c, rnd), v, ci.get(rnd, math.nan)) for rnd, v in c.curve(metric)}

    return points


def _metric(cells: list[CellResult]) -> str:
    has_acc = any(c.curve("query-acc-post") for c in cells)
    return "query-acc-post" if has_acc else "query-loss-post"


def plot_vs_round(cells: list[CellResult], out: Path, title: str) -> Path:
    metric = _metric(cells)
    fig, ax = _axes()
    last = max((r for c in cells for r, _ in c.curve(metric)), default=1)
    for label, group in _groups(cells).items():
        x, m, ci = _series(group, _heldout_points(metric, lambda c, r: r))
        _draw(ax, label, x, m, ci, xspan=(0, last))
    return _finish(fig, ax, out, "round", f"held-out {metric}", title)


def plot_vs_mb(cells: list[CellResult], out: Path, title: str) -> Path:
    metric = _metric(cells)
    fig, ax = _axes()

    def mb(c: CellResult, rnd: int) -> float:
        return c.system("bytes-communicated").get(rnd, 0.0) / 2**20

    span = max((mb(c, r) for c in cells for r, _ in c.curve(metric)), default=1.0)
    for label, group in _groups(cells).items():
        x, m, ci = _series(group, _heldout_points(metric, mb))
        _draw(ax, label, x, m, ci, xspan=(0, span))
    return _finish(
        fig, ax, out, "MB communicated (server <-> clients)", f"held-out {metric}", title
    )


def plot_vs_time(
    cells: list[CellResult], out: Path, title: str, targets: tuple[float, ...] = ()
) -> Path:
    """Held-out accuracy after adaptation against wall-clock minutes; each of ``targets`` is
    a dotted line, and a run's first evaluation at or above it is circled."""
    metric = _metric(cells)
    fig, ax = _axes()

    def minutes(c: CellResult, rnd: int) -> float:
        return c.system("wall-seconds").get(rnd, 0.0) / 60

    for label, group in _groups(cells).items():
        _draw(ax, label, *_series(group, _heldout_points(metric, minutes)))
    for target in targets:
        ax.axhline(target, color="grey", linestyle=":", linewidth=0.8)
        for c in cells:
            hit = next((rnd for rnd, v in c.curve(metric) if v >= target), None)
            if hit is not None:
                ax.plot(
                    minutes(c, hit),
                    dict(c.curve(metric))[hit],
                    "o",
                    mfc="none",
                    ms=9,
                    color="black",
                )
    return _finish(fig, ax, out, "wall-clock time (minutes)", f"held-out {metric}", title)


def plot_vs_adapt_steps(cells: list[CellResult], out: Path, title: str) -> Path:
    fig, ax = _axes()
    ylabel = "held-out query accuracy"
    for label, group in _groups([c for c in cells if c.adapt]).items():
        ylabel = f"held-out {group[0].adapt['metric']}"

        def points(c: CellResult) -> dict[Any, tuple[float, float, float]]:
            a = c.adapt
            return {s: (s, m, h) for s, m, h in zip(a["steps"], a["mean"], a["ci95"], strict=True)}

        _draw(ax, label, *_series(group, points))
    return _finish(fig, ax, out, "adaptation steps at evaluation", ylabel, title)


def plot_by_client(cells: list[CellResult], out: Path, title: str) -> Path:
    """Per held-out client accuracy after adaptation at the last evaluation (seeds pooled)."""
    groups = _groups(cells)
    fig, ax = _axes(max(6, 0.8 * len(groups) + 2))
    data = [[v for c in g for v in c.per_client()] for g in groups.values()]
    labels = list(groups)
    keep = [i for i, d in enumerate(data) if d]
    ax.boxplot([data[i] for i in keep], showmeans=True)
    rng = np.random.default_rng(0)
    for pos, i in enumerate(keep, 1):
        ax.scatter(pos + rng.uniform(-0.12, 0.12, len(data[i])), data[i], s=8, alpha=0.5)
    ax.set_xticks(range(1, len(keep) + 1), [labels[i] for i in keep], rotation=30, ha="right")
    ax.plot([], [], "g^", label="mean")
    ax.plot([], [], "o", color="C0", alpha=0.5, label="one held-out client (x seeds)")
    return _finish(fig, ax, out, "strategy", "held-out client query-acc-post", title)


Value = Callable[[CellResult], "tuple[float, float] | None"]
"""``value(cell) -> (final value, its 95% CI over tasks)``, or ``None`` when the cell lacks it."""


def _final_heldout(metric: str) -> Value:
    def value(c: CellResult) -> tuple[float, float] | None:
        v = c.final(metric)
        return None if v is None else (v, c.summary["heldout"].get(f"{metric}-ci95", math.nan))

    return value


def _audit(attack: str) -> Value:
    """An attack's AUC and its 95% interval (Hanley and McNeil)."""

    def value(c: CellResult) -> tuple[float, float] | None:
        a = (c.summary or {}).get("audit", {})
        if f"{attack}-auc" not in a:
            return None
        return a[f"{attack}-auc"], auc_ci95(a[f"{attack}-auc"], a["members"], a["nonmembers"])

    return value


def _x_positions(values: list[Any]) -> tuple[dict[Any, float], bool, list[str] | None]:
    """Where each swept value goes on the x axis, whether the axis is logarithmic, and tick
    labels when the axis is not the values themselves. ``inf`` (e.g. "no noise") is drawn
    one decade (or one step) beyond the largest finite value and labelled ``inf``."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return {v: float(i) for i, v in enumerate(values)}, False, [str(v) for v in values]
    finite = [v for v in values if math.isfinite(v)]
    log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= 50
    far = (
        max(finite) * (10 if log else 1) + (0 if log else max(1.0, np.ptp(finite) / 4))
        if finite
        else 1.0
    )
    pos = {v: float(v) if math.isfinite(v) else far for v in values}
    labels = (
        None
        if all(math.isfinite(v) for v in values)
        else ["inf" if not math.isfinite(v) else f"{v:g}" for v in values]
    )
    return pos, log, labels


def plot_sweep(
    cells: list[CellResult],
    params: dict[str, list[Any]],
    out: Path,
    title: str,
    value: Value | None = None,
    ylabel: str | None = None,
    reference: tuple[float, str] | None = None,
) -> Path:
    """A final value against the first swept parameter, one line per strategy (and per value
    of a second parameter). By default the value is the held-out accuracy after adaptation
    (the loss for regression). ``reference`` draws a dotted horizontal line with a label."""
    keys = list(params)
    x_key = keys[0]
    done = [c for c in cells if c.summary is not None]
    if value is None:
        metric = (
            "query-acc-post"
            if any(c.final("query-acc-post") is not None for c in done)
            else "query-loss-post"
        )
        value, ylabel = _final_heldout(metric), f"final held-out {metric}"
    pos, log, labels = _x_positions(params[x_key])
    fig, ax = _axes()
    lines: dict[str, list[CellResult]] = {}
    for c in done:
        rest = ", ".join(f"{k.split('.')[-1]}={c.params[k]}" for k in keys[1:])
        lines.setdefault(f"{c.strategy} ({rest})" if rest else c.strategy, []).append(c)
    for label, group in lines.items():

        def points(c: CellResult) -> dict[Any, tuple[float, float, float]]:
            got = value(c)
            x = pos[c.params[x_key]]
            return {} if got is None else {x: (x, got[0], got[1])}

        by_x: dict[Any, list[CellResult]] = {}
        for c in group:
            for x in points(c):
                by_x.setdefault(x, []).append(c)
        xs, ms, cis = [], [], []
        for x in sorted(by_x):
            _, m, h = _series(by_x[x], points)
            xs.append(x)
            ms.append(m[0])
            cis.append(h[0])
        if xs:
            _draw(ax, label, np.array(xs), np.array(ms), np.array(cis))
    if reference is not None:
        ax.axhline(reference[0], ls=":", color="0.3", label=reference[1])
    if log:
        ax.set_xscale("log")
    if labels is not None:
        ax.set_xticks([pos[v] for v in params[x_key]], labels)
        ax.minorticks_off()
    return _finish(fig, ax, out, x_key, ylabel or "", title)


def plot_study(out: Path, manifest: dict[str, Any], cells: list[CellResult]) -> list[Path]:
    """Every plot of a study into ``out``; returns the files written."""
    name = manifest["name"]
    seeds = len(manifest["seeds"])
    band = f"mean and 95% CI over {seeds} seeds" if seeds > 1 else "95% CI over tasks"
    made = [
        plot_vs_round(cells, out / "acc_vs_round.png", f"{name}: held-out accuracy ({band})"),
        plot_vs_mb(cells, out / "acc_vs_mb.png", f"{name}: accuracy vs communication ({band})"),
        plot_vs_adapt_steps(
            cells, out / "acc_vs_adapt_steps.png", f"{name}: accuracy vs adaptation steps ({band})"
        ),
        plot_by_client(cells, out / "acc_by_client.png", f"{name}: held-out clients, final round"),
    ]
    if manifest["params"]:
        made.append(
            plot_sweep(cells, manifest["params"], out / "sweep.png", f"{name}: sweep ({band})")
        )
        if any("audit" in (c.summary or {}) for c in cells):
            made.append(plot_sweep_audit(cells, manifest["params"], out / "sweep_audit.png", name))
    return made


def plot_sweep_audit(
    cells: list[CellResult], params: dict[str, list[Any]], out: Path, name: str
) -> Path:
    """Membership-inference AUC of both attacks (:mod:`fedmeta.privacy.audit`) against the
    first swept parameter; one line per strategy and attack, with a 95% band."""
    per_attack = [
        CellResult(f"{c.strategy}, {attack}", c.seed, c.params, c.records, c.summary, c.adapt)
        for attack in ("loss", "calibrated")
        for c in cells
    ]
    return plot_sweep(
        per_attack,
        params,
        out,
        f"{name}: membership inference on the final meta-parameters",
        value=lambda c: _audit(c.strategy.rsplit(", ", 1)[1])(c),
        ylabel="attack AUC (loss / calibrated attack)",
        reference=(0.5, "chance"),
    )
