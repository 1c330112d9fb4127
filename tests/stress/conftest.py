"""Fixtures shared by the organism and audit tests."""

import pytest

from superalign.config import load_config
from superalign.stages import execute
from superalign.stress.organisms import OrganismConfig

BACKDOOR = [
    "kind=backdoor",
    "seed=0",
    "implant_steps=200",
    "safety_sft_steps=20",
    "safety_rl_steps=4",
    "eval_n=32",
    "threads=1",
]
"""Seed 0 draws the trigger ``ebna`` and the behaviour ``A: 7`` (see ``draw_secret``)."""


@pytest.fixture(scope="session")
def backdoor(arith_policy, tmp_path_factory):
    """A backdoor organism and its clean control (finished ``organism`` runs), built once."""
    root = tmp_path_factory.mktemp("organisms")
    return tuple(
        execute(
            "organism", load_config(OrganismConfig, None, [f"model={arith_policy}", *a]), root=root
        )
        for a in (BACKDOOR, [*BACKDOOR, "control=true"])
    )
