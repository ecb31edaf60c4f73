"""``benchmarks/check_results.py`` reads the quickstart's recorded lines for one CPU from
docs/RESULTS.md."""

from __future__ import annotations

from conftest import REPO, benchmark_module

cr = benchmark_module("check_results")


def test_every_recorded_block_is_read_from_results_md():
    recorded = cr.blocks(REPO / "docs" / "RESULTS.md")
    assert len(recorded) >= 1
    for lines in recorded.values():
        assert lines and all(line.startswith("held-out query-") for line in lines)
        assert any("after adaptation" in line for line in lines)


def test_blocks_are_chosen_by_cpu(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nheld-out query-acc 0.5\n")
    assert cr.blocks(path) == {}
    path.write_text(
        f"{cr.MARKER}a-1 -->\n```\nrun x\nheld-out query-acc a\n```\nheld-out later\n"
        f"{cr.MARKER}b-2 -->\n```\nheld-out query-acc b\n```\n"
    )
    recorded = cr.blocks(path)
    assert list(recorded) == ["a-1", "b-2"]
    assert recorded["a-1"] == ["held-out query-acc a"]
    assert recorded["b-2"] == ["held-out query-acc b"]
    assert "c-3" not in recorded


def test_the_cpu_name_comes_from_cpuinfo_and_torch(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"
        "model name\t: Xeon\nstepping\t: 7\n\nprocessor\t: 1\nvendor_id\t: Other\n"
    )
    name = cr.cpu_name(info)
    assert name.startswith("GenuineIntel-6-85-7-")
    assert name.split("-")[-1] in {"DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256"}
    assert cr.cpu_name(tmp_path / "absent").count("-") == 1  # machine-capability
