"""Overseers: everything that judges an output. Each is scored against the task's gold grader."""

from superalign.overseers.base import (
    GoldOverseer,
    Overseer,
    OverseerAgreement,
    agreement_with_gold,
    auroc,
)
from superalign.overseers.build import OVERSEERS, build_overseer
from superalign.overseers.raters import SimulatedRater

__all__ = [
    "OVERSEERS",
    "GoldOverseer",
    "Overseer",
    "OverseerAgreement",
    "SimulatedRater",
    "agreement_with_gold",
    "auroc",
    "build_overseer",
]
