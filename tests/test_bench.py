"""`superalign bench`: the quick rows measured for real on the tiny policy, and the demo's
process measurement (wall time, peak memory) on a small child process. No timed assertions."""

import math
import re
import sys

from superalign.bench import demo_rows, format_table, measure_process, rows_ok
from superalign.cli import main


def _table(text: str) -> dict[str, tuple[float, float | None]]:
    """``name -> (value, ratio)`` from the printed Markdown table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"[-+]?\d[\d.eE+-]*", cells[1]):
            rows[cells[0]] = (float(cells[1]), float(cells[4]) if cells[4] else None)
    return rows


def test_quick_bench_prints_every_row_with_positive_numbers(arith_policy, capsys):
    argv = ["bench", "--quick", "--model", str(arith_policy), "--repeats", "1"]
    argv += ["--gen-prompts", "4", "--max-new-tokens", "8", "--rl-prompts", "2"]
    argv += ["--rl-generations", "2"]
    assert main(argv) == 0
    rows = _table(capsys.readouterr().out)
    names = sorted(rows)
    assert len(names) == 2
    assert names[0].startswith("RL step, TRL GRPO (2 prompts x 2)")
    assert names[1].startswith("generation, sample() (4 prompts, <= 8 tokens)")
    for value, ratio in rows.values():
        assert math.isfinite(value) and value > 0
        assert ratio is not None and math.isfinite(ratio) and ratio > 0


def test_demo_rows_measure_a_child_process_peak_memory():
    touch = "b = bytearray(300 << 20); b[::4096] = b'x' * len(range(0, 300 << 20, 4096))"
    big = measure_process([sys.executable, "-c", touch])
    small = measure_process([sys.executable, "-c", "pass"])
    assert big.returncode == 0 and small.returncode == 0
    assert big.peak_mib > small.peak_mib + 250  # the 300 MiB it touched, whatever ran before
    assert big.peak_mib < 2000
    rows = demo_rows(big)
    assert [r.name for r in rows] == ["demo, end to end", "demo, peak memory (RSS)"]
    assert rows[0].ratio == rows[0].value / 600 and rows[1].value == big.peak_mib
    assert rows_ok(rows) and "| demo, end to end |" in format_table(rows)
    failed = measure_process([sys.executable, "-c", "raise SystemExit(3)"])
    assert failed.returncode == 3
