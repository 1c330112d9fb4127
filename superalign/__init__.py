"""superalign: the alignment loop of the superalignment research programme, end to end,
measured against ground truth at every step."""

__version__ = "0.1.0"
