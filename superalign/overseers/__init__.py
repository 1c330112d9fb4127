"""Overseers: everything that judges an output. Each is scored against the task's gold grader."""

from superalign.overseers.base import (
    GoldOverseer,
    Overseer,
    OverseerAgreement,
    agreement_with_gold,
    auroc,
)

__all__ = ["GoldOverseer", "Overseer", "OverseerAgreement", "agreement_with_gold", "auroc"]
