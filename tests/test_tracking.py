"""Experiment tracking: ``report_to`` sends ``Run.log``'s scalars to TensorBoard (trackio, W&B),
under the names of ``metrics.jsonl``, for any stage, without changing the run folder."""

import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from superalign.config import ConfigError
from superalign.runs import Run, read_metrics, run_dir_for, run_stage


def events(run_dir):
    """``{name: [(step, value), ...]}`` read back from ``<run_dir>/tensorboard``."""
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {name: [(e.step, e.value) for e in acc.Scalars(name)] for name in acc.Tags()["scalars"]}


def logging_stage(run):
    for step in range(1, 4):
        run.log(step, {"loss/train": 1.0 / step, "eval/accuracy/d1": 0.25 * step, "note": "x"})
    return {"final": 1}


def test_tensorboard_gets_the_metrics_jsonl_scalars_and_the_key_is_unchanged(tmp_path):
    res = run_stage("toy", {"x": 1}, logging_stage, root=tmp_path, report_to="tensorboard")
    assert res.dir == run_dir_for("toy", {"x": 1}, root=tmp_path)  # report_to is not in the key
    got = events(res.dir)
    assert sorted(got) == ["eval/accuracy/d1", "loss/train"]  # numbers only, not step or time
    rows = read_metrics(res.dir)
    assert [s for s, _ in got["loss/train"]] == [r["step"] for r in rows] == [1, 2, 3]
    for (_, value), row in zip(got["loss/train"], rows):
        assert value == pytest.approx(row["loss/train"], rel=1e-6)
    assert run_stage("toy", {"x": 1}, logging_stage, root=tmp_path, report_to="none").reused


def test_no_tracker_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("SUPERALIGN_REPORT_TO", raising=False)
    res = run_stage("toy", {"x": 1}, logging_stage, root=tmp_path)
    assert not (res.dir / "tensorboard").exists()
    monkeypatch.setenv("SUPERALIGN_REPORT_TO", "tensorboard")
    res = run_stage("toy", {"x": 2}, logging_stage, root=tmp_path)
    assert events(res.dir)["loss/train"][0] == (1, 1.0)


def test_pretrain_from_the_cli_writes_event_files_into_its_run_folder(tmp_path, capsys):
    from superalign.cli import main

    args = ["steps=4", "log_every=2", "corpus_size=200", "batch_size=8", "eval_every=0"]
    args += ["eval_n=2", "eval_difficulties=[1]", "task_options.default_levels=[1]", "threads=1"]
    assert main(["pretrain", *args, "report_to=tensorboard", "--runs-dir", str(tmp_path)]) == 0
    (run_dir,) = tmp_path.glob("pretrain-*")
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    got = events(run_dir)
    losses = [(r["step"], r["loss/train"]) for r in read_metrics(run_dir) if "loss/train" in r]
    assert [s for s, _ in got["loss/train"]] == [s for s, _ in losses] == [2, 4]
    assert got["loss/train"][-1][1] == pytest.approx(losses[-1][1], rel=1e-6)
    assert "eval/accuracy/d1" in got and "optim/lr" in got
    # the same command with another report_to reuses the folder: report_to is not part of the key
    assert main(["pretrain", *args, "--report-to", "none", "--runs-dir", str(tmp_path)]) == 0
    assert "reused finished run" in capsys.readouterr().out


def test_trl_stages_reach_the_tracker_through_run_callback_under_our_names(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from superalign.train.trl_common import LOSS_AND_LR, run_callback, trainer_args

    run = Run(tmp_path, "sft", {}, report_to="tensorboard")
    args = trainer_args(run, seed=0, log_every=1, checkpoint_every=0)
    assert args["report_to"] == []  # TRL's own integrations stay off: no second copy
    state = TrainerState()
    callback = run_callback(run, LOSS_AND_LR)
    for step, loss in [(1, 2.5), (2, 2.0)]:
        state.global_step = step
        logs = {"loss": loss, "learning_rate": 1e-3, "grad_norm": 1.0}
        callback.on_log(TrainingArguments(str(tmp_path / "o")), state, TrainerControl(), logs=logs)
    run.close_tracker()
    got = events(tmp_path)
    assert sorted(got) == ["loss/train", "optim/lr"]
    assert got["loss/train"] == [(1, 2.5), (2, 2.0)]


def test_a_resumed_run_purges_the_steps_after_its_checkpoint(tmp_path):
    def stage(run, fail=False):
        state = run.load_checkpoint() or {"step": 0}
        for step in range(state["step"], 4):
            run.log(step + 1, {"acc/total": float(10 * (step + 1) + fail)})
            if step + 1 == 2:
                run.save_checkpoint({"step": 2}, 2)
            if fail and step + 1 == 3:
                raise RuntimeError("killed")
        return {}

    with pytest.raises(RuntimeError):
        run_stage(
            "toy", {}, lambda run: stage(run, fail=True), root=tmp_path, report_to="tensorboard"
        )
    res = run_stage("toy", {}, stage, root=tmp_path, report_to="tensorboard")
    assert events(res.dir)["acc/total"] == [(1, 11.0), (2, 21.0), (3, 30.0), (4, 40.0)]
    assert [r["step"] for r in read_metrics(res.dir)] == [1, 2, 3, 4]


def test_bad_report_to_values_are_user_errors_before_any_folder(tmp_path, monkeypatch, capsys):
    from superalign.cli import main

    with pytest.raises(ConfigError, match="report_to must be one of none, tensorboard"):
        run_stage("toy", {}, logging_stage, root=tmp_path, report_to="mlflow")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real_find_spec(n, *a)
    )
    with pytest.raises(ConfigError, match="needs the wandb package: pip install wandb"):
        run_stage("toy", {}, logging_stage, root=tmp_path, report_to="wandb")
    assert main(["pretrain", "report_to=wandb", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install wandb" in err
    assert list(tmp_path.iterdir()) == []


def fake_module(name, monkeypatch):
    """Install a stand-in package ``name`` that records its calls in ``module.calls``."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.calls = []
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def test_wandb_runs_offline_in_the_run_folder(tmp_path, monkeypatch):
    wandb = fake_module("wandb", monkeypatch)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    class FakeRun:
        def log(self, row, step):
            wandb.calls.append(("log", step, row))

        def finish(self):
            wandb.calls.append(("finish",))

    def init(**kwargs):
        wandb.calls.append(("init", kwargs, os.environ["WANDB_MODE"]))
        return FakeRun()

    wandb.init = init
    res = run_stage("toy", {"x": 1}, logging_stage, root=tmp_path, report_to="wandb")
    (_, kwargs, mode), *logs, finish = wandb.calls
    assert mode == "offline" and kwargs["dir"] == str(res.dir) and kwargs["config"] == {"x": 1}
    assert kwargs["name"] == res.dir.name
    assert logs[0] == ("log", 1, {"loss/train": 1.0, "eval/accuracy/d1": 0.25})
    assert len(logs) == 3 and finish == ("finish",)


def test_trackio_logs_locally_with_steps(tmp_path, monkeypatch):
    trackio = fake_module("trackio", monkeypatch)
    trackio.init = lambda **kw: trackio.calls.append(("init", kw))
    trackio.log = lambda row, step: trackio.calls.append(("log", step, row))
    trackio.finish = lambda: trackio.calls.append(("finish",))
    res = run_stage("toy", {"x": 1}, logging_stage, root=tmp_path, report_to="trackio")
    (_, kw), *logs, finish = trackio.calls
    assert kw["project"] == "superalign" and kw["name"] == res.dir.name and "space_id" not in kw
    assert [step for _, step, _ in logs] == [1, 2, 3] and finish == ("finish",)
