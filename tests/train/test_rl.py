"""End-to-end: the rl stage optimises the tiny arithmetic policy against an overseer with TRL,
with an explicit KL penalty to a frozen reference, and accounts gold beside the proxy.

With the gold grader as the overseer, 64 GRPO steps (32 prompts x 8 completions, lr 1e-4) raise
held-out sampled gold on 1-step problems on five of six runs (seeds 0-2 x 1-2 threads) and on
average over them, but not on every run: see MARGIN. Gold is measured on fresh samples of the
same held-out prompts with the same seed at every evaluation, so the step-0 row is the reference
policy itself and its KL is zero up to float error.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import superalign.train.rl as rl
from superalign.config import ConfigError, load_config
from superalign.models.load import load_model
from superalign.overseers import build_overseer
from superalign.runs import Run, read_metrics
from superalign.stages import execute
from superalign.tasks import get_task

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the outcome runs below, as tests/conftest.py's TEST_THREADS."""
STEPS = 64
RL = [
    "difficulties=[1]",
    "overseer=gold",
    "n_train=1000",
    f"max_steps={STEPS}",
    "prompts_per_step=32",
    "num_generations=8",
    "lr=1e-4",
    "beta=0.05",
    "max_new_tokens=24",
    f"eval_every={STEPS // 2}",
    "eval_n=1024",
    "checkpoint_every=0",
    f"threads={THREADS}",
]
MARGIN = 0.015
"""Smallest gain of held-out sampled gold (last accounting step minus step 0, one fresh sample
on each of 1,024 held-out prompts) the per-run claim requires. 64 steps, seeds 0 / 1 / 2, 1 thread
| 2 threads: +0.040 (0.645 -> 0.685), +0.071, +0.103 | +0.036, **-0.012** (0.545 -> 0.533),
+0.077. Over the six runs the mean gain is +0.053 (95% t interval over runs [+0.011, +0.095]),
so RL on the gold reward raises held-out gold *on average over seeds*; on one run in six (seed
1, 2 threads) it does not, which makes the per-run claim a visible xfail rather than a test
that holds on one machine's rounding. Settings tried on that run (64 steps unless said): RLOO
-0.012, 16 prompts x 16 completions +0.004, 4,000 training prompts -0.040, lr 2e-4 -0.063 (3e-4
lowered gold on all three 1-thread seeds), 128 steps +0.026; resampled with other seeds, its
policy and the RL model score 0.56 / 0.55 and 0.58 / 0.55: the gain there is within sampling
noise. Before (32 steps, 256
prompts): +0.020, +0.027, +0.059 | +0.051, -0.016, +0.105."""
GREEDY_MARGIN = 0.03
"""Smallest gain of greedy held-out accuracy required. 64 steps, seeds 0 / 1 / 2, 1 thread | 2
threads: +0.022, +0.052, +0.082 | +0.043, -0.010, +0.053: the claim fails on two of six runs, so
its test is a visible xfail. (32 steps, 1 thread: -0.023, -0.039, +0.020.)"""
SHARED = ["reward/proxy", "reward/gold", "kl/ref", "kl/ref_k1", "kl/ref_low", "kl/ref_high"]
SHARED += ["policy/entropy", "policy/length", "eval/accuracy"]


@pytest.fixture(scope="module")
def trained(arith_policy, tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("rl-runs")
    cfg = load_config(rl.RLConfig, None, [f"model={arith_policy}", *RL, f"seed={test_seed}"])
    return execute("rl", cfg, root=root), cfg, root


def _accounting(run_dir):
    """The gold-accounting rows of a run folder's metrics."""
    return [r for r in read_metrics(run_dir) if "reward/gold" in r]


@pytest.mark.outcome
@pytest.mark.xfail(
    strict=False,
    reason="a claim over seeds, not per run, kept visible: held-out gold rose by MARGIN on five "
    "of six runs (seeds 0-2 x 1-2 threads) and fell by 0.012 on seed 1 with 2 threads; the "
    "mean over the six is +0.053 [+0.011, +0.095] (see MARGIN)",
)
def test_gold_reward_raises_held_out_gold(trained):
    res, _, _ = trained
    s = res.summary
    g0, g1 = s["reward/gold_initial"], s["reward/gold_final"]
    a0, a1 = s["eval/accuracy_initial"], s["eval/accuracy_final"]
    print(
        f"MEASURE rl gold {g0:.3f}->{g1:.3f} ({g1 - g0:+.3f}) greedy {a0:.3f}->{a1:.3f} ({a1 - a0:+.3f})"
    )
    assert s["reward/gold_final"] > s["reward/gold_initial"] + MARGIN, s


@pytest.mark.outcome
@pytest.mark.xfail(
    strict=False,
    reason="a failing claim, kept visible: greedy held-out accuracy rose by GREEDY_MARGIN on "
    "four of six runs (seeds 0-2 x 1-2 threads; see GREEDY_MARGIN)",
)
def test_gold_reward_raises_greedy_held_out_accuracy(trained):
    s = trained[0].summary
    assert s["eval/accuracy_final"] > s["eval/accuracy_initial"] + GREEDY_MARGIN, s


@pytest.mark.outcome
def test_kl_is_zero_at_step_0_and_positive_after_training(trained):
    res, _, _ = trained
    rows = _accounting(res.dir)
    assert [r["step"] for r in rows] == [0, STEPS // 2, STEPS]
    assert abs(rows[0]["kl/ref"]) < 1e-3 and abs(rows[0]["kl/ref_k1"]) < 1e-3
    last = rows[-1]
    print(f"MEASURE rl kl/ref final {last['kl/ref']:.4f} low {last['kl/ref_low']:.4f}")
    # 64 steps, seeds 0 / 1 / 2, 1 thread | 2 threads: 0.14, 0.30, 0.25 | 0.31, 0.33, 0.32
    # (32 steps, 1 thread: 0.19, 0.31, 0.29, lower bounds 0.12, 0.23, 0.19); level 0.05
    assert last["kl/ref"] > 0.05 and last["kl/ref_low"] <= last["kl/ref"] <= last["kl/ref_high"]
    assert res.summary["kl/ref_final"] == last["kl/ref"]


def test_every_metric_is_logged(trained):
    res, _, _ = trained
    s = res.summary
    assert s["steps"] == STEPS and s["processes"] == 1
    assert s["reward/gold_peak"] >= s["reward/gold_final"]
    for r in _accounting(res.dir):  # the overseer is gold: the proxy is gold itself
        assert r["reward/proxy"] == r["reward/gold"]
    for r in _accounting(res.dir):
        assert set(SHARED) <= set(r), set(SHARED) - set(r)
        assert 0 < r["policy/length"] <= 24 and r["policy/entropy"] > 0
    train = [r for r in read_metrics(res.dir) if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for name in ("train/reward", "train/kl", "train/entropy", "train/length", "optim/lr"):
        assert all(name in r for r in train), name
    assert train[-1]["train/kl"] > 0  # TRL's own per-token k3, beta > 0


def test_parameters_changed_and_run_folder_loads(trained, arith_policy):
    res, _, _ = trained
    model, tok, info = load_model(res.dir)
    assert info["source"] == "run" and tok.eos_token_id == model.generation_config.eos_token_id
    before = AutoModelForCausalLM.from_pretrained(arith_policy / "model").state_dict()
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)
    assert not (res.dir / "checkpoint").exists()
    record = json.loads((res.dir / "config.json").read_text())
    assert record["inputs"]["model"]["path"] == str(arith_policy)


def test_trl_samples_from_the_policy_and_trains_on_its_log_probs(arith_policy, tmp_path):
    """TRL generates at temperature 1 with no filtering, stops at the tiny tokenizer's EOS, and
    the log-probs it trains on (a teacher-forced recomputation) match those of the sampling
    forward passes, left padding included."""
    from trl.trainer.utils import pad

    torch.manual_seed(0)
    model, tok, _ = load_model(arith_policy)
    task = get_task("arithmetic")
    exs = [*task.examples("train", 6, 1, seed=1), *task.examples("train", 6, 3, seed=1)]
    cfg = rl.RLConfig(model=str(arith_policy), prompts_per_step=2, num_generations=2)
    run = Run(tmp_path, "rl", {})
    trainer = rl._trainer(
        cfg, run, model, tok, [e.prompt for e in exs], build_overseer("gold", task, exs)
    )
    rl.check_sampling(trainer, tok)
    assert trainer.eos_token_ids == [tok.eos_token_id]

    ids = [torch.tensor(tok(e.prompt)["input_ids"]) for e in exs]
    prompt = pad(ids, padding_value=tok.pad_token_id, padding_side="left")
    mask = pad([torch.ones_like(i) for i in ids], padding_value=0, padding_side="left")
    assert (mask == 0).any()  # mixed prompt lengths: left padding is exercised
    out = model.generate(
        input_ids=prompt,
        attention_mask=mask,
        generation_config=trainer.generation_config,
        output_logits=True,
        return_dict_in_generate=True,
    )
    completion = out.sequences[:, prompt.shape[1] :]  # [B, T]
    sampled = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)
    sampled = sampled.gather(-1, completion[..., None]).squeeze(-1)  # [B, T]
    is_eos = (completion == tok.eos_token_id).int()
    keep = (torch.cumsum(is_eos, 1) - is_eos) == 0  # up to and including the first EOS
    ids_full = torch.cat([prompt, completion.masked_fill(~keep, tok.pad_token_id)], 1)
    with torch.no_grad():
        trained_on, _, _ = trainer._get_per_token_logps_and_entropies(
            model, ids_full, torch.cat([mask, keep.long()], 1), completion.shape[1]
        )
    assert (sampled - trained_on)[keep].abs().max() < 1e-4

    trainer.generation_config.top_k = 5
    with pytest.raises(ValueError, match="top_k"):
        rl.check_sampling(trainer, tok)


def test_scale_rewards_reaches_the_grpo_trainer(arith_policy, tmp_path):
    model, tok, _ = load_model(arith_policy)
    task = get_task("arithmetic")
    exs = task.examples("train", 4, 1, seed=1)
    for scale in ("none", "batch"):
        cfg = rl.RLConfig(model=str(arith_policy), prompts_per_step=2, num_generations=2,
                          scale_rewards=scale)  # fmt: skip
        trainer = rl._trainer(
            cfg, Run(tmp_path / scale, "rl", {}), model, tok, [e.prompt for e in exs],
            build_overseer("gold", task, exs),
        )  # fmt: skip
        assert trainer.scale_rewards == scale


def test_micro_batches_accumulate_into_the_same_update(arith_policy, tmp_path):
    """``micro_batch_size`` splits a step's completions into passes whose gradients accumulate
    into its one optimizer step: the same completions, the same update up to float rounding."""
    torch.set_num_threads(1)
    args = [f"model={arith_policy}", "overseer=gold", "n_train=64", "max_steps=1"]
    args += ["prompts_per_step=8", "num_generations=4", "lr=1e-4", "beta=0.05"]
    args += ["max_new_tokens=24", "eval_n=8", "checkpoint_every=0", "threads=1"]
    before = AutoModelForCausalLM.from_pretrained(arith_policy / "model").state_dict()
    moved = {}
    for micro in (0, 8):
        cfg = load_config(rl.RLConfig, None, [*args, f"micro_batch_size={micro}"])
        after = load_model(execute("rl", cfg, root=tmp_path / str(micro)).dir)[0].state_dict()
        moved[micro] = torch.cat([(after[k] - before[k]).flatten() for k in before])
    assert moved[0].abs().max() > 0
    cos = torch.nn.functional.cosine_similarity(moved[0], moved[8], dim=0).item()
    print(f"cosine of the two updates: {cos:.6f}")
    assert cos > 0.99
    with pytest.raises(ConfigError, match="micro_batch_size must divide"):
        rl.RLConfig(model="x", prompts_per_step=4, num_generations=4, micro_batch_size=3)


@pytest.mark.outcome
def test_rloo_and_a_separate_reference(arith_policy, tmp_path, test_seed):
    """RLOO runs through the same stage, and a reference other than the policy (here the policy
    at temperature 2: its final norm halved) shows as KL > 0 already at step 0."""
    ref_dir = tmp_path / "perturbed"
    model, tok, _ = load_model(arith_policy)
    with torch.no_grad():
        model.model.norm.weight.mul_(0.5)  # every logit halved: a flatter next-token distribution
    model.save_pretrained(ref_dir)
    tok.save_pretrained(ref_dir)
    args = [f"model={arith_policy}", f"reference={ref_dir}", "algorithm=rloo", "max_steps=2"]
    args += ["prompts_per_step=4", "num_generations=4", "lr=1e-4", "eval_every=2", "eval_n=32"]
    args += ["max_new_tokens=24", "checkpoint_every=0", f"threads={THREADS}", "n_train=64"]
    args += [f"seed={test_seed}"]
    res = execute("rl", load_config(rl.RLConfig, None, args), root=tmp_path / "runs")
    rows = _accounting(res.dir)
    print(f"MEASURE rloo kl/ref step0 {rows[0]['kl/ref']:.4f} low {rows[0]['kl/ref_low']:.4f}")
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.50, 0.63, 0.26 | 3.03, 0.70, 0.22 (with the norm
    # scaled by 0.7 and 16 prompts: 0.0085 on a fresh machine); level 0.05
    assert [r["step"] for r in rows] == [0, 2] and rows[0]["kl/ref"] > 0.05
    train = [r for r in read_metrics(res.dir) if "train/loss" in r]
    assert len(train) == 2 and all("train/kl" in r for r in train)
    assert res.summary["algorithm"] == "rloo" and res.summary["reference"]["source"] == "folder"


def test_interrupted_run_resumes_from_trl_checkpoint(arith_policy, tmp_path, crash_then_resume):
    args = [f"model={arith_policy}", "max_steps=4", "checkpoint_every=2", "eval_every=2"]
    args += ["prompts_per_step=2", "num_generations=4", "lr=1e-4", "eval_n=8"]
    args += ["max_new_tokens=24", "threads=1", "n_train=32"]
    cfg = load_config(rl.RLConfig, None, args)
    res = crash_then_resume(rl, "rl", cfg, tmp_path, at_step=3)
    assert res.summary["resumed_from_step"] == 2 and res.summary["steps"] == 4
    assert [r["step"] for r in _accounting(res.dir)] == [0, 2, 4]  # nothing evaluated twice
    steps = [r["step"] for r in read_metrics(res.dir) if "train/loss" in r]
    assert steps == [1, 2, 3, 4]


def test_summary_of_accounting_rows():
    rows = [
        {"step": 0, "reward/gold": 0.5, "reward/proxy": 0.5, "kl/ref": 0.0, "eval/accuracy": 0.6},
        {"step": 10, "reward/gold": 0.7, "reward/proxy": 0.8, "kl/ref": 1.0, "eval/accuracy": 0.7},
        {"step": 20, "reward/gold": 0.4, "reward/proxy": 0.9, "kl/ref": 3.0, "eval/accuracy": 0.5},
        {"step": 5, "train/loss": 0.1},
    ]
    s = rl.summarize(rows)
    assert s["reward/gold_initial"] == 0.5 and s["reward/gold_final"] == 0.4
    assert s["reward/gold_peak"] == 0.7 and s["reward/gold_peak_step"] == 10
    assert s["kl/ref_at_gold_peak"] == 1.0 and s["kl/ref_final"] == 3.0
    assert s["reward/proxy_peak"] == 0.9 and rl.summarize([]) == {}


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="model is required"):
        rl.RLConfig()
    with pytest.raises(ConfigError, match="num_generations"):
        rl.RLConfig(model="x", num_generations=1)
    with pytest.raises(ConfigError, match="beta"):
        rl.RLConfig(model="x", beta=-0.1)
    with pytest.raises(ConfigError, match="algorithm"):
        load_config(rl.RLConfig, None, ["model=x", "algorithm=ppo"])
    with pytest.raises(ConfigError, match="difficulties"):
        rl.RLConfig(model="x", difficulties=[])
    with pytest.raises(ConfigError, match="distinct"):
        rl.RLConfig(model="x", difficulties=[1, 1])
    with pytest.raises(ConfigError, match="scale_rewards must be"):
        rl.RLConfig(model="x", scale_rewards="std")
    with pytest.raises(ConfigError, match="grpo only"):
        rl.RLConfig(model="x", algorithm="rloo", scale_rewards="none")
    with pytest.raises(ValueError, match="overseer 'oracle'"):
        execute("rl", rl.RLConfig(model="x", overseer="oracle"), root=tmp_path)


# --- several processes ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(stage: str, args: list[str], runs) -> subprocess.CompletedProcess:  # noqa: ANN001
    """``accelerate launch`` of two processes on this machine (torchrun under the hood; on a
    machine without CUDA the stage trains on CPU, DDP over gloo)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += ["-m", "superalign.cli", stage, *args, "--runs-dir", str(runs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_rl_and_sft_under_accelerate_launch_with_two_processes(arith_policy, tmp_path):
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available: accelerate cannot spawn")
    runs = tmp_path / "runs"
    rl_args = [f"model={arith_policy}", "max_steps=2", "prompts_per_step=4", "num_generations=4"]
    rl_args += ["lr=1e-4", "eval_every=2", "eval_n=16", "max_new_tokens=24", "threads=1"]
    rl_args += ["checkpoint_every=1", "n_train=64"]
    out = _launch("rl", rl_args, runs)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("rl finished") == 1  # only rank 0 speaks and writes
    (rl_dir,) = runs.glob("rl-*")
    s = json.loads((rl_dir / "summary.json").read_text())
    assert s["processes"] == 2 and s["steps"] == 2
    assert [r["step"] for r in _accounting(rl_dir)] == [0, 2]
    assert [r["step"] for r in read_metrics(rl_dir) if "train/loss" in r] == [1, 2]
    load_model(rl_dir)

    sft_args = [f"model={arith_policy}", "difficulties=[1]", "n_train=64", "max_steps=2"]
    sft_args += ["batch_size=8", "eval_n=8", "eval_difficulties=[1]", "max_new_tokens=24"]
    sft_args += ["threads=1", "checkpoint_every=1", "lr=1e-4"]
    out = _launch("sft", sft_args, runs)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("sft finished") == 1
    (sft_dir,) = runs.glob("sft-*")
    assert json.loads((sft_dir / "summary.json").read_text())["steps"] == 2
    load_model(sft_dir)
    # rank 1 worked in scratch folders beside the runs; they are gone
    assert sorted(p.name for p in runs.iterdir()) == sorted([rl_dir.name, sft_dir.name])
