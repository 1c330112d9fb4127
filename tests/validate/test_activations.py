"""Activation capture: hook names on Llama- and GPT-2-style models, padding independence,
agreement with ``output_hidden_states``, edit hooks, and the chunked safetensors round trip."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from superalign.models.tiny import build_model
from superalign.models.tokenizer import train_tokenizer
from superalign.validate import activations as A

TEXTS = ["Q: 37+45\n", "Q: 12+34-5\n12+34=46\n46-5=41\nA: 41\n", "Q: 9-3\n9-3=6\nA: 6\n"]


@pytest.fixture(scope="module")
def tok():
    torch.set_num_threads(1)
    return train_tokenizer(["Q: 12+34-5\n12+34=46\n46-5=41\nA: 41\n"] * 50, 300)


@pytest.fixture(scope="module")
def llama(tok):
    return build_model("tiny", tok, seed=0).eval()


@pytest.fixture(scope="module")
def gpt2(tok):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg).eval()


def test_hook_names_parse_and_reject():
    assert A.parse_hook("blocks.3.hook_resid_post") == (3, "hook_resid_post")
    assert A.hook_name(2, "hook_mlp_out") == "blocks.2.hook_mlp_out"
    with pytest.raises(ValueError, match="blocks"):
        A.parse_hook("layers.3.resid")


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_capture_shapes_and_padding_independence(which, request, tok):
    model = request.getfixturevalue(which)
    n = A.n_blocks(model)
    d = model.config.hidden_size
    hooks = [A.hook_name(i, p) for i in range(n) for p in A.HOOK_POINTS]
    batched = A.capture(model, tok, TEXTS, hooks, batch_size=3)
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert batched.tokens.shape == (sum(lengths),)
    assert batched.doc.tolist() == [j for j, k in enumerate(lengths) for _ in range(k)]
    assert batched.pos.tolist() == [i for k in lengths for i in range(k)]
    for h in hooks:
        assert batched.acts[h].shape == (sum(lengths), d)
    # resid_post of block i is resid_pre of block i + 1
    for i in range(n - 1):
        post, pre = (
            batched.acts[f"blocks.{i}.hook_resid_post"],
            batched.acts[f"blocks.{i + 1}.hook_resid_pre"],
        )
        assert torch.equal(post, pre)
    # a left-padded row computes what it computes alone
    alone = A.capture(model, tok, TEXTS[:1], hooks, batch_size=1)
    for h in hooks:
        assert torch.allclose(alone.acts[h], batched.acts[h][batched.doc == 0], atol=1e-5)
    assert batched.last(hooks[0]).shape == (3, d)
    assert torch.equal(
        batched.last(hooks[0])[1], batched.acts[hooks[0]][lengths[0] + lengths[1] - 1]
    )
    assert torch.allclose(batched.mean(hooks[0])[2], batched.per_doc(hooks[0])[2].mean(0))
    two = batched.last_k(hooks[0], 2)  # each text's last two tokens, earliest first
    assert two.shape == (3, 2 * d)
    for j, rows in enumerate(batched.per_doc(hooks[0])):
        assert torch.equal(two[j], torch.cat([rows[-2], rows[-1]]))
    assert torch.equal(batched.last_k(hooks[0], 1), batched.last(hooks[0]))
    first = batched.per_doc(hooks[0])[0][0]  # a text shorter than k repeats its first token
    assert torch.equal(batched.last_k(hooks[0], lengths[0] + 1)[0, :d], first)


def test_hooks_match_output_hidden_states_before_the_final_norm(llama, tok):
    hooks = [A.hook_name(i, p) for i in range(3) for p in ("hook_resid_pre", "hook_resid_post")]
    hooked = A.capture(llama, tok, TEXTS, hooks)
    states = A.capture(llama, tok, TEXTS, hooks, fallback=True)
    for h in hooks:
        assert torch.allclose(hooked.acts[h], states.acts[h], atol=1e-5), h
    with pytest.raises(ValueError, match="mlp_out"):
        A.capture(llama, tok, TEXTS, ["blocks.0.hook_mlp_out"], fallback=True)


def test_mlp_out_is_the_residual_update_of_the_mlp(gpt2, tok):
    # GPT-2 block: resid_post = resid_pre + attn_out + mlp_out, so mlp_out is a real component
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"]
    acts = A.capture(gpt2, tok, TEXTS, hooks)
    mlp = acts.acts["blocks.0.hook_mlp_out"]
    assert mlp.abs().sum() > 0
    assert not torch.allclose(mlp, acts.acts["blocks.0.hook_resid_post"])


def test_edit_hook_changes_the_output_and_is_removed(llama, tok):
    ids = torch.tensor([tok(TEXTS[0])["input_ids"]])
    before = llama(input_ids=ids).logits
    shift = torch.randn(llama.config.hidden_size) * 5
    with A.edit_hook(llama, "blocks.1.hook_resid_pre", lambda x: x + shift):
        steered = llama(input_ids=ids).logits
        inside = A.capture(llama, tok, TEXTS[:1], ["blocks.1.hook_resid_pre"])
    after = llama(input_ids=ids).logits
    assert not torch.allclose(before, steered, atol=1e-3)
    assert torch.equal(before, after)  # the hook is gone
    clean = A.capture(llama, tok, TEXTS[:1], ["blocks.0.hook_resid_post"])
    edited = inside.acts["blocks.1.hook_resid_pre"]
    assert torch.allclose(edited, clean.acts["blocks.0.hook_resid_post"] + shift, atol=1e-5)


def test_stream_to_disk_round_trips_in_chunks(llama, tok, tmp_path):
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"]
    texts = TEXTS * 5
    index = A.stream_to_disk(
        llama, tok, texts, hooks, tmp_path / "acts", batch_size=2, chunk_tokens=40
    )
    files = sorted(p.name for p in (tmp_path / "acts").iterdir())
    assert len(index["chunks"]) > 2 and files[-1] == "index.json"
    assert (
        json.loads((tmp_path / "acts" / "index.json").read_text())["n_tokens"] == index["n_tokens"]
    )
    assert index["d_model"] == {h: llama.config.hidden_size for h in hooks}
    in_memory = A.capture(llama, tok, texts, hooks, batch_size=2)
    loaded = A.load_activations(tmp_path / "acts")
    assert torch.equal(loaded.doc, in_memory.doc) and torch.equal(loaded.tokens, in_memory.tokens)
    for h in hooks:
        assert torch.allclose(loaded.acts[h], in_memory.acts[h])
    assert all(len(c.tokens) >= 40 for c in list(A.iter_chunks(tmp_path / "acts"))[:-1])
