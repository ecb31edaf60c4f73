"""``benchmarks/check_results.py`` reads the quickstart's recorded lines from docs/RESULTS.md."""

from __future__ import annotations

from conftest import REPO, benchmark_module

cr = benchmark_module("check_results")


def test_the_recorded_block_is_read_from_results_md():
    lines = cr.recorded(REPO / "docs" / "RESULTS.md")
    assert lines and all(line.startswith("held-out query-") for line in lines)
    assert any("after adaptation" in line for line in lines)


def test_a_results_file_without_the_block_has_nothing_to_compare(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nheld-out query-acc 0.5\n")
    assert cr.recorded(path) is None
    path.write_text(f"{cr.MARKER}\n```\nrun x\nheld-out query-acc a\n```\nheld-out later\n")
    assert cr.recorded(path) == ["held-out query-acc a"]
