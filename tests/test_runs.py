import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from superalign.runs import (
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
        with pytest.raises(RuntimeError, match="another process"):
            run_stage("slow", {"n": 8}, lambda run: {}, root=d.parent)
    finally:
        first.kill()
        first.wait()


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
