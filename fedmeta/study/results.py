"""Study results: the tidy ``results.csv``, per-cell summaries and the Markdown table.

``results.csv`` has one row per strategy, seed, (swept parameter values,) round, phase and
scalar metric: columns ``strategy, seed, <param keys...>, round, phase, metric, value``. List
metrics (per-task or per-client values) stay in each run's ``metrics.jsonl``; the last
held-out round's per-client accuracies go to ``clients.csv`` and the accuracy after each
number of adaptation steps to ``adapt_steps.csv``.

Across seeds, a mean's 95% confidence interval is Student's ``t(0.975, n-1) * sd / sqrt(n)``;
with one seed the table shows the run's own interval over tasks instead, marked "(tasks)".
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmeta.results import RunDir, atomic_write_text
from fedmeta.stats import mean_ci95
from fedmeta.study.manifest import read_manifest


@dataclass
class CellResult:
    """Everything saved for one cell of a study."""

    strategy: str
    seed: int
    params: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    adapt: dict[str, Any] | None

    def curve(self, metric: str = "query-acc-post") -> list[tuple[int, float]]:
        return sorted(
            (r["round"], float(r["value"]))
            for r in self.records
            if r["phase"] == "heldout" and r["metric"] == metric
        )

    def system(self, metric: str) -> dict[int, float]:
        return {r["round"]: float(r["value"]) for r in self.records if r["metric"] == metric}

    def final(self, metric: str) -> float | None:
        if self.summary is None:
            return None
        return self.summary.get("heldout", {}).get(metric)

    def per_client(self, metric: str = "query-acc-post") -> list[float]:
        key = f"{metric}-per-client"
        rows = [r for r in self.records if r["phase"] == "heldout" and r["metric"] == key]
        return list(max(rows, key=lambda r: r["round"])["value"]) if rows else []


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_cell(path: Path, strategy: str | None = None, seed: int = 0, params=None) -> CellResult:
    """What a run directory holds, as one cell (a finished run has a summary; an unfinished
    one's curve is read all the same). ``strategy`` defaults to the run's name."""
    run = RunDir(path)
    summary = _read_json(path / "summary.json")
    name = strategy or (summary["name"] if summary else path.name)
    adapt = _read_json(path / "adapt-steps.json")
    return CellResult(name, seed, params or {}, run.read_metrics(), summary, adapt)


def load_cells(out: Path) -> tuple[dict[str, Any], list[CellResult]]:
    """The study manifest and every *finished* cell (tables, CSVs and plots use finished runs
    only, so a study still running never mixes partial curves into its means)."""
    manifest = read_manifest(out)
    cells = []
    for c in manifest["cells"]:
        path = out / "runs" / c["dir"]
        if (path / "summary.json").exists():
            cells.append(run_cell(path, c["strategy"], c["seed"], c["params"]))
    return manifest, cells


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_csvs(out: Path, manifest: dict[str, Any], cells: list[CellResult]) -> None:
    """``results.csv``, ``clients.csv`` and ``adapt_steps.csv`` (see module docstring)."""
    keys = list(manifest["params"])
    head = ["strategy", "seed", *keys]
    rows = []
    for c in cells:
        lead = [c.strategy, c.seed, *(c.params[k] for k in keys)]
        for r in c.records:
            if isinstance(r["value"], int | float) and not isinstance(r["value"], bool):
                rows.append([*lead, r["round"], r["phase"], r["metric"], r["value"]])
    atomic_write_text(out / "results.csv", _csv([*head, "round", "phase", "metric", "value"], rows))
    clients = [
        [c.strategy, c.seed, *(c.params[k] for k in keys), i, v]
        for c in cells
        for i, v in enumerate(c.per_client())
    ]
    atomic_write_text(
        out / "clients.csv", _csv([*head, "heldout-client", "query-acc-post"], clients)
    )
    adapt = [
        [c.strategy, c.seed, *(c.params[k] for k in keys), s, m, ci]
        for c in cells
        if c.adapt
        for s, m, ci in zip(c.adapt["steps"], c.adapt["mean"], c.adapt["ci95"], strict=True)
    ]
    atomic_write_text(
        out / "adapt_steps.csv", _csv([*head, "adapt-steps", "query-acc", "ci95"], adapt)
    )


def rounds_to_target(cell: CellResult, target: float) -> int | None:
    """The first evaluated round whose held-out accuracy after adaptation reaches ``target``."""
    return next((rnd for rnd, acc in cell.curve() if acc >= target), None)


def _pm(mean: float, ci: float, digits: int = 3, note: str = "") -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(ci) else f" ± {ci:.{digits}f}{note}")


def comparison_table(manifest: dict[str, Any], cells: list[CellResult]) -> str:
    """Markdown: one row per strategy (and parameter point) over its finished seeds."""
    target = manifest["target"]
    keys = list(manifest["params"])
    groups: dict[tuple, list[CellResult]] = {}
    for c in cells:
        if c.summary is not None:
            groups.setdefault((c.strategy, *(c.params[k] for k in keys)), []).append(c)
    header = [
        "strategy",
        *keys,
        "seeds",
        "held-out acc after adaptation",
        "before adaptation",
        f"rounds to {target:g}",
        "wall min",
        "MB communicated",
    ]
    private = any("privacy" in (c.summary or {}) for c in cells)
    audited = any("audit" in (c.summary or {}) for c in cells)
    header += ["epsilon spent"] * private + ["attack AUC: loss / calibrated"] * audited
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, group in groups.items():
        post = [c.final("query-acc-post") for c in group]
        pre = [c.final("query-acc-pre") for c in group]
        if any(v is None for v in post):  # a regression study: report the loss instead
            post = [c.final("query-loss-post") for c in group]
            pre = [c.final("query-loss-pre") for c in group]
        if len(group) == 1:
            h = group[0].summary["heldout"]
            metric = "query-acc" if "query-acc-post" in h else "query-loss"
            post_s = _pm(post[0], h.get(f"{metric}-post-ci95", math.nan), note=" (tasks)")
            pre_s = _pm(pre[0], h.get(f"{metric}-pre-ci95", math.nan), note=" (tasks)")
        else:
            post_s, pre_s = _pm(*mean_ci95(post, "t")), _pm(*mean_ci95(pre, "t"))
        short = [
            f"{h['num-clients']}/{h['num-clients-expected']}"
            for h in (c.summary["heldout"] for c in group)
            if h.get("num-clients-expected", h.get("num-clients")) != h.get("num-clients")
        ]
        if short:  # a final accuracy never silently covers fewer clients than the scenario's
            post_s += f" ({', '.join(short)} held-out clients)"
        reached = [r for c in group if (r := rounds_to_target(c, target)) is not None]
        to_target = (
            f"{np.mean(reached):.0f} ({len(reached)}/{len(group)} seeds)"
            if reached
            else "not reached"
        )
        wall = np.mean([c.summary["wall-seconds"] for c in group]) / 60
        mb = np.mean([c.summary["mb-communicated"] for c in group])
        row = [
            *map(str, key),
            str(len(group)),
            post_s,
            pre_s,
            to_target,
            f"{wall:.1f}",
            f"{mb:.1f}",
        ]
        if private:
            row.append(_privacy_cell(group))
        if audited:
            row.append(_audit_cell(group))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _privacy_cell(group: list[CellResult]) -> str:
    """Central epsilon (the same for every seed of a point), and DP-SGD's largest."""
    p = group[0].summary.get("privacy", {})
    parts = [f"{p['epsilon']:.3g}"] if "epsilon" in p else []
    if "example-epsilon" in p:
        parts.append(f"examples: {max(c.summary['privacy']['example-epsilon'] for c in group):.3g}")
    return ", ".join(parts) or "-"


def _audit_cell(group: list[CellResult]) -> str:
    audits = [c.summary["audit"] for c in group if "audit" in c.summary]
    if not audits:
        return "-"
    loss = np.mean([a["loss-auc"] for a in audits])
    calibrated = np.mean([a["calibrated-auc"] for a in audits])
    return f"{loss:.3f} / {calibrated:.3f}"


def write_table(out: Path, manifest: dict[str, Any], cells: list[CellResult]) -> str:
    table = comparison_table(manifest, cells)
    atomic_write_text(out / "table.md", table)
    return table
