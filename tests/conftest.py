"""Shared fixtures: one small pretrained arithmetic policy for every training-stage test, and the
seed and thread count every outcome test runs with.

Outcome tests (``@pytest.mark.outcome``: training moved gold, an organism fires, a detector
separates, an overseer beats another) take their base seed from ``SUPERALIGN_TEST_SEED`` (default
0) through the ``test_seed`` fixture, and run with ``OMP_NUM_THREADS`` torch threads (default 1).
The marked set must pass for seeds 0, 1 and 2 with 1 and with 2 threads; each margin is set from
the spread observed over those six runs, written in a comment beside it::

    SUPERALIGN_TEST_SEED=2 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -m outcome tests
"""

import os

# organisms draw secrets from the seed in tests, as measured (never for a blind game)
os.environ.setdefault("SUPERALIGN_DETERMINISTIC_SECRETS", "1")
import pytest
import torch

from superalign.config import load_config
from superalign.models.pretrain import PretrainConfig
from superalign.stages import execute

TEST_SEED = int(os.environ.get("SUPERALIGN_TEST_SEED") or 0)
"""Base seed of every outcome test (and of the shared policy below)."""
TEST_THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch CPU threads for the tests: float rounding, and so training, differs between 1 and 2."""

POLICY = [
    "corpus_size=4000",
    "steps=1500",
    "decay_steps=900",
    "lr=1e-3",
    "batch_size=64",
    "warmup_steps=20",
    "eval_n=100",
    "eval_every=25",
    "eval_difficulties=[1]",
    "stop_at_accuracy=0.7",
    "task_options.default_levels=[1]",
    f"threads={TEST_THREADS}",
    f"seed={TEST_SEED}",
]
"""A tiny model pretrained on one-step problems only, stopped once it is right on 70% of 100
training-split problems (greedy; ``stop_at_accuracy``), so training stages have room to move gold
both ways whatever the seed. At lr 1e-3 (cosine to 1e-4 by step 900, then flat to the 1,500 cap)
the skill rises steadily; measured stop step and held-out accuracy, seeds 0 / 1 / 2:
1 thread 575, 0.72 / 875, 0.75 / 625, 0.66; 2 threads 450, 0.68 / 825, 0.80 / 625, 0.68; about
60 s each. The earlier recipes did not hold: a fixed 900 steps of 32 at lr 3e-3 gave 0.75 / 0.41 /
0.14, and stopping at 70% with lr 3e-3 and a 900-step cap worked with 1 thread but not with 2
(seed 0 had reached only 0.48 at the cap); see docs/stages/pretrain.md, "Over seeds"."""


@pytest.fixture(scope="session")
def arith_policy(tmp_path_factory):
    """The finished ``pretrain`` run folder of :data:`POLICY` (a ``load_model`` spec)."""
    torch.set_num_threads(TEST_THREADS)
    root = tmp_path_factory.mktemp("policy-runs")
    return execute("pretrain", load_config(PretrainConfig, None, POLICY), root=root).dir


@pytest.fixture(scope="session")
def test_seed() -> int:
    """``SUPERALIGN_TEST_SEED`` (default 0): the base seed an outcome test offsets its seeds by."""
    return TEST_SEED
