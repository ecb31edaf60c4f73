"""``fedmeta plot`` and ``fedmeta report``: regenerate plots and a Markdown report from saved
results, for a single run directory or a study (comparison or sweep) directory."""

from __future__ import annotations

from pathlib import Path

from fedmeta.errors import FedmetaError
from fedmeta.results import RunDir, atomic_write_text
from fedmeta.study import plots
from fedmeta.study.results import load_cells, run_cell, write_csvs, write_table


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
    manifest, cells = load_cells(path)
    if not cells:
        raise FedmetaError(f"{str(path)!r}: no cell of this study has results yet")
    return manifest, cells


def _study_outputs(path: Path, manifest, cells) -> tuple[str, list[Path]]:
    """Write a study's CSVs, table and plots; return the table and the plot files."""
    write_csvs(path, manifest, cells)
    return write_table(path, manifest, cells), plots.plot_study(path, manifest, cells)


def make_plots(path: Path) -> list[Path]:
    """Every plot of a run or study, written into ``path`` (a study also rewrites its CSVs
    and table)."""
    if kind_of(path) == "study":
        return _study_outputs(path, *_load_study(path))[1]
    cell = run_cell(path)
    name = cell.strategy
    made = [
        plots.plot_vs_round([cell], path / "heldout_vs_round.png", name),
        plots.plot_vs_time([cell], path / "heldout_vs_time.png", f"{name}: held-out vs wall time"),
        plots.plot_by_client([cell], path / "heldout_by_client.png", name),
    ]
    if cell.adapt:
        made.append(plots.plot_vs_adapt_steps([cell], path / "acc_vs_adapt_steps.png", name))
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
