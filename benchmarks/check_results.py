"""Re-run the quickstart and compare what it prints with the figures recorded in docs/RESULTS.md.

docs/RESULTS.md keeps the quickstart's printed metric lines, exactly as ``fedmeta run
scenarios/quickstart.toml`` printed them, in a fenced block that follows the marker line
``<!-- check_results: quickstart -->``. This script runs the quickstart into a temporary folder
and compares its ``held-out ...`` lines with that block, character for character. On CPU the
same scenario and seed give the same metrics, so on this kind of machine (same torch build and
CPU instruction set) any difference means the code changed the results.

Exit 0 when they match; 1 with both texts when they differ; 2 when RESULTS.md has no block.

Run: ``python benchmarks/check_results.py``
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- check_results: quickstart -->"


def recorded(results: Path) -> list[str] | None:
    """The metric lines of the fenced block after :data:`MARKER`, or ``None``."""
    lines = results.read_text().splitlines()
    if MARKER not in lines:
        return None
    start = lines.index(MARKER) + 1
    while start < len(lines) and not lines[start].startswith("```"):
        start += 1
    end = start + 1
    while end < len(lines) and not lines[end].startswith("```"):
        end += 1
    return [line for line in lines[start + 1 : end] if line.startswith("held-out ")]


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
    want = recorded(ROOT / "docs" / "RESULTS.md")
    if not want:
        print(f"check_results: docs/RESULTS.md has no {MARKER} block with held-out lines")
        return 2
    got = printed()
    if got == want:
        print("check_results: the quickstart prints what docs/RESULTS.md records")
        for line in got:
            print(f"  {line}")
        return 0
    print("check_results: the quickstart's figures differ from docs/RESULTS.md")
    print("recorded:\n  " + "\n  ".join(want))
    print("printed now:\n  " + "\n  ".join(got))
    return 1


if __name__ == "__main__":
    sys.exit(main())
