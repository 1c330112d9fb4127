import pytest
import torch

from superalign.models.sampling import left_pad, sample, token_logprobs
from superalign.models.tiny import build_model, n_params
from superalign.models.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def model_and_tok():
    torch.set_num_threads(1)
    tok = train_tokenizer(
        ["Q: 12+34-5\n12+34=46\n46-5=41\nA: 41\n"] * 50 + ["Tomaren lives in Varo."] * 20, 300
    )
    return build_model("tiny", tok, seed=0), tok


def test_tokenizer_splits_digits_and_round_trips(model_and_tok):
    _, tok = model_and_tok
    text = "Q: 123+45\nA: 168"
    assert [t for t in tok.tokenize(text) if t.isdigit()] == list("12345168")
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.padding_side == "left" and tok.pad_token_id != tok.eos_token_id


def test_named_sizes_span_half_a_million_to_ten_million(model_and_tok):
    _, tok = model_and_tok
    sizes = {s: n_params(build_model(s, tok)) for s in ("tiny", "small", "base")}
    assert 3e5 < sizes["tiny"] < 8e5 and 1e6 < sizes["small"] < 5e6 and 8e6 < sizes["base"] < 1.3e7


def test_left_pad_positions():
    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_sampling_logprobs_match_teacher_forcing(model_and_tok):
    """RL needs the log-probs recorded while sampling to equal those recomputed in training."""
    model, tok = model_and_tok
    prompts = ["Q: 1", "Q: 12+34-5\n", "Tomaren lives in"]  # different lengths: left padding
    out = sample(model, tok, prompts, max_new_tokens=12, seed=0)
    again = token_logprobs(model, out.prompt_ids, out.completion_ids, pad_id=tok.pad_token_id)
    for a, b in zip(out.logprobs, again):
        assert len(a) == len(b) > 0
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_batched_greedy_equals_one_at_a_time_and_seed_is_deterministic(model_and_tok):
    model, tok = model_and_tok
    prompts = ["Q: 1", "Q: 12+34-5\n", "Tomaren lives in"]
    batched = sample(model, tok, prompts, max_new_tokens=10, temperature=0)
    for i, p in enumerate(prompts):
        assert (
            sample(model, tok, [p], max_new_tokens=10, temperature=0).completion_ids[0]
            == batched.completion_ids[i]
        )
    a = sample(model, tok, prompts, max_new_tokens=10, seed=3)
    assert a.completion_ids == sample(model, tok, prompts, max_new_tokens=10, seed=3).completion_ids
    assert a.completion_ids != sample(model, tok, prompts, max_new_tokens=10, seed=4).completion_ids


def test_stop_strings_and_eos(model_and_tok):
    model, tok = model_and_tok
    out = sample(model, tok, ["Q: 1"] * 8, max_new_tokens=30, seed=1, stop=["1", "2"])
    for text, ids, fin in zip(out.texts, out.completion_ids, out.finished):
        assert "1" not in text and "2" not in text
        if fin and ids[-1] != tok.eos_token_id:
            assert any(s in tok.decode(ids) for s in ("1", "2"))
    with pytest.raises(ValueError, match="temperature"):
        sample(model, tok, ["x"], temperature=-1)


def test_the_cache_goes_by_the_keyword_the_model_takes(model_and_tok):
    """transformers 5 renamed ``past_key_values`` to ``cache`` (the old name is removed in 5.40)."""
    import inspect

    from superalign.models.sampling import cache_arg

    model, _ = model_and_tok
    (name,) = cache_arg(model, None)
    assert name in inspect.signature(model.forward).parameters
    assert name in ("cache", "past_key_values")


def test_sampling_reads_the_cache_without_the_deprecated_name(model_and_tok, caplog):
    """transformers 5 warns on reading ``out.past_key_values``; sampling reads ``out.cache``."""
    from transformers.utils.logging import warning_once

    from superalign.models.sampling import output_cache

    model, tok = model_and_tok
    warning_once.cache_clear()  # a warning already given once in this process is not repeated
    out = model(input_ids=torch.tensor([tok("Q: 1+2")["input_ids"]]), use_cache=True)
    assert output_cache(out) is not None
    sample(model, tok, ["Q: 12+3\n"], max_new_tokens=4, temperature=0.0)
    assert "deprecated" not in caplog.text
