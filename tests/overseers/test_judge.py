"""LLMJudge: P(yes) against a direct softmax, a controlled yes/no preference, the same reading
through an OpenAI-compatible server, and the real SmolLM2-135M-Instruct against gold.

The mechanics use a random tiny model whose tokenizer has single tokens for the yes/no
spellings; a hook on its LM head adds a chosen bias to the "yes" logits, which shifts the
normalised score's log-odds by exactly that bias.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from superalign.config import ConfigError, load_config, to_dict
from superalign.models.serve import make_server, render_chat
from superalign.models.tiny import build_model
from superalign.models.tokenizer import train_tokenizer
from superalign.overseers import agreement_with_gold, build_overseer
from superalign.overseers.judge import (
    DEFAULT_TEMPLATE,
    PLAIN_SUFFIX,
    JudgeEvalConfig,
    LLMJudge,
    LocalBackend,
    fill,
    judge_agreement,
    normalised_yes,
    spellings,
    wrong_answer,
)
from superalign.overseers.judge import run as judge_stage
from superalign.runs import run_stage
from superalign.tasks import get_task

torch.set_num_threads(1)

TEXTS = [
    "Question: 1+2\nProposed answer: 3\nIs this answer correct? Answer yes or no.\nAnswer: yes",
    "Question: 4+5\nProposed answer: 8\nIs this answer correct? Answer yes or no.\nAnswer: no",
    "yes no Yes No yes. no. Yes, No, yes! no!",
]
PROMPTS = ["Q: 12+7\n", "Q: 30-4\n", "Q: 5+5\n"]
COMPLETIONS = ["12+7=19\nA: 19\n", "30-4=20\nA: 20\n", "5+5=10\nA: 10 and a much longer answer\n"]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_tokenizer(TEXTS * 30, vocab_size=320)
    model = build_model("tiny", tokenizer, seed=2).eval()
    return model, tokenizer


def _bias_yes(model, backend: LocalBackend, delta: float):
    """Add ``delta`` to every "yes" logit of ``model`` (returns the hook handle)."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., backend.yes_ids] += delta
        return output

    return model.lm_head.register_forward_hook(hook)


def _direct(model, tokenizer, text: str, ids: list[int]) -> float:
    """Softmax mass on ``ids`` after ``text``, one unpadded row: the slow reference."""
    row = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=row).logits[0, -1]
    return float(F.softmax(logits.float(), -1)[ids].sum())


def test_spellings_fill_and_normalisation():
    assert spellings(("yes",)) == ["yes", " yes", "Yes", " Yes", "YES", " YES"]
    assert (
        fill("{question} | {answer} | {other}", "Q: {answer}", "4") == "Q: {answer} | 4 | {other}"
    )
    assert normalised_yes(0.3, 0.1) == pytest.approx(0.75)
    assert normalised_yes(0.0, 0.0) == 0.5


def test_p_yes_equals_a_direct_softmax_with_left_padding(tiny):
    model, tokenizer = tiny
    judge = LLMJudge(LocalBackend(model, tokenizer), batch_size=2)  # batches of mixed lengths
    assert judge.info["prompt_format"] == "plain"  # this tokenizer has no chat template
    assert judge.info["rendered_template"] == DEFAULT_TEMPLATE + PLAIN_SUFFIX
    backend = judge.backend
    assert len(backend.yes_ids) >= 2 and len(backend.no_ids) >= 2  # " yes" and "yes" differ
    assert {s.strip().lower() for s in judge.info["yes_tokens"].values()} == {"yes"}
    out = judge.judge(PROMPTS, COMPLETIONS)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        text = judge.prompt_text(p, c)
        assert text == fill(DEFAULT_TEMPLATE, p.strip(), c.strip()) + PLAIN_SUFFIX
        yes = _direct(model, tokenizer, text, backend.yes_ids)
        no = _direct(model, tokenizer, text, backend.no_ids)
        assert out.p_yes_raw[i] == pytest.approx(yes, rel=1e-4)
        assert out.p_no_raw[i] == pytest.approx(no, rel=1e-4)
        assert out.p_yes[i] == pytest.approx(yes / (yes + no), rel=1e-4)
    assert judge.score(PROMPTS, COMPLETIONS) == out.p_yes


@pytest.mark.parametrize("delta", [-3.0, 2.0])
def test_a_yes_bias_shifts_the_log_odds_by_exactly_that_bias(tiny, delta):
    model, tokenizer = tiny
    judge = LLMJudge(LocalBackend(model, tokenizer))
    before = judge.score(PROMPTS, COMPLETIONS)
    handle = _bias_yes(model, judge.backend, delta)
    try:
        after = judge.score(PROMPTS, COMPLETIONS)
    finally:
        handle.remove()
    for b, a in zip(before, after):
        shift = math.log(a / (1 - a)) - math.log(b / (1 - b))
        assert shift == pytest.approx(delta, abs=1e-4)


def test_judge_agreement_of_a_judge_that_always_says_yes(tiny):
    model, tokenizer = tiny
    task = get_task("arithmetic")
    examples = task.examples("test", 6, 1)
    completions = [ex.solution for ex in examples[:3]] + ["A: 0\n"] * 3
    judge = LLMJudge(LocalBackend(model, tokenizer))
    handle = _bias_yes(model, judge.backend, 30.0)
    try:
        agreement = judge_agreement(judge, task, examples, completions)
    finally:
        handle.remove()
    assert agreement.accuracy == 0.5 and agreement.n == 6
    assert agreement.false_positive_rate == 1.0 and agreement.false_negative_rate == 0.0


def test_chat_template_is_used_and_recorded(tiny):
    model, tokenizer = tiny
    templated = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    templated.pad_token = tokenizer.pad_token
    templated.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    judge = LLMJudge(LocalBackend(model, templated))
    assert judge.info["prompt_format"] == "chat"
    assert judge.info["rendered_template"] == f"<user>{DEFAULT_TEMPLATE}<assistant>"
    message = fill(DEFAULT_TEMPLATE, PROMPTS[0].strip(), COMPLETIONS[0].strip())
    assert judge.prompt_text(PROMPTS[0], COMPLETIONS[0]) == render_chat(
        templated, [{"role": "user", "content": message}]
    )
    plain = LLMJudge(LocalBackend(model, templated), prompt_format="plain")
    assert plain.prompt_text(PROMPTS[0], COMPLETIONS[0]) == message + PLAIN_SUFFIX


@pytest.fixture
def served(tiny):
    """The tiny model with a +4 "yes" / "no" bias (so both sit in the top 20), served over HTTP."""
    model, tokenizer = tiny
    backend = LocalBackend(model, tokenizer)

    def hook(module, inputs, output):
        output = output.clone()
        output[..., backend.yes_ids + backend.no_ids] += 4.0
        return output

    handle = model.lm_head.register_forward_hook(hook)
    server = make_server(model, tokenizer, port=0, model_name="tiny-judge")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, backend
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    handle.remove()


def test_a_server_url_reads_the_same_p_yes(served):
    server, local_backend = served
    local = LLMJudge(local_backend, prompt_format="plain").judge(PROMPTS, COMPLETIONS)
    remote_judge = LLMJudge.build(model=server.url, prompt_format="plain", batch_size=2)
    assert remote_judge.info["model"] == {"url": server.url, "server_model": "tiny-judge"}
    remote = remote_judge.judge(PROMPTS, COMPLETIONS)
    assert remote.p_yes_raw == pytest.approx(local.p_yes_raw, abs=1e-4)
    assert remote.p_no_raw == pytest.approx(local.p_no_raw, abs=1e-4)
    assert remote.p_yes == pytest.approx(local.p_yes, abs=1e-4)
    # the chat endpoint: the server renders the message with its own template
    chat = LLMJudge.build(model=server.url).judge(PROMPTS[:1], COMPLETIONS[:1])
    message = fill(DEFAULT_TEMPLATE, PROMPTS[0].strip(), COMPLETIONS[0].strip())
    text = render_chat(local_backend.tokenizer, [{"role": "user", "content": message}])
    model, tokenizer = local_backend.model, local_backend.tokenizer
    assert chat.p_yes_raw[0] == pytest.approx(
        _direct(model, tokenizer, text, local_backend.yes_ids), abs=1e-4
    )


def test_bad_options_are_errors(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"template must contain \{question\} and \{answer\}"):
        LLMJudge(LocalBackend(model, tokenizer), template="Is {answer} right?")
    with pytest.raises(ValueError, match="prompt_format must be"):
        LLMJudge(LocalBackend(model, tokenizer), prompt_format="json")
    with pytest.raises(ValueError, match="'temperature' is not an option of overseer 'judge'"):
        build_overseer("judge", get_task("arithmetic"), [], {"temperature": 0.5})


def test_judge_eval_stage_writes_scores_that_agree_with_its_metrics(tiny, tmp_path):
    model, tokenizer = tiny
    folder = tmp_path / "judge-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = load_config(
        JudgeEvalConfig,
        None,
        [f"model={folder}", "n=8", "difficulty=1", "threads=1", "judge_options.batch_size=3"],
    )
    res = run_stage("judge_eval", to_dict(cfg), lambda r: judge_stage(cfg, r), root=tmp_path)
    rows = [json.loads(line) for line in (res.dir / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and [r["gold"] for r in rows] == [1.0] * 8 + [0.0] * 8
    assert rows[0]["prompt"] == rows[8]["prompt"] and rows[0]["completion"] != rows[8]["completion"]
    judge = LLMJudge(LocalBackend(model, tokenizer))
    assert [r["p_yes"] for r in rows] == pytest.approx(
        judge.score([r["prompt"] for r in rows], [r["completion"] for r in rows]), abs=1e-5
    )
    agreement = agreement_with_gold([r["p_yes"] for r in rows], [r["gold"] for r in rows])
    s = res.summary
    assert s["oversight/auroc"] == agreement.auroc and s["oversight/accuracy"] == agreement.accuracy
    assert s["gold/good_share"] == 0.5 and s["judge"]["prompt_format"] == "plain"
    assert s["auroc/prompted"] == agreement.auroc  # the single judge has the per-judge keys too
    assert s["judge"]["model"]["path"] == str(folder.resolve())


def test_judge_eval_compares_two_judges_on_the_same_items(tiny, tmp_path):
    model, tokenizer = tiny
    folder = tmp_path / "judge-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    overrides = [f"model={folder}", "task=world:cities", "task_options.n_entities=60", "n=6"]
    overrides += ["judges=[prompted,probe]", "threads=1", "judges_options.probe.n=40"]
    overrides += ["judges_options.probe.folds=2", "judges_options.probe.layer=1"]
    cfg = load_config(JudgeEvalConfig, None, overrides)
    res = run_stage("judge_eval", to_dict(cfg), lambda r: judge_stage(cfg, r), root=tmp_path)
    s = res.summary
    rows = [json.loads(line) for line in (res.dir / "scores.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == [1.0] * 6 + [0.0] * 6
    for name in ("prompted", "probe"):
        assert 0 <= s[f"auroc/{name}_low"] <= s[f"auroc/{name}"] <= s[f"auroc/{name}_high"] <= 1
        scores = [r[f"score/{name}"] for r in rows]
        gold = [r["gold"] for r in rows]
        assert s[f"auroc/{name}"] == agreement_with_gold(scores, gold).auroc
    assert [r["p_yes"] for r in rows] == [r["score/prompted"] for r in rows]
    assert s["oversight/auroc"] == s["auroc/prompted"]  # the first judge's
    assert s["judge"]["probe"]["dataset"] == "cities" and s["judge"]["probe"]["layer"] == 1
    assert s["judge"]["probe"]["model"]["path"] == str(folder.resolve())


def test_wrong_answers_are_wrong_and_in_the_solution_format():
    rng = random.Random(0)
    for spec in ("arithmetic", "facts"):
        task = get_task(spec)
        examples = task.examples("test", 20, None, seed=0)
        for ex in examples:
            wrong = wrong_answer(ex, rng, examples)
            assert task.grade(ex, ex.solution) == 1.0 and task.grade(ex, wrong) == 0.0
            assert wrong.endswith("\n")


def test_judge_eval_config_checks():
    with pytest.raises(ConfigError, match="needs policy"):
        JudgeEvalConfig(completions="policy")
    with pytest.raises(ConfigError, match="only with completions=policy"):
        JudgeEvalConfig(policy="runs/sft-1")
    with pytest.raises(ConfigError, match="model=..., not in judge_options"):
        JudgeEvalConfig(judge_options={"model": "x"})
    with pytest.raises(ConfigError, match="judge 'oracle' is neither"):
        JudgeEvalConfig(judges=["prompted", "oracle"])
    with pytest.raises(ConfigError, match="distinct names"):
        JudgeEvalConfig(judges=["probe", "probe"])
    assert JudgeEvalConfig().judges == ["prompted"]


@pytest.mark.slow
def test_smollm2_judge_against_gold_on_arithmetic(monkeypatch):
    """50 held-out one-step problems, each with its gold solution and a corrupted one.

    Measured (seed 0): AUROC 0.526, accuracy 0.50. SmolLM2-135M-Instruct leans to "no" on
    everything (normalised P(yes) mean 0.23, max 0.26: it rejects all 100) and barely tells
    right from wrong sums. Pinned, so that a change in the template or the reading shows.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    judge = build_overseer("judge", get_task("arithmetic"), [], {"batch_size": 25})
    assert judge.info["prompt_format"] == "chat"
    assert "<|im_start|>assistant" in judge.info["rendered_template"]
    task = get_task("arithmetic")
    examples = task.examples("test", 50, 1)
    rng = random.Random(0)
    completions = [ex.solution for ex in examples] + [
        wrong_answer(ex, rng, examples) for ex in examples
    ]
    gold = [task.grade(ex, c) for ex, c in zip(examples * 2, completions)]
    assert gold == [1.0] * 50 + [0.0] * 50
    scores = judge.judge([ex.prompt for ex in examples * 2], completions)
    agreement = agreement_with_gold(scores.p_yes, gold)
    mass = sum(y + n for y, n in zip(scores.p_yes_raw, scores.p_no_raw)) / 100
    print(
        f"SmolLM2 judge on arithmetic d1: {agreement}, mean yes+no mass {mass:.3f}, "
        f"{time.time() - start:.0f} s"
    )
    assert mass > 0.4  # the template does elicit a yes/no answer
    assert agreement.auroc == pytest.approx(0.526, abs=0.03)
    assert agreement.accuracy == pytest.approx(0.50, abs=0.03)
