"""Shared fixtures: one small pretrained arithmetic policy for every training-stage test."""

import pytest
import torch

from superalign.config import load_config
from superalign.models.pretrain import PretrainConfig
from superalign.stages import execute

POLICY = [
    "corpus_size=4000",
    "steps=900",
    "batch_size=32",
    "warmup_steps=20",
    "eval_n=100",
    "eval_difficulties=[1,2]",
    "task_options.default_levels=[1]",
    "threads=1",
]
"""A tiny model pretrained on one-step problems only: about 0.68 greedy held-out gold accuracy
at difficulty 1 and 0.01 at difficulty 2 (measured, seed 0), so training stages have room to
move gold both ways. Takes about 40 s on one CPU thread."""


@pytest.fixture(scope="session")
def arith_policy(tmp_path_factory):
    """The finished ``pretrain`` run folder of :data:`POLICY` (a ``load_model`` spec)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("policy-runs")
    return execute("pretrain", load_config(PretrainConfig, None, POLICY), root=root).dir
