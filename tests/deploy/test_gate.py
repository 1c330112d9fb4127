"""The gate: KL(candidate || safe) with an interval that covers the truth, the budget rule, the
built-in gold audit, audits from run folders and from stages, and the verdict on disk.

Candidates are made from the ``arith_policy`` fixture by exact weight edits, so the truth is
known: halving the final norm's weight divides every logit by 2 (the policy at temperature 2:
same greedy answers, far in KL); adding noise to every weight breaks the policy's arithmetic.
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from superalign.cli import main
from superalign.config import ConfigError, load_config
from superalign.deploy.gate import (
    GateConfig,
    check,
    gold_check,
    kl_check,
    lookup,
    parse_audit,
)
from superalign.models.load import load_model
from superalign.models.sampling import left_pad
from superalign.runs import read_json
from superalign.stages import execute, stage_inputs
from superalign.tasks import get_task, split_examples
from superalign.train.kl import categorical_kl, policy_kl

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the gates below, as tests/conftest.py's TEST_THREADS."""
QUICK = ["n_samples=64", "gold_n=40", "max_new_tokens=24", f"threads={THREADS}"]


def _save_edited(policy, path, edit):
    model, tok, _ = load_model(policy)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(arith_policy, tmp_path_factory, test_seed):
    """``safe`` (the fixture), ``hot`` (temperature 2) and ``noisy`` (weights + noise)."""
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("gate")
    hot = _save_edited(arith_policy, root / "hot", lambda m: m.model.norm.weight.mul_(0.5))

    def add_noise(m):
        g = torch.Generator().manual_seed(test_seed)
        for p in m.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))

    noisy = _save_edited(arith_policy, root / "noisy", add_noise)
    models = {"safe": str(arith_policy), "hot": hot, "noisy": noisy, "root": root / "runs"}
    return {**models, "seed": test_seed}


def _gate(models, candidate, budget, *extra):
    args = [f"candidate={models[candidate]}", f"safe={models['safe']}", f"kl_budget={budget}"]
    args += [f"seed={models['seed']}"]
    cfg = load_config(GateConfig, None, [*args, *QUICK, *extra])
    return execute("gate", cfg, root=models["root"])


def test_same_model_has_kl_zero_and_passes_through_the_cli(models, capsys):
    argv = ["gate", "--candidate", models["safe"], "--safe", models["safe"], "--kl-budget", "0.01"]
    argv += [f"--{q.replace('=', ' ').split()[0]}={q.split('=')[1]}" for q in QUICK]
    assert main([*argv, "--runs-dir", str(models["root"])]) == 0
    out = capsys.readouterr().out
    assert "verdict" in out and "pass" in out
    run_dir = next(models["root"].glob("gate-*"))
    verdict = read_json(run_dir / "verdict.json")
    assert verdict["verdict"] == "pass" and verdict["reasons"] == []
    assert abs(verdict["kl"]["mean"]) < 1e-6 and verdict["kl"]["high"] < 1e-6
    assert verdict["kl"]["n"] == 64 and verdict["kl"]["passed"]
    gold = verdict["audits"][0]
    assert gold["name"] == "gold" and gold["observed"] == gold["safe"] and gold["passed"]
    summary = read_json(run_dir / "summary.json")
    assert summary["verdict"] == "pass" and summary["gate/pass"] == 1.0
    assert len((run_dir / "samples.jsonl").read_text().splitlines()) == 64


@pytest.mark.outcome
def test_far_candidate_rejected_over_small_budget_admitted_under_large(models):
    small = _gate(models, "hot", 0.05).summary
    safe_entropy = _gate(models, "safe", 1).summary["policy/entropy"]
    print(
        f"MEASURE gate hot kl {small['kl/ref']:.4f} low {small['kl/ref_low']:.4f} entropy"
        f" {small['policy/entropy']:.3f} vs safe {safe_entropy:.3f} acc"
        f" {small['eval/accuracy_candidate']:.3f}/{small['eval/accuracy_safe']:.3f}"
    )
    assert small["verdict"] == "fail" and len(small["reasons"]) == 1
    assert small["reasons"][0].startswith("KL upper bound")
    # far: even the lower bound is over the budget (seeds 0 / 1 / 2, 1 thread | 2 threads: 8.50,
    # 8.40, 9.08 | 7.04, 6.78, 9.74)
    assert small["kl/ref_low"] > 0.05
    # temperature 2 keeps every greedy answer: the gold audit passes, only the KL fails
    assert small["eval/accuracy_candidate"] == small["eval/accuracy_safe"]
    large = _gate(models, "hot", 1000).summary
    assert large["verdict"] == "pass" and large["reasons"] == []
    assert large["kl/ref"] == pytest.approx(small["kl/ref"])  # the same measurement
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 18.1 vs 1.08, 16.2 vs 1.13, 19.4 vs 1.41 | 14.4 vs
    # 0.85, 14.2 vs 1.17, 19.6 vs 1.18
    assert large["policy/entropy"] > 1.5 * safe_entropy


@pytest.mark.outcome
def test_a_candidate_that_lost_its_arithmetic_fails_the_gold_audit(models):
    s = _gate(models, "noisy", 1e6).summary
    print(
        f"MEASURE gate noisy acc {s['eval/accuracy_candidate']:.3f} safe {s['eval/accuracy_safe']:.3f}"
    )
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.0 vs 0.825, 0.0 vs 0.70, 0.0 vs 0.725 | 0.0 vs
    # 0.75, 0.0 vs 0.75, 0.0 vs 0.725
    assert s["eval/accuracy_candidate"] < s["eval/accuracy_safe"] - 0.05
    assert s["verdict"] == "fail" and s["kl"]["passed"]
    assert [r.split(":")[0] for r in s["reasons"]] == ["audit gold"]
    without = _gate(models, "noisy", 1e6, "gold_tolerance=none").summary
    assert without["verdict"] == "pass" and without["audits"] == []


def _exact_first_token_kl(candidate, safe, tok, prompts):
    """The true KL of one-token completions: mean over prompts of the exact categorical KL."""
    ids, mask, pos = left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    with torch.no_grad():
        p = F.softmax(
            candidate(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1], -1
        )
        q = F.softmax(safe(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1], -1)
    return float(categorical_kl(p, q).mean())


@pytest.mark.outcome
def test_interval_covers_the_exact_kl(models):
    cand, tok, _ = load_model(models["hot"])
    safe, _, _ = load_model(models["safe"])
    seed = 3 + models["seed"]
    prompts = [ex.prompt for ex in split_examples(get_task("arithmetic"), "test", 200, [1], seed)]
    truth = _exact_first_token_kl(cand, safe, tok, prompts)
    assert truth > 0.05
    covered = 0
    for seed in range(5 * models["seed"], 5 * models["seed"] + 5):
        est = policy_kl(cand, safe, tok, prompts, max_new_tokens=1, seed=seed)
        assert est.metrics()["policy/length"] == 1.0
        covered += est.k3.low <= truth <= est.k3.high
        assert abs(est.k3.mean - truth) < 4 * (est.k3.high - est.k3.low) / 3.92
    print(f"MEASURE gate exact kl {truth:.4f} covered {covered}/5")
    # a 95% interval, 5 independent draws (seeds 0 / 1 / 2, 1 thread | 2 threads: 4, 4, 5 | 4, 5,
    # 5 of 5; exact KL 0.76, 0.83, 0.77 | 0.66, 0.56, 0.83)
    assert covered >= 4, covered


def test_failing_audits_fail_the_verdict_each_with_its_reason(models):
    policy = models["safe"]
    audits = [
        {"run": policy, "metric": "eval/accuracy/d1", "op": ">=", "value": 0.99},
        {"run": policy, "metric": "eval/accuracy/d1", "op": "ge", "value": 0.1, "name": "ok"},
        {"run": policy, "metric": "no/such_metric", "op": "<", "value": 1},
        {
            "stage": "best_of_n",
            "config": {"n_prompts": 8, "ns": [1, 2], "max_new_tokens": 24, "threads": 1},
            "metric": "table.-1.reward/gold",
            "op": ">=",
            "value": 0.99,
            "name": "bon",
        },
    ]
    res = _gate(models, "safe", 1, f"audits={json.dumps(audits)}")
    s = res.summary
    assert s["verdict"] == "fail" and s["kl"]["passed"]
    by_name = {a["name"]: a for a in s["audits"]}
    assert by_name["ok"]["passed"] and by_name["gold"]["passed"]
    assert [a["passed"] for a in s["audits"]] == [True, False, True, False, False]
    assert len(s["reasons"]) == 3
    d1 = read_json(f"{policy}/summary.json")["eval/accuracy/d1"]
    assert f"eval/accuracy/d1 = {d1:.4g} in {policy}, needs >= 0.99" in s["reasons"][0]
    assert "no/such_metric is not in" in s["reasons"][1]
    assert s["reasons"][2].startswith("audit bon: table.-1.reward/gold = ")
    bon_dir = by_name["bon"]["source"]
    assert "best_of_n-" in bon_dir
    assert read_json(f"{bon_dir}/config.json")["config"]["model"] == policy  # run on the candidate
    assert read_json(res.dir / "verdict.json")["reasons"] == s["reasons"]
    # the audited run folder is fingerprinted into the gate's cache key
    assert (
        stage_inputs(
            "gate",
            load_config(
                GateConfig,
                None,
                [
                    f"candidate={policy}",
                    f"safe={policy}",
                    "kl_budget=1",
                    f"audits={json.dumps(audits)}",
                ],
            ),
        ).get("audits.0.run")
        == policy
    )


def test_different_tokenizers_are_refused(models, tmp_path):
    def other_vocab(path):
        model, tok, _ = load_model(models["safe"])
        tok.add_tokens(["<new>"])
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return str(path)

    cfg = GateConfig(candidate=other_vocab(tmp_path / "m"), safe=models["safe"], kl_budget=1)
    with pytest.raises(ConfigError, match="different tokenizers"):
        execute("gate", cfg, root=tmp_path / "runs")


def test_budget_rule_and_audit_checks_are_plain_functions():
    from superalign.train.kl import MeanCI

    assert kl_check(MeanCI(0.5, 0.4, 0.6, 100), 0.6, 0.95)["passed"]
    fail = kl_check(MeanCI(0.5, 0.4, 0.61, 100), 0.6, 0.95)
    assert not fail["passed"] and fail["reason"].startswith("KL upper bound 0.61 > budget 0.6")
    assert gold_check(0.70, 0.75, 0.05)["passed"] and not gold_check(0.69, 0.75, 0.05)["passed"]
    summary = {"a/b": 1, "table": [{"g": 0.2}, {"g": 0.9}]}
    assert lookup(summary, "a/b") == 1 and lookup(summary, "table.-1.g") == 0.9
    audit = parse_audit({"run": "x", "metric": "table.0.g", "op": "lt", "value": 0.5}, 0, "c")
    assert audit.op == "<" and check(audit, summary, "x")["passed"]
    assert check(audit, {"table": [{"g": "n/a"}]}, "x")["reason"].endswith("is not a number")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["safe=s", "kl_budget=1"], "candidate is required"),
        (["candidate=c", "safe=s"], "kl_budget is required"),
        (["candidate=c", "safe=s", "kl_budget=-1"], "kl_budget must be"),
        (["candidate=c", "safe=s", "kl_budget=1", "n_samples=1"], "n_samples must be at least 2"),
        (["candidate=c", "safe=s", "kl_budget=1", "confidence=1"], "confidence must be in"),
        (["candidate=c", "safe=s", "kl_budget=1", "audits=[1]"], r"audits\[0\] must be a mapping"),
        (
            ["candidate=c", "safe=s", "kl_budget=1", "audits=[{run: r, metric: m, op: '=>'}]"],
            r"audits\[0\]\.op must be one of",
        ),
        (
            ["candidate=c", "safe=s", "kl_budget=1", "audits=[{run: r, metric: m, op: lt}]"],
            r"audits\[0\]\.value must be a number",
        ),
        (
            ["candidate=c", "safe=s", "kl_budget=1", "audits=[{metric: m, op: lt, value: 1}]"],
            r"audits\[0\] needs exactly one of run .* or stage",
        ),
        (
            [
                "candidate=c",
                "safe=s",
                "kl_budget=1",
                "audits=[{run: r, metric: m, op: lt, value: 1, vlaue: 2}]",
            ],
            r"audits\[0\]\.vlaue is not an audit key",
        ),
        (
            [
                "candidate=c",
                "safe=s",
                "kl_budget=1",
                "audits=[{stage: bestofn, metric: m, op: lt, value: 1}]",
            ],
            r"audits\[0\]\.stage: unknown stage 'bestofn'",
        ),
        (
            [
                "candidate=c",
                "safe=s",
                "kl_budget=1",
                "audits=[{stage: best_of_n, metric: m, op: lt, value: 1, config: {nss: [1]}}]",
            ],
            r"unknown config key 'audits\[0\]\.config\.nss'.*Did you mean 'audits\[0\]\.config\.ns'",
        ),
    ],
)
def test_bad_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GateConfig, None, overrides)
