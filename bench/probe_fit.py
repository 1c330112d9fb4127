"""Benchmark: the probe fits of ``interp`` and ``audit`` (:func:`superalign.validate.probes._fit`,
standardize + L2 logistic regression, its BLAS pools held to one thread) against the same fit
with the pools at ``--threads`` (default 2, what they had before), same data, same process.

The data is shaped like SmolLM2's cities probe at ``position=last2`` (``--rows`` 720 training
statements, ``--features`` 1,152: two tokens of 576), Gaussian with a planted direction, at the
strength that probe chose (C = 0.01). Target: the one-thread fit at most as slow as the
``--threads`` one (ratio <= 1). Prints the median over ``--repeats`` interleaved fits after one
warm-up each; a figure, not a timed assertion.

    .venv/bin/python bench/probe_fit.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from superalign.validate.probes import _fit

TARGET = 1.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", type=int, default=720)
    p.add_argument("--features", type=int, default=1152)
    p.add_argument("--c", type=float, default=0.01)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.rows, a.features))
    y = (x @ rng.normal(size=a.features) + rng.normal(scale=10.0, size=a.rows) > 0).astype(int)
    times: dict[int, list[float]] = {1: [], a.threads: []}
    for i in range(a.repeats + 1):
        for threads in times:
            t = time.perf_counter()
            _fit(x, y, a.c, 0, threads=threads)
            if i:  # the first round warms up
                times[threads].append(time.perf_counter() - t)
    one, many = statistics.median(times[1]), statistics.median(times[a.threads])
    print(f"probe fit: {a.rows} rows x {a.features} features, C={a.c}, median of {a.repeats}")
    print(f"{'BLAS threads':<16}{'seconds':>10}")
    print(f"{'1 (probes._fit)':<16}{one:>10.3f}")
    print(f"{a.threads:<16}{many:>10.3f}")
    print(f"ratio 1 / {a.threads} threads: {one / many:.2f} (target <= {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
