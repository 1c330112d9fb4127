"""Explain-simulate-score: a latent with a known rule gets an explanation naming its tokens and
a high score; a random latent, or a wrong explanation, scores near 0."""

import random

import pytest
import torch

from superalign.validate.autointerp import (
    LLMExplainer,
    Record,
    correlation,
    explain_latents,
    format_records,
    heuristic_explain,
    parse_explanation,
    score_explanation,
    simulate,
    split_records,
)


def corpus(n=200, seed=0):
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-")
        texts.append(list(f"Q: {a}{op}{b}\n"))
    return texts


def planted_acts(texts, seed=0):
    """Latent 0 fires 5 on '+' and 2 on '7'; latent 1 fires at random; latent 2 never fires."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for toks in texts:
        rule = torch.tensor([5.0 if t == "+" else 2.0 if t == "7" else 0.0 for t in toks])
        noise = (torch.rand(len(toks), generator=g) > 0.8).float() * torch.rand(
            len(toks), generator=g
        )
        out.append(torch.stack([rule, noise, torch.zeros(len(toks))], 1))  # [len, 3]
    return out


def test_heuristic_explanation_names_the_planted_tokens_and_scores_high():
    texts = corpus()
    scores = explain_latents(texts, planted_acts(texts), [0, 1, 2], n_top=10, n_random=10)
    by = {s.latent: s for s in scores}
    assert 2 not in by  # never fires: skipped
    levels = parse_explanation(by[0].explanation)
    assert levels["+"] == 10 and levels["7"] == 4
    assert by[0].score > 0.95
    assert abs(by[1].score) < 0.5 and by[1].score < by[0].score - 0.4


def test_a_wrong_explanation_scores_low():
    texts = corpus()
    acts = planted_acts(texts)
    right = explain_latents(texts, acts, [0], seed=3)[0]
    wrong = explain_latents(texts, acts, [0], seed=3, given={0: 'fires on "Q" (10)'})[0]
    assert right.score > 0.95 and wrong.score < 0.1


def test_simulate_and_parse_llm_style_explanations():
    text = 'plus signs like "+" and the digit "7" (3), but not " "'
    assert parse_explanation(text) == {"+": 10.0, "7": 3.0, " ": 10.0}
    pred = simulate('fires on "+" (10), "\\n" (2)', [list("1+2\n")])
    assert pred == [[0.0, 10.0, 0.0, 2.0]]
    assert correlation([1, 1, 1], [0, 1, 2]) == 0.0
    assert correlation([0, 1, 2], [0, 2, 4]) == pytest.approx(1.0)


def test_score_is_correlation_over_all_held_out_tokens():
    records = [Record(list("a+b"), [0.0, 4.0, 0.0]), Record(list("++"), [4.0, 2.0])]
    expected = correlation([0, 10, 0, 10, 10], [0, 4, 0, 4, 2])
    assert score_explanation('"+"', records, simulate) == pytest.approx(expected)


def test_split_alternates_top_texts_and_adds_random_ones():
    maxes = torch.tensor([0.0, 9.0, 8.0, 7.0, 6.0, 0.0, 0.0, 0.0])
    split = split_records(maxes, n_top=2, n_random=3, rng=random.Random(0))
    assert split.explain == [1, 3]
    assert split.holdout[:2] == [2, 4]
    assert len(split.holdout) == 5 and not set(split.holdout[2:]) & {1, 2, 3, 4}


def test_heuristic_explainer_on_silent_records():
    assert heuristic_explain([Record(["a"], [0.0])]) == "fires on nothing"


def test_llm_explainer_prompts_a_local_model(tmp_path):
    from superalign.models.tiny import build_model
    from superalign.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["We are studying neurons: Q: 12+34\n the main thing"] * 30, 300)
    folder = tmp_path / "m"
    build_model("tiny", tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    explainer = LLMExplainer(str(folder), max_new_tokens=8)
    records = [Record(list("1+2"), [0.0, 3.0, 0.0])]
    prompt = explainer.prompt(records)
    assert "<start>\n'1'\t0\n'+'\t10\n'2'\t0\n<end>" in prompt
    assert format_records(records) in prompt
    assert isinstance(explainer(records), str)
