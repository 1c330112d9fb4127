import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from superalign.config import ConfigError
from superalign.runs import (
    MANIFEST,
    RunBusyError,
    RunCorruptedError,
    atomic_dir,
    atomic_write_json,
    fingerprint,
    is_done,
    read_metrics,
    run_dir_for,
    run_stage,
)


def counting_stage(calls):
    def fn(run):
        calls.append(run.dir)
        for step in range(3):
            run.log(step, {"loss/train": 1.0 / (step + 1)})
        (run.path("artifact.txt")).write_text("hello")
        return {"final": 42}

    return fn


def test_reuse_same_config_new_folder_for_changed_config_and_force(tmp_path):
    calls = []
    a = run_stage("toy", {"lr": 0.1, "seed": 0}, counting_stage(calls), root=tmp_path)
    assert not a.reused and a.summary["final"] == 42 and len(calls) == 1
    assert json.loads((a.dir / "config.json").read_text())["config"] == {"lr": 0.1, "seed": 0}
    assert [r["step"] for r in read_metrics(a.dir)] == [0, 1, 2]

    again = run_stage("toy", {"seed": 0, "lr": 0.1}, counting_stage(calls), root=tmp_path)
    assert again.reused and again.dir == a.dir and len(calls) == 1  # key order does not matter

    changed = run_stage("toy", {"lr": 0.2, "seed": 0}, counting_stage(calls), root=tmp_path)
    assert changed.dir != a.dir and len(calls) == 2
    assert run_dir_for("toy", {"lr": 0.2, "seed": 0}, root=tmp_path) == changed.dir

    forced = run_stage(
        "toy", {"lr": 0.1, "seed": 0}, counting_stage(calls), root=tmp_path, force=True
    )
    assert not forced.reused and forced.dir == a.dir and len(calls) == 3
    assert [r["step"] for r in read_metrics(a.dir)] == [0, 1, 2]  # not appended to the old log


def test_upstream_input_fingerprint_joins_the_key(tmp_path):
    up = tmp_path / "upstream"
    up.mkdir()
    (up / "weights.bin").write_bytes(b"v1")
    first = run_stage(
        "toy", {"x": 1}, counting_stage([]), inputs={"model": up}, root=tmp_path / "runs"
    )
    recorded = json.loads((first.dir / "config.json").read_text())
    assert recorded["inputs"]["model"]["fingerprint"] == fingerprint(up)
    (up / "weights.bin").write_bytes(b"v2")  # same config, different upstream artifact
    second = run_stage(
        "toy", {"x": 1}, counting_stage([]), inputs={"model": up}, root=tmp_path / "runs"
    )
    assert second.dir != first.dir and not second.reused


def test_failed_stage_leaves_no_summary_and_next_run_restarts_clean(tmp_path):
    def boom(run):
        run.log(0, {"loss/train": 1.0})
        (run.path("partial.txt")).write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage("toy", {"x": 1}, boom, root=tmp_path)
    d = run_dir_for("toy", {"x": 1}, root=tmp_path)
    assert not is_done(d) and (d / "partial.txt").exists()
    res = run_stage("toy", {"x": 1}, counting_stage([]), root=tmp_path)
    assert not res.reused and not (d / "partial.txt").exists()  # no checkpoint: restarted clean
    assert [r["step"] for r in read_metrics(d)] == [0, 1, 2]


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    with atomic_dir(tmp_path / "model") as tmp:  # replaces the folder whole
        (tmp / "v.bin").write_bytes(b"2")
    with pytest.raises(ValueError), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "broken.bin").write_bytes(b"3")
        raise ValueError("fail midway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["v.bin"]


def test_torn_metrics_line_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "a": 1}\n{"step": 1, "a"')
    assert read_metrics(tmp_path) == [{"step": 0, "a": 1}]


SLOW_STAGE = textwrap.dedent(
    """
    import sys, time
    from superalign.runs import run_stage

    def stage(run):
        state = run.load_checkpoint() or {"step": 0, "total": 0}
        for step in range(state["step"], 8):
            state = {"step": step + 1, "total": state["total"] + step}
            run.log(step + 1, {"acc/total": state["total"]})
            run.save_checkpoint(state, step + 1)
            time.sleep(float(sys.argv[2]))
        return {"total": state["total"]}

    run_stage("slow", {"n": 8}, stage, root=sys.argv[1])
    """
)


def _start_slow_stage(tmp_path):
    """Start SLOW_STAGE in a process; return it, the run folder, the command and env once it
    has saved its first checkpoint."""
    script = tmp_path / "stage.py"
    script.write_text(SLOW_STAGE)
    root = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(root)]
    proc = subprocess.Popen([*cmd, "0.5"], env=env)
    d = run_dir_for("slow", {"n": 8}, root=root)
    deadline = time.time() + 120
    while not (d / "checkpoint" / "step.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the stage never checkpointed"
        time.sleep(0.1)
    return proc, d, cmd, env


def test_kill_during_a_run_then_resume(tmp_path):
    proc, d, cmd, env = _start_slow_stage(tmp_path)
    time.sleep(0.6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not is_done(d), "a killed run must not leave a summary"
    killed_at = json.loads((d / "checkpoint" / "step.json").read_text())["step"]
    assert 1 <= killed_at < 8

    done = subprocess.run([*cmd, "0"], env=env, timeout=120)
    assert done.returncode == 0 and is_done(d)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["total"] == sum(range(8))  # resumed state, nothing counted twice
    assert summary["resumed_from_step"] >= killed_at
    steps = [r["step"] for r in read_metrics(d)]
    assert steps == list(range(1, 9))  # no duplicated or missing lines across the kill
    assert not (d / "checkpoint").exists()


def test_second_process_is_refused_while_one_runs(tmp_path):
    first, d, _, _ = _start_slow_stage(tmp_path)
    try:
        with pytest.raises(RunBusyError, match=f"another process \\(pid {first.pid}\\)"):
            run_stage("slow", {"n": 8}, lambda run: {}, root=d.parent)
    finally:
        first.kill()
        first.wait()
    assert issubclass(RunBusyError, ConfigError)  # so the CLI prints one line and exits 2


def test_cli_second_identical_command_gets_one_line_and_exit_2(tmp_path, capsys):
    import fcntl

    from superalign.cli import main
    from superalign.config import load_config, to_dict
    from superalign.models.pretrain import PretrainConfig

    args = ["steps=1", "corpus_size=50"]
    d = run_dir_for("pretrain", to_dict(load_config(PretrainConfig, None, args)), root=tmp_path)
    d.mkdir(parents=True)
    with open(d / ".lock", "a+") as held:  # what a running first command holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        assert main(["pretrain", *args, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("superalign pretrain: error: another process (pid 4242)")
    assert "wait for it to finish" in err and "kill 4242" in err
    assert not is_done(d) and sorted(p.name for p in d.iterdir()) == [".lock"]


def model_stage(calls, size=4096):
    """A stage that saves a safetensors "model" of ``size`` bytes of weights and a table."""

    def fn(run):
        import torch
        from safetensors.torch import save_file

        calls.append(run.dir)
        with atomic_dir(run.path("model")) as tmp:
            save_file(
                {"w": torch.arange(size // 4, dtype=torch.float32)}, tmp / "model.safetensors"
            )
        run.path("table.csv").write_text("a,b\n1,2\n")
        run.log(0, {"loss/train": 1.0})
        return {"final": 1}

    return fn


def test_finished_run_records_a_manifest_before_its_summary(tmp_path):
    res = run_stage("toy", {"x": 1}, model_stage([]), root=tmp_path)
    files = json.loads((res.dir / MANIFEST).read_text())["files"]
    assert sorted(files) == ["config.json", "metrics.jsonl", "model/model.safetensors", "table.csv"]
    weights = res.dir / "model" / "model.safetensors"
    assert files["model/model.safetensors"]["size"] == weights.stat().st_size
    assert (
        files["model/model.safetensors"]["sha256"]
        == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    # summary.json stays the done marker, written last
    assert (res.dir / "summary.json").stat().st_mtime_ns >= (res.dir / MANIFEST).stat().st_mtime_ns


def test_truncated_weights_are_recomputed_not_reused(tmp_path, capsys):
    calls = []
    first = run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path)
    weights = first.dir / "model" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(1000)
    capsys.readouterr()
    again = run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path)
    assert not again.reused and again.dir == first.dir and len(calls) == 2
    err = capsys.readouterr().err
    assert err == (
        f"superalign: run {first.dir} is corrupted "
        f"(model/model.safetensors: size 1000, expected {size}); recomputing\n"
    )
    assert weights.stat().st_size == size
    assert run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path).reused  # intact again


def test_weights_changed_in_place_are_caught_by_hash_other_files_by_size(tmp_path, capsys):
    calls = []
    d = run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path).dir
    weights = d / "model" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # same size, different bytes
    weights.write_bytes(bytes(blob))
    assert not run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path).reused
    assert "model/model.safetensors: sha256 differs" in capsys.readouterr().err
    (d / "table.csv").write_text("a,b\n1,3\n")  # same size: tables are checked by size only
    assert run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path).reused
    (d / "table.csv").unlink()
    assert not run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path).reused
    assert "(table.csv: missing); recomputing" in capsys.readouterr().err
    assert len(calls) == 3


def test_garbage_summary_is_recomputed(tmp_path, capsys):
    calls = []
    d = run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path).dir
    (d / "summary.json").write_text("{not json")
    res = run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path)
    assert not res.reused and res.summary["final"] == 1 and len(calls) == 2
    assert "summary.json is not valid JSON); recomputing" in capsys.readouterr().err
    assert json.loads((d / "summary.json").read_text())["final"] == 1


def test_run_without_manifest_from_before_manifests_is_still_reused(tmp_path):
    calls = []
    d = run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path).dir
    (d / MANIFEST).unlink()
    with open(d / "model" / "model.safetensors", "r+b") as f:
        f.truncate(1000)  # nothing to check it against: accepted, as before
    assert run_stage("toy", {"x": 1}, model_stage(calls), root=tmp_path).reused
    assert len(calls) == 1


def test_corrupted_upstream_run_is_refused_with_the_command_that_fixes_it(tmp_path):
    up = run_stage("toy", {"x": 1, "opts": {"levels": [1, 2]}}, model_stage([]), root=tmp_path)
    with open(up.dir / "model" / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(RunCorruptedError) as err:
        run_stage("down", {"y": 1}, lambda run: {}, inputs={"model": up.dir}, root=tmp_path)
    msg = str(err.value)
    assert f"input model: run {up.dir} is corrupted (model/model.safetensors: size 1000" in msg
    assert f"superalign toy --force --runs-dir {tmp_path} 'opts.levels=[1,2]' x=1" in msg
    assert (
        isinstance(err.value, ConfigError)
        and not run_dir_for("down", {"y": 1}, root=tmp_path).exists()
    )


def test_fix_command_rebuilds_the_same_config(tmp_path):
    import shlex

    from superalign.config import load_config, to_dict
    from superalign.models.pretrain import PretrainConfig
    from superalign.runs import fix_command

    cfg = load_config(PretrainConfig, None, ["steps=7", "eval_difficulties=[1,2]", "lr=0.0003"])
    atomic_write_json(
        tmp_path / "pretrain-x" / "config.json", {"stage": "pretrain", "config": to_dict(cfg)}
    )
    argv = shlex.split(fix_command(tmp_path / "pretrain-x"))
    assert argv[:5] == ["superalign", "pretrain", "--force", "--runs-dir", str(tmp_path)]
    assert to_dict(load_config(PretrainConfig, None, argv[5:])) == to_dict(cfg)


def checkpointing_stage(fail_at=None):
    """Counts to 4, checkpointing each step; raises after checkpointing step ``fail_at``."""

    def fn(run):
        state = run.load_checkpoint() or {"step": 0, "total": 0}
        fn.started_from = state["step"]
        for step in range(state["step"], 4):
            state = {"step": step + 1, "total": state["total"] + step}
            run.log(step + 1, {"acc/total": state["total"]})
            run.save_checkpoint(state, step + 1)
            if step + 1 == fail_at:
                raise RuntimeError("killed")
        return {"total": state["total"]}

    return fn


def test_truncated_checkpoint_is_discarded_and_the_run_restarts_clean(tmp_path, capsys):
    with pytest.raises(RuntimeError):
        run_stage("toy", {"x": 1}, checkpointing_stage(fail_at=2), root=tmp_path)
    d = run_dir_for("toy", {"x": 1}, root=tmp_path)
    state = d / "checkpoint" / "state.pt"
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    fn = checkpointing_stage()
    res = run_stage("toy", {"x": 1}, fn, root=tmp_path)
    assert (
        fn.started_from == 0
        and res.summary["total"] == 6
        and "resumed_from_step" not in res.summary
    )
    assert [r["step"] for r in read_metrics(d)] == [1, 2, 3, 4]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "damaged checkpoint (checkpoint/state.pt: truncated or not a torch file)" in err


def test_unloadable_checkpoint_that_looks_intact_also_restarts_clean(tmp_path, capsys):
    import zipfile

    with pytest.raises(RuntimeError):
        run_stage("toy", {"x": 1}, checkpointing_stage(fail_at=2), root=tmp_path)
    d = run_dir_for("toy", {"x": 1}, root=tmp_path)
    with zipfile.ZipFile(d / "checkpoint" / "state.pt", "w") as z:  # a sound zip, not torch's
        z.writestr("hello.txt", "not a checkpoint")
    fn = checkpointing_stage()
    res = run_stage("toy", {"x": 1}, fn, root=tmp_path)
    assert fn.started_from == 0 and res.summary["total"] == 6
    assert [r["step"] for r in read_metrics(d)] == [1, 2, 3, 4]
    assert "checkpoint unreadable" in capsys.readouterr().err


def test_resume_cleans_leftovers_and_a_failed_run_never_looks_finished(tmp_path):
    with pytest.raises(RuntimeError):
        run_stage("toy", {"x": 1}, checkpointing_stage(fail_at=2), root=tmp_path)
    d = run_dir_for("toy", {"x": 1}, root=tmp_path)
    assert not is_done(d) and not (d / MANIFEST).exists()
    (d / ".model.tmp-999").mkdir()  # what a process killed inside atomic_dir leaves
    (d / ".summary.json.tmp-999").write_text("{")
    fn = checkpointing_stage()
    res = run_stage("toy", {"x": 1}, fn, root=tmp_path)
    assert fn.started_from == 2 and res.summary["resumed_from_step"] == 2
    assert not list(d.glob(".*tmp-*"))


def test_lookup_walks_nested_summaries_and_lists():
    from superalign.runs import lookup

    summary = {"results": {"assisted": {"all": {"accuracy": 0.94}}}, "kl/ref_high": 0.2}
    summary["table"] = [{"g": 0.5}, {"g": 0.9}]
    assert lookup(summary, "results.assisted.all.accuracy") == 0.94
    assert lookup(summary, "kl/ref_high") == 0.2
    assert lookup(summary, "table.-1.g") == 0.9
    assert lookup(summary, "results.debate.all.accuracy", None) is None
    with pytest.raises(KeyError):
        lookup(summary, "table.5.g")


def test_checkpoint_problem_checks_trl_style_checkpoints_without_unpickling(tmp_path):
    import torch
    from safetensors.torch import save_file

    from superalign.runs import checkpoint_problem

    ckpt = tmp_path / "checkpoint"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    atomic_write_json(ckpt / "step.json", {"step": 2})
    save_file({"w": torch.ones(64)}, ckpt / "checkpoint-2" / "model.safetensors")
    torch.save({"state": torch.ones(64)}, ckpt / "checkpoint-2" / "optimizer.pt")
    atomic_write_json(ckpt / "checkpoint-2" / "trainer_state.json", {"global_step": 2})
    assert checkpoint_problem(ckpt) is None
    weights = ckpt / "checkpoint-2" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-10])
    assert checkpoint_problem(ckpt) == (
        "checkpoint/checkpoint-2/model.safetensors: truncated or not a safetensors file"
    )
    weights.write_bytes(intact)
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text('{"global_')
    assert checkpoint_problem(ckpt) == "checkpoint/checkpoint-2/trainer_state.json: not valid JSON"
    (ckpt / "step.json").write_text("garbage")
    assert checkpoint_problem(ckpt) == "checkpoint/step.json does not hold a step"
