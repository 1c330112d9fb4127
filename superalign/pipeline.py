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

Steps run in order; each is an ordinary stage run, so a finished step with the same config and
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

import yaml

from superalign.config import ConfigError, from_dict
from superalign.runs import StageResult
from superalign.stages import STAGES, execute

_REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")


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
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ConfigError(f"{path} must hold a mapping with a list under 'stages'")
    unknown = set(data) - {"stages", "description"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}; use 'stages' (and 'description')"
        )
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
        if any(s.id == step_id for s in steps):
            raise ConfigError(f"{where}: id '{step_id}' is used twice; give each step its own id")
        steps.append(Step(step_id, stage, dict(raw.get("config") or {})))
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
        node[leaf] = value
    return steps


def run_pipeline(
    steps: list[Step],
    *,
    root: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, StageResult]:
    """Run the steps in order, resolving ``${id}`` to earlier steps' run folders."""
    done: dict[str, StageResult] = {}
    for n, step in enumerate(steps, 1):
        config, inputs = _resolve(step, done)
        cfg_cls, _ = STAGES[step.stage].load()
        cfg = from_dict(cfg_cls, config, prefix=f"{step.id}.")
        log(f"[{n}/{len(steps)}] {step.id} ({step.stage}) ...")
        res = execute(step.stage, cfg, inputs=inputs, root=root, force=force)
        log(f"[{n}/{len(steps)}] {step.id} {'reused' if res.reused else 'finished'}: {res.dir}")
        done[step.id] = res
    return done


def _resolve(step: Step, done: dict[str, StageResult]) -> tuple[dict[str, Any], dict[str, Path]]:
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
            inputs[key] = done[ref].dir
        return _REF.sub(lambda m: str(done[m.group(1)].dir), value)

    return {k: sub(v, k) for k, v in step.config.items()}, inputs
