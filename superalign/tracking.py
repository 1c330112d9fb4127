"""Experiment tracking: where :meth:`superalign.runs.Run.log` also sends a run's scalars.

``report_to`` (:data:`REPORT_TO`) is a run's choice, not part of its cache key: a tracker is
built on the run's first logged step and gets the same names as ``metrics.jsonl``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from superalign.config import ConfigError

if TYPE_CHECKING:
    from superalign.runs import Run

REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
"""Where :meth:`Run.log` sends scalars besides ``metrics.jsonl``."""


def check_report_to(report_to: str | None) -> str:
    """``report_to`` (None: ``$SUPERALIGN_REPORT_TO``, else ``"none"``), checked: a known choice
    whose package is installed, else :class:`ConfigError` naming what to install."""
    value = report_to or os.environ.get("SUPERALIGN_REPORT_TO") or "none"
    if value not in REPORT_TO:
        raise ConfigError(f"report_to must be one of {', '.join(REPORT_TO)}, not {value!r}")
    if value != "none" and importlib.util.find_spec(value) is None:
        raise ConfigError(f"report_to={value} needs the {value} package: pip install {value}")
    return value


class _TensorBoard:
    """Event files in ``<run>/tensorboard/``. A resumed run purges the steps after its
    checkpoint, as ``metrics.jsonl`` drops them."""

    def __init__(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if run.resumed_from is None else run.resumed_from + 1
        self.writer = SummaryWriter(str(run.path("tensorboard")), purge_step=purge)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    """A local trackio project ``superalign`` (no Space unless ``TRACKIO_SPACE_ID`` is set),
    one trackio run per run folder."""

    def __init__(self, run: Run) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project="superalign", name=run.dir.name, config=run.config, resume="allow")

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.trackio.log(dict(scalars), step=step)

    def close(self) -> None:
        self.trackio.finish()


class _WandB:
    """An offline W&B run in ``<run>/wandb/`` (``WANDB_MODE=offline`` unless already set;
    ``wandb sync`` uploads it later)."""

    def __init__(self, run: Run) -> None:
        os.environ.setdefault("WANDB_MODE", "offline")
        import wandb

        self.run = wandb.init(
            project="superalign", name=run.dir.name, dir=str(run.dir), config=run.config
        )

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS: dict[str, Callable[[Run], Any]] = {
    "tensorboard": _TensorBoard,
    "trackio": _Trackio,
    "wandb": _WandB,
}
"""``report_to`` -> a tracker built on a run's first logged step: ``log(step, scalars)``,
``close()``."""
