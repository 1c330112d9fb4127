"""Check a stage's config against the world before its run folder exists.

A config's ``__post_init__`` checks what the config alone can tell (ranges, choices, required
fields). :func:`check_stage` checks the rest, for every stage alike, driven by field names:

- ``task`` and ``task_options``: the family and sub-task exist and the options are the family's
  own, of the right types (the task is built, as the stage will build it);
- ``difficulties``, ``eval_difficulties``, ``stop_difficulties``, ``easy``, ``hard`` and
  ``difficulty``: levels of that task (of ``arithmetic`` for a stage without a ``task`` field;
  a ``difficulty`` whose default is 0 may stay 0, "the task's default mix");
- ``steps`` and every ``*_steps`` field: not negative;
- ``overseer`` (with ``overseer_options``): a registered overseer taking those options, or an
  existing reward_model run folder;
- the other fields in ``STAGES[name].inputs``: a value that is plainly a path (absolute, ``./``,
  ``../`` or ``~``) exists (other strings there may be names, such as a metric); in the
  model-spec fields (:data:`MODEL_FIELDS`) every value resolves as ``load_model`` would resolve
  it: an existing model, run folder or ``.gguf`` file, a known preset, or a hub id that is in
  the local Hugging Face cache or that the hub may serve (``HF_HUB_OFFLINE`` unset and the hub
  reachable).

Every failure raises :class:`~superalign.config.ConfigError` naming the field and the fix, so
the CLI prints one ``error:`` line and exits 2. :func:`superalign.stages.execute` calls
:func:`check_stage` before it creates the run folder; a pipeline calls it for every step before
step 1 runs, passing its ``${id}`` placeholders as ``pending`` (values that will name run
folders once earlier steps have run, and so are not checked as paths yet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from superalign.config import ConfigError

MODEL_FIELDS = frozenset(
    {
        "model",
        "reference",
        "policy",
        "policies",
        "target",
        "attacker",
        "candidate",
        "safe",
        "judge",
        "sft_easy",
        "sft_hard",
        "bon_model",
    }
)
"""Input fields whose values are ``load_model`` specs (an OpenAI-compatible ``http(s)://`` URL
is accepted where a stage takes one, e.g. a judge)."""

LEVEL_FIELDS = ("difficulties", "eval_difficulties", "stop_difficulties", "easy", "hard")
"""List fields whose entries are difficulty levels of the stage's task."""


def check_stage(name: str, cfg: Any, pending: Collection[str] = ()) -> None:
    """Raise :class:`ConfigError` if stage ``name`` cannot run with ``cfg`` (see the module
    docstring). A string containing one of ``pending`` is a placeholder, not checked as a path."""
    from superalign.stages import STAGES

    _check_steps(cfg)
    task = _check_task(cfg)
    if task is not None:
        _check_levels(cfg, task)
    inputs = [(f, *kv) for f in STAGES[name].inputs for kv in _strings(f, getattr(cfg, f, None))]
    inputs = [(f, k, v) for f, k, v in inputs if v and not any(p in v for p in pending)]
    for field, key, value in inputs:  # names and paths first: they cost nothing
        if field == "overseer":
            _check_overseer(key, value, getattr(cfg, "overseer_options", {}))
        elif field not in MODEL_FIELDS:
            _check_path(key, value)
    for field, key, value in inputs:
        if field in MODEL_FIELDS:
            _check_model_spec(key, value)


def _check_steps(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if (f.name == "steps" or f.name.endswith("_steps")) and isinstance(value, int):
            if value < 0:
                raise ConfigError(f"{f.name} must be at least 0, not {value}")


def _check_task(cfg: Any) -> Any:
    """The task ``cfg`` names, built as its stage builds it; None for a stage without one."""
    from superalign.tasks import get_task

    options = getattr(cfg, "task_options", {})
    if getattr(cfg, "source", None) == "hhh_alignment":  # preferences read BIG-bench HHH pairs
        spec, options, levels = "bigbench", {"subtask": "hhh_alignment", **options}, False
    elif hasattr(cfg, "task"):
        spec, levels = cfg.task, True
    elif any(hasattr(cfg, f) for f in (*LEVEL_FIELDS, "difficulty")):
        spec, options, levels = "arithmetic", {}, True  # critic, oversight, audit: arithmetic
    else:
        return None
    try:
        task = get_task(spec, **options)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"task={spec!r}: {e}") from None
    return task if levels else None


def _check_levels(cfg: Any, task: Any) -> None:
    levels = tuple(getattr(task, "difficulties", ()))
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    checks = [(name, getattr(cfg, name)) for name in LEVEL_FIELDS if name in fields]
    if "difficulty" in fields:
        zero_ok = fields["difficulty"].default == 0  # 0 means "the task's default mix"
        if not (zero_ok and cfg.difficulty == 0):
            checks.append(("difficulty", [cfg.difficulty]))
    for name, values in checks:
        bad = [v for v in values if v not in levels]
        if bad:
            raise ConfigError(
                f"{name}: {task.name} has no difficulty level {', '.join(map(str, bad))}; "
                f"its levels are {', '.join(map(str, levels))}"
            )


def _check_model_spec(key: str, value: str) -> None:
    from superalign.models.load import ModelLoadError, check_spec

    if value.startswith(("http://", "https://")):
        return
    try:
        check_spec(value)
    except ModelLoadError as e:
        raise ConfigError(f"{key}: {e}") from None


def _check_overseer(key: str, spec: str, options: Mapping[str, Any]) -> None:
    """``spec`` names an overseer (or is an existing reward_model run folder) that takes
    ``options``, as :func:`superalign.overseers.build.build_overseer` will require."""
    from pathlib import Path

    from superalign.overseers.build import OVERSEERS, _parameters, _resolve

    if spec not in OVERSEERS:
        if not Path(spec).expanduser().exists():
            raise ConfigError(
                f"{key}: overseer {spec!r} is neither one of {', '.join(sorted(OVERSEERS))} nor "
                "an existing path (a reward_model run folder)"
            )
        spec = "reward_model"
    accepted = _parameters(_resolve(OVERSEERS[spec])) - {"task", "examples"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"overseer_options: {unknown[0]!r} is not an option of overseer {spec!r}; "
            f"valid options: {', '.join(sorted(accepted))}"
        )


def _check_path(key: str, value: str) -> None:
    """A non-model input that is plainly a path (absolute, ``./``, ``../`` or ``~``) must exist.
    Other strings are left alone: inputs hold names too, such as a gate audit's metric
    ``eval/accuracy/d1``, which :func:`~superalign.models.load.looks_local` would take for a
    path."""
    from pathlib import Path

    path = Path(value).expanduser()
    if value.startswith(("/", "./", "../", "~")) and not path.exists():
        raise ConfigError(f"{key}: no such file or folder: {value!r} ({path.absolute()})")


def _strings(key: str, value: Any) -> Iterator[tuple[str, str]]:
    """Every string in ``value`` (searched inside lists and mappings) with its dotted place."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(f"{key}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(f"{key}.{i}", v)
