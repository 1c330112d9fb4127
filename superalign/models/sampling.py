"""Batched sampling with a KV cache, and per-token log-probs, for any HF causal LM.

Prompts are left-padded and given explicit ``position_ids`` (cumulative sum of the attention
mask), so a padded row computes exactly what it would alone. ``Samples.logprobs`` are
log p(token | prefix) under the model at temperature 1 with no top-k/top-p filtering, i.e.
the quantity KL estimates and policy gradients need; :func:`token_logprobs` recomputes them
teacher-forced, and a test checks that the two agree.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def default_device() -> torch.device:
    """cuda when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_arg(model: Any, cache: Any) -> dict[str, Any]:
    """``cache`` under the keyword ``model.forward`` takes a key/value cache by: ``cache``
    (transformers 5.x, where ``past_key_values`` is deprecated) or ``past_key_values`` (4.x)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    return {_cache_keyword(type(base)): cache}


def output_cache(out: Any) -> Any:
    """The key/value cache a forward pass returned: ``out.cache`` (transformers 5.x, where
    reading ``out.past_key_values`` warns that it is deprecated) or ``out.past_key_values``."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """Read once per model class: the signature is looked up on every generated token."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class Samples:
    """Completions of a batch of prompts (one row per prompt)."""

    prompts: list[str]
    texts: list[str]
    """Decoded completions, cut before the first stop string if one was hit."""
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    """Sampled tokens (EOS included when the model emitted it)."""
    logprobs: list[list[float]]
    """log p(token) per completion token under the unmodified model (temperature 1)."""
    finished: list[bool]
    """Whether a row stopped on EOS or a stop string (False: it hit ``max_new_tokens``)."""

    def __len__(self) -> int:
        return len(self.texts)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, special tokens as the tokenizer adds them by default."""
    return [tokenizer(p)["input_ids"] for p in prompts]


def left_pad(
    rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad rows into ``(input_ids, attention_mask, position_ids)``, each [batch, max_len]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    on_step: Callable[[int, list[list[int]]], bool] | None = None,
) -> Samples:
    """Sample one completion per prompt. ``temperature=0`` decodes greedily.

    Generation stops per row at EOS or when the decoded text contains a ``stop`` string.
    ``on_step(first, tokens)``, when given, is called after every decoding step with the index
    in ``prompts`` of the batch's first prompt and the tokens each row of that batch has so far;
    returning True stops all generation at once (rows not finished end as if they had reached
    ``max_new_tokens``, and later batches generate nothing). The server streams and enforces its
    time limit and client disconnects through it.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, not {temperature}")
    out = Samples(list(prompts), [], [], [], [], [])
    gen = None
    device = next(model.parameters()).device
    if seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    stopped = False

    def step(first: int, tokens: list[list[int]]) -> bool:
        nonlocal stopped
        stopped = stopped or (on_step is not None and on_step(first, tokens))
        return stopped

    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        part = _sample_batch(
            model,
            tokenizer,
            chunk,
            0 if stopped else max_new_tokens,
            temperature,
            top_k,
            top_p,
            stop or [],
            gen,
            lambda tokens, first=start: step(first, tokens),
        )
        for name in ("texts", "prompt_ids", "completion_ids", "logprobs", "finished"):
            getattr(out, name).extend(getattr(part, name))
    return out


def _sample_batch(
    model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p, stop, gen, on_step
) -> Samples:
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids))
    prompt_ids = encode_prompts(tokenizer, prompts)
    if max_new_tokens == 0:  # nothing to generate (or generation was stopped): no forward
        n = len(prompts)
        return Samples(
            list(prompts),
            [""] * n,
            prompt_ids,
            [[] for _ in prompts],
            [[] for _ in prompts],
            [False] * n,
        )
    ids, mask, pos = left_pad(prompt_ids, pad_id, device)
    batch = len(prompts)
    was_training = model.training
    model.eval()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache, logits = output_cache(out), out.logits[:, -1].float()
    next_pos = pos[:, -1:] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    logps: list[list[float]] = [[] for _ in range(batch)]
    finished = [False] * batch
    for _ in range(max_new_tokens):
        logp = F.log_softmax(logits, dim=-1)  # [batch, vocab]
        if temperature == 0:
            tok = logits.argmax(-1)
        else:
            probs = _filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            tok = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        tok_logp = logp.gather(-1, tok[:, None]).squeeze(-1)
        for i in torch.nonzero(~done).flatten().tolist():
            t = int(tok[i])
            tokens[i].append(t)
            logps[i].append(float(tok_logp[i]))
            if t in eos_ids or (stop and _hit_stop(tokenizer, tokens[i], stop)):
                done[i] = True
                finished[i] = True
        if bool(done.all()) or on_step(tokens):
            break
        tok = tok.masked_fill(done, pad_id)
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            **cache_arg(model, cache),
        )
        cache, logits = output_cache(out), out.logits[:, -1].float()
        next_pos = next_pos + 1
    model.train(was_training)
    texts = [completion_text(tokenizer, row, eos_ids, stop) for row in tokens]
    return Samples(list(prompts), texts, prompt_ids, tokens, logps, finished)


@torch.no_grad()
def token_logprobs(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int = 0,
    batch_size: int = 64,
) -> list[list[float]]:
    """Teacher-forced log p(completion token | prompt, earlier tokens), per token."""
    out: list[list[float]] = []
    for s in range(0, len(prompt_ids), batch_size):
        out += [
            row.tolist()
            for row in completion_logprobs(
                model, prompt_ids[s : s + batch_size], completion_ids[s : s + batch_size], pad_id
            )
        ]
    return out


def completion_logprobs(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int = 0,
) -> list[torch.Tensor]:
    """Differentiable per-token log-probs of each completion given its prompt (one forward).

    Rows are left-padded with explicit position ids, exactly as :func:`sample` runs them.
    Returns one 1-D tensor per row, of the completion's length.
    """
    device = next(model.parameters()).device
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    ids, mask, pos = left_pad(rows, pad_id, device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()  # [B, T, V]
    logp = (
        F.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    )  # [B, T-1]
    width = ids.shape[1]
    return [
        logp[i, width - 1 - len(c) :] if c else logp.new_zeros(0)
        for i, c in enumerate(completion_ids)
    ]


def completion_text(
    tokenizer: PreTrainedTokenizerBase, tokens: list[int], eos_ids: set[int], stop: list[str]
) -> str:
    """A completion's text as :class:`Samples` holds it: EOS left out, cut before a stop string."""
    return _cut(tokenizer.decode([t for t in tokens if t not in eos_ids]), stop)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every token id that ends generation (from the generation config, model config, tokenizer)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        e = getattr(source, "eos_token_id", None)
        if e is not None:
            ids.update(e if isinstance(e, (list, tuple)) else [e])
    return ids


def _hit_stop(tokenizer: PreTrainedTokenizerBase, row: list[int], stop: list[str]) -> bool:
    tail = tokenizer.decode(row[-16:])  # a stop string completes within the last few tokens
    return any(s in tail for s in stop)


def _cut(text: str, stop: list[str] | None) -> str:
    for s in stop or []:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text
