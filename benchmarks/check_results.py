"""Re-run the quickstart and compare what it prints with the figures recorded in docs/RESULTS.md.

docs/RESULTS.md keeps the quickstart's printed metric lines, exactly as ``fedmeta run
scenarios/quickstart.toml`` printed them, in fenced blocks that follow marker lines
``<!-- check_results: quickstart cpu=CPU -->``, one block per CPU they were measured on. This
script runs the quickstart into a temporary folder and compares its ``held-out ...`` lines with
the block of this machine's CPU (:func:`cpu_name`; :func:`blocks` reads them), character for
character.

On CPU the same scenario and seed give the same metrics, but only on the same processor: torch's
convolution and matrix kernels pick their instruction set and blocking by CPU, and 30 rounds of
training amplify the last bit of rounding. Measured on one machine, the quickstart printed 0.6962
after adaptation, and 0.6978 with oneDNN and MKL held to AVX2; an earlier machine of the same
kind printed 0.7030. So on the same CPU any difference means the code changed the results.

Exit 0 when they match; 1 with both texts when they differ; 2 when RESULTS.md has no block for
this CPU (it prints the lines to record).

Run: ``python benchmarks/check_results.py``
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- check_results: quickstart cpu="


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This processor as RESULTS.md names it: vendor, family, model and stepping from
    ``/proc/cpuinfo``, and the instruction set torch dispatches to; e.g.
    ``GenuineIntel-6-167-1-AVX512``."""
    import torch

    fields: dict[str, str] = {}
    if cpuinfo.exists():
        for line in cpuinfo.read_text().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    parts = [fields.get(k, "") for k in ("vendor_id", "cpu family", "model", "stepping")]
    if not any(parts):
        parts = [platform.machine()]
    return "-".join([*filter(None, parts), torch.backends.cpu.get_cpu_capability()])


def blocks(results: Path) -> dict[str, list[str]]:
    """The metric lines of every recorded block, by the CPU its marker names."""
    lines = results.read_text().splitlines()
    found: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        if not (line.startswith(MARKER) and line.endswith(" -->")):
            continue
        start = i + 1
        while start < len(lines) and not lines[start].startswith("```"):
            start += 1
        end = start + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        found[line[len(MARKER) : -len(" -->")]] = [
            text for text in lines[start + 1 : end] if text.startswith("held-out ")
        ]
    return found


def printed() -> list[str]:
    """The quickstart's ``held-out ...`` lines, run now in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "runner.cli", "run", "scenarios/quickstart.toml"]
        out = subprocess.run(
            [*cmd, "--out", str(Path(tmp) / "quickstart")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return [line for line in out.splitlines() if line.startswith("held-out ")]


def main() -> int:
    recorded = blocks(ROOT / "docs" / "RESULTS.md")
    cpu = cpu_name()
    want = recorded.get(cpu)
    if not want:
        print(f"check_results: docs/RESULTS.md records no quickstart figures for this CPU ({cpu});")
        print(f"  it has blocks for: {', '.join(recorded) or 'none'}")
        print(f"  to record this CPU's, add a block after '{MARKER}{cpu} -->' with the lines")
        print("  'fedmeta run scenarios/quickstart.toml' prints on it")
        return 2
    got = printed()
    if got == want:
        print(f"check_results: the quickstart prints what docs/RESULTS.md records for {cpu}")
        for line in got:
            print(f"  {line}")
        return 0
    print(f"check_results: the quickstart's figures differ from docs/RESULTS.md ({cpu})")
    print("recorded:\n  " + "\n  ".join(want))
    print("printed now:\n  " + "\n  ".join(got))
    return 1


if __name__ == "__main__":
    sys.exit(main())
