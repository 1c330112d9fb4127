"""Pipelines: checked on load, run in order, reuse finished steps, resolve ${id} references."""

import json
import re
import textwrap
from pathlib import Path

import pytest

from superalign.cli import main
from superalign.config import ConfigError, from_dict
from superalign.pipeline import load_pipeline, run_pipeline
from superalign.stages import STAGES

QUICK = (
    "{steps: 10, corpus_size: 200, batch_size: 8, eval_n: 4, eval_difficulties: [1], threads: 1}"
)


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages: [{stage: pretrian}]", "unknown stage 'pretrian'. Did you mean 'pretrain'"),
        ("stages: [{stage: pretrain}, {stage: pretrain}]", "id 'pretrain' is used twice"),
        ("stages: [{stage: pretrain, extra: 1}]", "must be a mapping with 'stage'"),
        ("steps: []", "must hold a mapping with a list under 'stages'"),
        ("stages: []\nstagse: 1", "unknown top-level key"),
    ],
)
def test_bad_pipelines_fail_on_load(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write(tmp_path, text))


def test_bad_override_and_reference(tmp_path):
    path = write(tmp_path, f"stages: [{{id: a, stage: pretrain, config: {QUICK}}}]")
    with pytest.raises(ConfigError, match="<id>.<key>=value with id one of: a"):
        load_pipeline(path, ["b.steps=3"])
    bad_ref = write(tmp_path, "stages: [{id: a, stage: pretrain, config: {task: '${later}'}}]")
    with pytest.raises(ConfigError, match=r"refers to \$\{later\}, which is not an earlier step"):
        run_pipeline(load_pipeline(bad_ref), root=tmp_path / "runs")
    typo = write(tmp_path, "stages: [{id: a, stage: pretrain, config: {stesp: 3}}]")
    with pytest.raises(ConfigError, match="unknown config key 'a.stesp'.*Did you mean 'a.steps'"):
        run_pipeline(load_pipeline(typo), root=tmp_path / "runs")


def test_pipeline_runs_then_reuses_and_overrides_recompute(tmp_path, capsys):
    path = write(tmp_path, f"stages: [{{id: a, stage: pretrain, config: {QUICK}}}]")
    runs = str(tmp_path / "runs")
    assert main(["run", str(path), "--runs-dir", runs]) == 0
    first = capsys.readouterr().out
    assert "a finished" in first and "eval/accuracy/d1" in first
    assert main(["run", str(path), "--runs-dir", runs]) == 0
    assert "a reused" in capsys.readouterr().out
    assert main(["run", str(path), "a.seed=1", "--runs-dir", runs]) == 0
    assert "a finished" in capsys.readouterr().out


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parent.parent.glob("pipelines/*.yaml")), ids=lambda p: p.name
)
def test_shipped_pipelines_load_and_every_step_config_is_valid(path):
    steps = load_pipeline(path)
    ids = [s.id for s in steps]
    for step in steps:
        refs = re.findall(r"\$\{(\w+)\}", json.dumps(step.config))
        assert all(r in ids[: ids.index(step.id)] for r in refs), (step.id, refs)
        config = json.loads(re.sub(r"\$\{\w+\}", "runs/upstream", json.dumps(step.config)))
        cfg_cls, _ = STAGES[step.stage].load()
        from_dict(cfg_cls, config, prefix=f"{step.id}.")  # raises ConfigError when invalid
