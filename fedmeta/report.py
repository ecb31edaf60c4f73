"""``fedmeta plot`` and ``fedmeta report``: regenerate plots and a Markdown report from saved
results, for a single run directory or a study (comparison or sweep) directory."""

from __future__ import annotations

import json
from pathlib import Path

from fedmeta.errors import FedmetaError
from fedmeta.results import RunDir, atomic_write_text


def _run_as_cell(path: Path):
    from fedmeta.study_results import CellResult

    run = RunDir(path)
    summary = run.read_summary() if (path / "summary.json").exists() else None
    adapt = (
        json.loads((path / "adapt-steps.json").read_text())
        if (path / "adapt-steps.json").exists()
        else None
    )
    name = summary["name"] if summary else path.name
    return CellResult(name, 0, {}, run.read_metrics(), summary, adapt)


def kind_of(path: Path) -> str:
    if (path / "study.json").exists():
        return "study"
    if (path / "metrics.jsonl").exists():
        return "run"
    raise FedmetaError(
        f"{str(path)!r} is neither a run directory (metrics.jsonl) nor a study directory "
        f"(study.json); pass the directory that 'fedmeta run' or 'fedmeta compare' wrote"
    )


def _load_study(path: Path):
    from fedmeta.study_results import load_cells

    manifest, cells = load_cells(path)
    if not cells:
        raise FedmetaError(f"{str(path)!r}: no cell of this study has results yet")
    return manifest, cells


def _study_outputs(path: Path, manifest, cells) -> tuple[str, list[Path]]:
    """Write a study's CSVs, table and plots; return the table and the plot files."""
    from fedmeta import study_plots
    from fedmeta.study_results import write_csvs, write_table

    write_csvs(path, manifest, cells)
    return write_table(path, manifest, cells), study_plots.plot_study(path, manifest, cells)


def make_plots(path: Path) -> list[Path]:
    """Every plot of a run or study, written into ``path`` (a study also rewrites its CSVs
    and table)."""
    from fedmeta import study_plots
    from fedmeta.plots import plot_heldout_vs_time

    if kind_of(path) == "study":
        return _study_outputs(path, *_load_study(path))[1]
    cell = _run_as_cell(path)
    made = [
        study_plots.plot_vs_round([cell], path / "heldout_vs_round.png", f"{cell.strategy}"),
        plot_heldout_vs_time({cell.strategy: path}, path / "heldout_vs_time.png"),
        study_plots.plot_by_client([cell], path / "heldout_by_client.png", cell.strategy),
    ]
    if cell.adapt:
        made.append(
            study_plots.plot_vs_adapt_steps([cell], path / "acc_vs_adapt_steps.png", cell.strategy)
        )
    return made


def write_report(path: Path) -> Path:
    """``report.md`` beside the plots: what was run, the results table and every plot."""
    lines = []
    if kind_of(path) == "study":
        manifest, cells = _load_study(path)
        table, images = _study_outputs(path, manifest, cells)
        lines += [
            f"# {manifest['kind'].capitalize()}: {manifest['name']}",
            "",
            f"- strategies: {', '.join(manifest['strategies'])}",
            f"- seeds: {', '.join(map(str, manifest['seeds']))}",
        ]
        lines += [f"- {k}: {', '.join(map(str, v))}" for k, v in manifest["params"].items()]
        lines += [
            f"- finished runs: {len(cells)} of {len(manifest['cells'])}",
            "- data: `results.csv` (tidy), `clients.csv`, `adapt_steps.csv`; runs in `runs/`",
            "",
            table,
        ]
    else:
        images = make_plots(path)
        summary = RunDir(path).read_summary()
        h = summary["heldout"]
        lines += [f"# Run: {summary['name']}", ""]
        lines += [
            f"- {summary['rounds']} rounds in {summary['wall-seconds'] / 60:.1f} min, "
            f"{summary['mb-communicated']:.0f} MB communicated"
        ]
        for m in ("query-acc", "query-loss"):
            if f"{m}-post" in h:
                lines.append(
                    f"- held-out {m}: before adaptation {h[f'{m}-pre']:.4f} ± "
                    f"{h[f'{m}-pre-ci95']:.4f}, after {h[f'{m}-post']:.4f} ± "
                    f"{h[f'{m}-post-ci95']:.4f} ({h['num-tasks']} tasks)"
                )
        lines += ["- scenario: `scenario.toml`", ""]
    lines += [f"![{img.stem}]({img.name})\n" for img in images]
    out = path / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
