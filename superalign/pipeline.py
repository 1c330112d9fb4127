"""Pipelines: stages chained through their run folders, from one YAML file.

```yaml
# pipelines/example.yaml
stages:
  - id: policy                 # a name for this step, unique in the file
    stage: pretrain            # a registered stage (superalign/stages.py)
    config: {task: arithmetic, size: tiny}
  - id: tuned
    stage: sft
    config: {model: "${policy}", difficulties: [2]}   # ${id}: that step's run folder (quoted in flow style)
```

Before step 1 runs every step is checked (:func:`check_pipeline`): its config, and what
:func:`superalign.preflight.check_stage` checks (task, levels, step counts, model specs), with each
``${id}`` standing for the run folder that step will make. Steps run in order; each is an ordinary
stage run, so a finished step with the same config and
inputs is reused and a changed one recomputes (and so does everything that refers to it,
since the upstream folder's fingerprint joins their keys). Overrides address a step by id:
``superalign run pipelines/example.yaml policy.steps=500``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superalign.config import ConfigError, from_dict, read_yaml
from superalign.preflight import check_stage
from superalign.runs import StageResult
from superalign.stages import STAGES, execute

_REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")
_ID = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class Step:
    id: str
    stage: str
    config: dict[str, Any]


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> list[Step]:
    """Read and check a pipeline file; apply ``id.key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} does not exist")
    data = read_yaml(path) or {}
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ConfigError(f"{path} must hold a mapping with a list under 'stages'")
    unknown = set(data) - {"stages", "description"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}; use 'stages' (and 'description')"
        )
    if not data["stages"]:
        raise ConfigError(f"{path}: 'stages' is empty; a pipeline needs at least one step")
    steps: list[Step] = []
    for i, raw in enumerate(data["stages"]):
        where = f"{path} stages[{i}]"
        if not isinstance(raw, dict) or set(raw) - {"id", "stage", "config"} or "stage" not in raw:
            raise ConfigError(f"{where} must be a mapping with 'stage', optional 'id' and 'config'")
        stage = raw["stage"]
        if stage not in STAGES:
            close = difflib.get_close_matches(str(stage), STAGES, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Stages: {', '.join(STAGES)}."
            raise ConfigError(f"{where}: unknown stage '{stage}'.{hint}")
        step_id = str(raw.get("id", stage))
        if not _ID.fullmatch(step_id):
            raise ConfigError(f"{where}: id {step_id!r} must be letters, digits, '_' and '-'")
        if any(s.id == step_id for s in steps):
            raise ConfigError(f"{where}: id '{step_id}' is used twice; give each step its own id")
        config = raw.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{where}: config must be a mapping of config keys, not {config!r}")
        steps.append(Step(step_id, stage, dict(config)))
    for item in overrides:
        key, sep, value = item.partition("=")
        step_id, dot, field = key.partition(".")
        match = [s for s in steps if s.id == step_id]
        if not sep or not dot or not match:
            ids = ", ".join(s.id for s in steps)
            raise ConfigError(
                f"pipeline override {item!r} must look like <id>.<key>=value with id one of: {ids}"
            )
        node = match[0].config
        *parents, leaf = field.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {key}: {p} is not a group of keys")
        node[leaf] = value
    return steps


def run_pipeline(
    steps: list[Step],
    *,
    root: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    failed: dict[str, str] | None = None,
) -> dict[str, StageResult]:
    """Check every step (:func:`check_pipeline`), then run them in order, resolving ``${id}`` to
    earlier steps' run folders. A step that raises stops the pipeline, unless ``failed`` is given:
    then its error goes into ``failed`` (step id -> why), every step that names it (``${id}``) is
    skipped with a reason there too, and the others run. Returns the steps that finished."""
    check_pipeline(steps)
    done: dict[str, Path] = {}
    results: dict[str, StageResult] = {}
    for n, step in enumerate(steps, 1):
        needs = [ref for ref in _REF.findall(str(step.config)) if failed and ref in failed]
        if needs:
            failed[step.id] = f"needs {needs[0]}, which did not finish"
            log(f"[{n}/{len(steps)}] {step.id} skipped: {failed[step.id]}")
            continue
        config, inputs = _resolve(step, done)
        cfg_cls, _ = STAGES[step.stage].load()
        cfg = from_dict(cfg_cls, config, prefix=f"{step.id}.")
        log(f"[{n}/{len(steps)}] {step.id} ({step.stage}) ...")
        try:
            res = execute(step.stage, cfg, inputs=inputs, root=root, force=force)
        except Exception as e:
            if failed is None:
                raise
            failed[step.id] = f"{type(e).__name__}: {e}"
            log(f"[{n}/{len(steps)}] {step.id} FAILED: {failed[step.id]}")
            continue
        log(f"[{n}/{len(steps)}] {step.id} {'reused' if res.reused else 'finished'}: {res.dir}")
        done[step.id], results[step.id] = Path(res.dir), res
    return results


def check_pipeline(steps: list[Step]) -> None:
    """Raise :class:`ConfigError` for the first step that cannot run: a bad config value, a
    ``${id}`` that names no earlier step, or what :func:`superalign.preflight.check_stage` finds.
    Each ``${id}`` stands for the placeholder path ``runs/${id}``, not checked as a path."""
    if not steps:
        raise ConfigError("a pipeline needs at least one step")
    placeholders: dict[str, Path] = {}
    for step in steps:
        config, _ = _resolve(step, placeholders)
        cfg_cls, _ = STAGES[step.stage].load()
        cfg = from_dict(cfg_cls, config, prefix=f"{step.id}.")
        try:
            check_stage(step.stage, cfg, pending=[str(p) for p in placeholders.values()])
        except ConfigError as e:
            raise ConfigError(f"step {step.id} ({step.stage}): {e}") from None
        placeholders[step.id] = Path("runs", f"${{{step.id}}}")


def _resolve(step: Step, done: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Path]]:
    inputs: dict[str, Path] = {}

    def sub(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: sub(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        for ref in _REF.findall(value):
            if ref not in done:
                raise ConfigError(
                    f"{step.id}.{key} refers to ${{{ref}}}, which is not an earlier step"
                )
            inputs[key] = done[ref]
        return _REF.sub(lambda m: str(done[m.group(1)]), value)

    return {k: sub(v, k) for k, v in step.config.items()}, inputs
