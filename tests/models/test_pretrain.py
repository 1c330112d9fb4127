"""End-to-end: the pretrain stage trains, evaluates on held-out gold, saves, and resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from superalign.config import load_config, to_dict
from superalign.models.pretrain import PretrainConfig, lr_at
from superalign.models.sampling import sample
from superalign.runs import is_done, read_metrics, run_dir_for
from superalign.stages import execute
from superalign.tasks import get_task
from superalign.tasks.arithmetic import parse_answer, parse_steps

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the outcome run below, as tests/conftest.py's TEST_THREADS."""
SMALL = [
    "corpus_size=3000",
    "steps=150",
    "batch_size=32",
    "warmup_steps=20",
    "eval_every=0",
    "eval_n=32",
    "eval_difficulties=[1]",
    "task_options.default_levels=[1]",
    "threads=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(PretrainConfig, None, [*SMALL, f"threads={THREADS}", f"seed={test_seed}"])
    return execute("pretrain", cfg, root=root), cfg, root


@pytest.mark.outcome
def test_loss_falls_and_the_model_learns_the_solution_format(trained, test_seed):
    res, cfg, _ = trained
    s = res.summary
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.30, 0.31, 0.31x | 0.30, 0.30, 0.31x
    assert s["loss/train_final"] < 0.5 * s["loss/train_first"]
    assert 0.0 <= s["eval/accuracy/d1"] <= 1.0
    rows = read_metrics(res.dir)
    assert {"loss/train", "optim/lr", "perf/tokens_per_s"} <= set(rows[0])
    assert any("eval/accuracy/d1" in r for r in rows)
    # loads anywhere with plain transformers, and writes step-by-step solutions
    model = AutoModelForCausalLM.from_pretrained(res.dir / "model")
    tok = AutoTokenizer.from_pretrained(res.dir / "model")
    task = get_task("arithmetic")
    exs = task.examples("test", 32, 1, seed=5 + test_seed)
    out = sample(model, tok, [e.prompt for e in exs], temperature=0, max_new_tokens=40)
    well_formed = [
        len(parse_steps(c)) == len(e.meta["ops"])
        and None not in parse_steps(c)
        and parse_answer(c) is not None
        for e, c in zip(exs, out.texts)
    ]
    print(
        f"MEASURE pretrain loss ratio {s['loss/train_final'] / s['loss/train_first']:.3f}"
        f" well formed {sum(well_formed)}/{len(exs)}"
    )
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 32 of 32 on each of the six
    assert sum(well_formed) >= 0.8 * len(exs), out.texts[:4]


def test_parameters_changed_from_initialisation(trained):
    from superalign.models.tiny import build_model

    res, cfg, _ = trained
    tok = AutoTokenizer.from_pretrained(res.dir / "model")
    init = build_model(cfg.size, tok, max_positions=cfg.max_len, seed=cfg.seed)
    final = AutoModelForCausalLM.from_pretrained(res.dir / "model")
    for (name, a), b in zip(init.state_dict().items(), final.state_dict().values()):
        if a.dim() >= 2:
            assert not torch.equal(a, b), f"{name} did not change"


def test_same_config_reuses_and_config_records_everything(trained):
    res, cfg, root = trained
    again = execute("pretrain", cfg, root=root)
    assert again.reused and again.dir == res.dir
    record = json.loads((res.dir / "config.json").read_text())
    assert record["config"] == to_dict(cfg) and record["config"]["seed"] == cfg.seed
    assert (res.dir / "model" / "tokenizer.json").is_file()


def test_lr_schedule():
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1e-3)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    # decay_steps ends the decay before the cap: the schedule up to it is the cap's own schedule
    # at steps=decay_steps, and the rate stays at lr / 10 after it
    short = PretrainConfig(steps=60, warmup_steps=10, lr=1e-3)
    capped = PretrainConfig(steps=100, decay_steps=60, warmup_steps=10, lr=1e-3)
    assert all(lr_at(s, capped) == lr_at(s, short) for s in range(60))
    assert lr_at(60, capped) == lr_at(99, capped) == pytest.approx(1e-4)


def test_killed_pretrain_resumes_to_the_same_weights(tmp_path):
    """SIGKILL the CLI midway; the rerun resumes from the checkpoint and ends where an
    uninterrupted run ends (batches depend only on seed and step)."""
    args = [a for a in SMALL if not a.startswith("steps")] + [
        "steps=60",
        "checkpoint_every=10",
        "eval_n=4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "superalign.cli",
        "pretrain",
        *args,
        "--runs-dir",
        str(tmp_path / "a"),
    ]
    cfg = load_config(PretrainConfig, None, args)
    d = run_dir_for("pretrain", to_dict(cfg), root=tmp_path / "a")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (d / "checkpoint" / "step.json").exists():
        assert proc.poll() is None, "the pretrain process exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not is_done(d)
    killed_at = json.loads((d / "checkpoint" / "step.json").read_text())["step"]
    assert 10 <= killed_at < 60

    resumed = execute("pretrain", cfg, root=tmp_path / "a")
    assert resumed.summary["resumed_from_step"] >= killed_at
    steps = [r["step"] for r in read_metrics(d) if "loss/train" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # no duplicated log lines

    straight = execute("pretrain", cfg, root=tmp_path / "b")
    a = AutoModelForCausalLM.from_pretrained(resumed.dir / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(straight.dir / "model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_stop_at_accuracy_stops_at_the_first_check_that_reaches_it(tmp_path, monkeypatch):
    """The rule reads training-split accuracy only; here a stand-in reports 0.2, 0.5, 0.9 at the
    checks of steps 10, 20, 30, so a target of 0.5 stops at step 20 of 60."""
    import superalign.evaluate as evaluate
    from superalign.evaluate import GoldEval

    figures, splits, real = iter([0.2, 0.5, 0.9]), [], evaluate.gold_eval

    def fake_gold_eval(*args, split="test", **kwargs):
        if split != "train":  # held-out evaluations run for real
            return real(*args, split=split, **kwargs)
        splits.append(split)
        return GoldEval(next(figures), 4, [], [], [])

    monkeypatch.setattr(evaluate, "gold_eval", fake_gold_eval)
    args = [a for a in SMALL if not a.startswith("steps")] + ["steps=60", "eval_n=4"]
    args += ["eval_every=10", "log_every=10", "stop_at_accuracy=0.5", "checkpoint_every=0"]
    run = execute("pretrain", load_config(PretrainConfig, None, args), root=tmp_path)
    assert run.summary["steps"] == 20 and run.summary["stopped_early"] is True
    assert splits == ["train", "train"]  # never the held-out split
    rows = read_metrics(run.dir)
    key = "stop/train_accuracy/d1"
    assert [r[key] for r in rows if key in r] == [0.2, 0.5]
    assert rows[-1]["step"] == 20 and "eval/accuracy/d1" in rows[-1]  # held-out, at the stop
    assert (run.dir / "model" / "config.json").is_file()


def test_stop_at_accuracy_config_checks():
    from superalign.config import ConfigError

    with pytest.raises(ConfigError, match="stop_at_accuracy must be in"):
        PretrainConfig(stop_at_accuracy=1.5)
    with pytest.raises(ConfigError, match="needs eval_every"):
        PretrainConfig(stop_at_accuracy=0.7, eval_every=0)
