"""Benchmark: `superalign pretrain --task arithmetic --size tiny` from scratch.

Target (issue 2): at least 90% gold accuracy on held-out 2-step problems within 5 minutes on
2 CPU cores. Runs the real CLI in a fresh runs folder (nothing reused) and prints wall time,
its ratio to the 300 s budget, and held-out gold accuracy per difficulty. A figure, not a
timed assertion: CI does not run it.

    .venv/bin/python bench/pretrain_accuracy.py [key=value ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 300.0
TARGET = 0.90


def main() -> int:
    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as runs:
        cmd = [
            sys.executable,
            "-m",
            "superalign.cli",
            "pretrain",
            "--task",
            "arithmetic",
            "--size",
            "tiny",
            *overrides,
            "--runs-dir",
            runs,
        ]
        start = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - start
        (summary_path,) = Path(runs).glob("pretrain-*/summary.json")
        s = json.loads(summary_path.read_text())
    print(f"pretrain tiny arithmetic: {s['params']:,} parameters, {s['steps']} steps")
    print(f"{'metric':<40}{'value':>10}{'target':>12}{'ratio':>8}")
    print(
        f"{'wall time incl. startup (s)':<40}{wall:>10.0f}{BUDGET_S:>12.0f}{wall / BUDGET_S:>8.2f}"
    )
    for k, v in s.items():
        if k.startswith("eval/accuracy/"):
            level = int(k.rsplit("d", 1)[1])
            target = f"{TARGET:.2f}" if level in (1, 2) else "-"
            print(
                f"{'held-out gold accuracy, level ' + str(level):<40}{v:>10.3f}{target:>12}{(v / TARGET if level in (1, 2) else float('nan')):>8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
