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


def test_every_step_is_checked_before_step_1_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runs = tmp_path / "runs"
    path = write(
        tmp_path,
        f"""\
        stages:
          - {{id: a, stage: pretrain, config: {QUICK}}}
          - {{id: b, stage: sft, config: {{model: "${{a}}", task: arithmetc}}}}
        """,
    )
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step b (sft): task='arithmetc'" in err[0], err
    assert not runs.exists()  # step a never ran
    with pytest.raises(ConfigError, match=r"step b \(sft\): model: unknown preset"):
        run_pipeline(
            load_pipeline(path, ["b.task=arithmetic", "b.model=smollm2-135m-instuct"]), root=runs
        )
    assert not runs.exists()


def test_references_are_placeholders_while_checking(tmp_path):
    from superalign.pipeline import check_pipeline

    text = """\
        stages:
          - {id: a, stage: pretrain}
          - {id: b, stage: sft, config: {model: "${a}", difficulties: [9]}}
        """
    with pytest.raises(ConfigError, match="step b .*no difficulty level 9"):
        check_pipeline(load_pipeline(write(tmp_path, text)))
    check_pipeline(load_pipeline(write(tmp_path, text), ["b.difficulties=[2]"]))


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages: []", "'stages' is empty"),
        ("stages: [{stage: pretrain, config: [1, 2]}]", "config must be a mapping"),
        ("stages: [{id: 'a b', stage: pretrain}]", "must be letters, digits"),
        (
            "stages:\n  - id: a\n    stage: pretrain\n    config: {steps: 1\n",
            r"p.yaml:\d+: invalid YAML",
        ),
        ("stages:\n  - id: a\n\tstage: pretrain\n", r"p.yaml:3: invalid YAML"),
    ],
)
def test_bad_pipelines_are_one_line_user_errors(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path)
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("superalign run: error: "), err
    assert not (tmp_path / "runs").exists()


def test_check_flag_checks_a_pipeline_without_running_it(tmp_path, capsys):
    path = write(tmp_path, f"stages: [{{id: a, stage: pretrain, config: {QUICK}}}]")
    assert main(["run", str(path), "--check", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "1 steps checked, nothing run" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_a_failed_step_skips_the_steps_that_need_it_when_asked(tmp_path, monkeypatch):
    import types

    import superalign.pipeline as pipeline

    text = f"""\
        stages:
          - {{id: a, stage: pretrain, config: {QUICK}}}
          - {{id: b, stage: sft, config: {{model: "${{a}}"}}}}
          - {{id: c, stage: pretrain, config: {QUICK[:-1]}, seed: 1}}}}
        """
    ran = []

    def fake_execute(name, cfg, **kw):
        ran.append(cfg.seed)
        if cfg.seed == 0:
            raise RuntimeError("not verified")
        return types.SimpleNamespace(dir=tmp_path / "c", reused=False)

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    steps = load_pipeline(write(tmp_path, text))
    with pytest.raises(RuntimeError, match="not verified"):  # by default a failure stops it
        run_pipeline(steps, root=tmp_path / "runs", log=lambda _: None)
    ran.clear()
    failed, lines = {}, []
    done = run_pipeline(steps, root=tmp_path / "runs", log=lines.append, failed=failed)
    assert list(done) == ["c"] and ran == [0, 1]  # b never ran: it needs a
    assert failed == {"a": "RuntimeError: not verified", "b": "needs a, which did not finish"}
    assert any("a FAILED: RuntimeError: not verified" in line for line in lines)
