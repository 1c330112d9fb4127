"""End-to-end: the sft stage fine-tunes a pretrained tiny model on demonstrations with TRL.

The base model is pretrained on level-1 problems only (one step), then fine-tuned on level-2
demonstrations (two steps). At this size (150 pretraining steps) gold accuracy stays near 0 before
and after (0-3% on 32 problems), so accuracy is only range-checked here; what SFT reliably does is
lower the held-out completion loss and teach the two-step solution format, which is asserted.
"""

import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import superalign.train.sft as sft
from superalign.config import ConfigError, load_config, to_dict
from superalign.models.load import load_model
from superalign.models.pretrain import PretrainConfig
from superalign.models.sampling import sample
from superalign.runs import read_metrics, run_dir_for
from superalign.stages import execute, stage_inputs
from superalign.tasks import get_task
from superalign.tasks.arithmetic import parse_answer, parse_steps

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the runs below, as tests/conftest.py's TEST_THREADS."""
PRETRAIN = [
    "corpus_size=3000",
    "steps=150",
    "batch_size=32",
    "warmup_steps=20",
    "eval_n=16",
    "eval_difficulties=[1]",
    "task_options.default_levels=[1]",
    f"threads={THREADS}",
]
SFT = [
    "difficulties=[2]",
    "n_train=1000",
    "max_steps=100",
    "batch_size=32",
    "lr=2e-3",
    "warmup_steps=10",
    "log_every=10",
    "checkpoint_every=50",
    "eval_n=32",
    "eval_difficulties=[1,2]",
    "max_new_tokens=40",
    f"threads={THREADS}",
]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("runs")
    seed = f"seed={test_seed}"
    pre = execute("pretrain", load_config(PretrainConfig, None, [*PRETRAIN, seed]), root=root)
    cfg = load_config(sft.SFTStageConfig, None, [f"model={pre.dir}", *SFT, seed])
    return execute("sft", cfg, root=root), pre, cfg, root


def _two_step_rate(model_dir, examples) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    out = sample(model, tok, [e.prompt for e in examples], temperature=0, max_new_tokens=40)
    ok = [
        len(parse_steps(c)) == 2 and None not in parse_steps(c) and parse_answer(c) is not None
        for c in out.texts
    ]
    return sum(ok) / len(ok)


@pytest.mark.outcome
def test_loss_falls_on_train_and_held_out_completions(tuned):
    res, _, _, _ = tuned
    s = res.summary
    print(
        f"MEASURE sft train loss {s['loss/train_first']:.3f}->{s['loss/train_final']:.3f}"
        f" held-out d2 {s['eval/loss_before/d2']:.3f}->{s['eval/loss/d2']:.3f}"
        f" ratio {s['eval/loss/d2'] / s['eval/loss_before/d2']:.3f}"
    )
    assert s["steps"] == 100 and s["n_train"] == 1000
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.24, 0.26, 0.25x | 0.24, 0.27, 0.26x
    assert s["loss/train_final"] < 0.5 * s["loss/train_first"]
    rows = read_metrics(res.dir)
    assert len([r for r in rows if "loss/train" in r]) >= 5
    assert {"eval/accuracy_before/d2", "eval/loss_before/d2"} <= set(rows[0])
    # held-out (test split) gold completions of the trained level: much more likely after SFT
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.243, 0.258, 0.245x | 0.245, 0.266, 0.261x
    assert s["eval/loss/d2"] < 0.7 * s["eval/loss_before/d2"]
    for k in ("eval/accuracy_before/d1", "eval/accuracy/d1", "eval/accuracy/d2"):
        assert 0.0 <= s[k] <= 1.0


@pytest.mark.outcome
def test_sft_teaches_the_demonstrated_two_step_format(tuned, test_seed):
    res, pre, _, _ = tuned
    exs = get_task("arithmetic").examples("test", 32, 2, seed=7 + test_seed)
    before = _two_step_rate(pre.dir / "model", exs)
    after = _two_step_rate(res.dir / "model", exs)
    print(f"MEASURE sft two-step format {before:.3f}->{after:.3f}")
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0 -> 0.875, 0.94, 1.0 | 0.97, 0.97, 1.0
    assert after >= 0.7 and after > before, (before, after)


def test_parameters_changed(tuned):
    res, pre, _, _ = tuned
    a = AutoModelForCausalLM.from_pretrained(pre.dir / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(res.dir / "model").state_dict()
    changed = [k for k in a if a[k].dim() >= 2 and not torch.equal(a[k], b[k])]
    assert len(changed) == len([k for k in a if a[k].dim() >= 2])


def test_result_is_a_loadable_run_folder_and_records_its_source(tuned):
    res, pre, _, _ = tuned
    model, tok, info = load_model(res.dir)
    assert info["source"] == "run" and tok.eos_token is not None
    assert res.summary["model"]["source"] == "run"
    assert not (res.dir / "checkpoint").exists()  # TRL's checkpoints go when the run finishes


def test_rerun_reuses_and_upstream_fingerprint_is_in_the_key(tuned):
    res, pre, cfg, root = tuned
    again = execute("sft", cfg, root=root)
    assert again.reused and again.dir == res.dir
    record = json.loads((res.dir / "config.json").read_text())
    assert record["config"] == to_dict(cfg)
    assert record["inputs"]["model"]["path"] == str(pre.dir)
    assert res.dir == run_dir_for("sft", to_dict(cfg), stage_inputs("sft", cfg), root=root)

    # same path, other content (a retrained upstream) -> another run folder
    copy = root / "upstream-copy"
    shutil.copytree(pre.dir, copy)
    cfg2 = load_config(sft.SFTStageConfig, None, [f"model={copy}", *SFT])
    first = run_dir_for("sft", to_dict(cfg2), stage_inputs("sft", cfg2), root=root)
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "steps": 151}))
    assert run_dir_for("sft", to_dict(cfg2), stage_inputs("sft", cfg2), root=root) != first
    # a spec that is not a path (preset or hub id) keys by name only
    assert stage_inputs("sft", sft.SFTStageConfig(model="gemma3-270m")) == {}


def test_interrupted_run_resumes_from_trl_checkpoint(tuned, crash_then_resume):
    _, pre, _, root = tuned
    args = [f"model={pre.dir}", *SFT, "max_steps=10", "checkpoint_every=5", "eval_n=4"]
    args += ["eval_difficulties=[1]", "log_every=1", "n_train=64", "batch_size=8"]
    cfg = load_config(sft.SFTStageConfig, None, args)
    res = crash_then_resume(sft, "sft", cfg, root, at_step=7)
    assert res.summary["resumed_from_step"] == 5 and res.summary["steps"] == 10
    steps = [r["step"] for r in read_metrics(res.dir) if "loss/train" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # no duplicated log lines
    assert len([r for r in read_metrics(res.dir) if "eval/accuracy_before/d1" in r]) == 1


def test_config_checks():
    with pytest.raises(ConfigError, match="model is required"):
        sft.SFTStageConfig()
    with pytest.raises(ConfigError, match="lr"):
        sft.SFTStageConfig(model="x", lr=0)
    with pytest.raises(ConfigError, match="difficulties"):
        sft.SFTStageConfig(model="x", difficulties=[])
