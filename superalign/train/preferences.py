"""Stage ``preferences``: preference pairs with gold labels, the input of reward models and DPO.

File format (the contract between stages): ``preferences.jsonl`` in the run folder, one JSON
object per line with

- ``prompt``, ``chosen``, ``rejected``: strings (completions exclude the prompt);
- ``split``: ``"train"`` or ``"test"`` (test pairs come from held-out prompts only);
- ``p_chosen``: the labelling overseer's probability that ``chosen`` is better (1.0 for data);
- ``gold_chosen``, ``gold_rejected``: gold scores of the two completions (``null`` when the
  task has no gold grader for them).

Read it with :func:`read_preferences`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = "preferences.jsonl"
FIELDS = ("prompt", "chosen", "rejected", "split", "p_chosen", "gold_chosen", "gold_rejected")


def read_preferences(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The pairs in ``run_dir/preferences.jsonl`` (``run_dir`` may also be the file itself),
    optionally only one ``split``."""
    path = Path(run_dir)
    path = path / FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"no {FILE} at {path}: pass a finished preferences run folder (superalign preferences)"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path} line {i + 1} lacks fields {missing}; expected {FIELDS}")
    return [r for r in rows if split is None or r["split"] == split]
