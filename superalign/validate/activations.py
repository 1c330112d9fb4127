"""Activation capture on any Hugging Face causal LM, under uniform dotted hook names.

Hook names follow TransformerLens. For block ``i`` (0-based) of a model with ``n_layers`` blocks
and residual width ``d_model``:

- ``blocks.{i}.hook_resid_pre``: the residual stream entering block ``i``, [batch, pos, d_model]
  (for ``i = 0``: the token embeddings, plus position embeddings where the model adds them);
- ``blocks.{i}.hook_resid_post``: the residual stream leaving block ``i``, [batch, pos, d_model]
  (equal to ``blocks.{i+1}.hook_resid_pre``);
- ``blocks.{i}.hook_mlp_out``: the output of block ``i``'s MLP before it is added to the
  residual stream, [batch, pos, d_model].

Blocks are found as ``model.model.layers`` (Llama, Mistral, Qwen, Gemma, SmolLM),
``model.transformer.h`` (GPT-2, GPT-J) or ``model.gpt_neox.layers`` (Pythia), and hooked with
PyTorch forward (pre-)hooks. A model with none of these gives ``hook_resid_pre`` /
``hook_resid_post`` from ``output_hidden_states`` instead (``hidden_states[i]`` and
``hidden_states[i + 1]``); there the last block's ``resid_post`` is what the model returns as its
last hidden state, which many models (Llama among them) take after the final norm.

Texts are tokenized with the tokenizer's default special tokens, left-padded with explicit
``position_ids`` (so a padded row computes what it would alone) and the pads dropped: an
:class:`Activations` holds one row per real token, flattened over texts, with the token id, the
text index and the position of each row. :func:`stream_to_disk` writes the same rows in chunks
of safetensors files with an ``index.json`` (for runs larger than memory) and
:func:`iter_chunks` / :func:`load_activations` read them back. :func:`edit_hook` changes an
activation in place during a forward (steering, ablation).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from superalign.models.sampling import left_pad
from superalign.runs import atomic_dir, atomic_write_json, read_json

HOOK_POINTS = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out")
"""The hook points of every block (see the module docstring for their meaning and shape)."""
_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_mlp_out)$")
_BLOCK_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers")
_META = ("tokens", "doc", "pos")

EditFn = Callable[[torch.Tensor], torch.Tensor]
"""Takes an activation [batch, pos, d_model] and returns the one the model continues with."""


def parse_hook(name: str) -> tuple[int, str]:
    """``"blocks.3.hook_resid_post"`` -> ``(3, "hook_resid_post")``."""
    m = _HOOK.match(name)
    if not m:
        raise ValueError(
            f"hook name {name!r} is not blocks.<i>.<point> with point one of {HOOK_POINTS}"
        )
    return int(m[1]), m[2]


def hook_name(layer: int, point: str = "hook_resid_post") -> str:
    """The dotted name of ``point`` at block ``layer``."""
    return f"blocks.{layer}.{point}"


def decoder_blocks(model: nn.Module) -> list[nn.Module] | None:
    """The model's transformer blocks in order, or None when their path is not a known one."""
    for path in _BLOCK_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return list(obj)
    return None


def n_blocks(model: nn.Module) -> int:
    """Number of transformer blocks (from the module tree, else ``config.num_hidden_layers``)."""
    blocks = decoder_blocks(model)
    return len(blocks) if blocks is not None else int(model.config.num_hidden_layers)


@dataclass
class Activations:
    """Activations of a set of texts, one row per real (non-pad) token, texts concatenated."""

    acts: dict[str, torch.Tensor]
    """Hook name -> [n_tokens, d_model] (float32 unless stored otherwise)."""
    tokens: torch.Tensor
    """[n_tokens] token id of each row."""
    doc: torch.Tensor
    """[n_tokens] index of the text each row belongs to."""
    pos: torch.Tensor
    """[n_tokens] position of the row's token in its text (0-based)."""

    @property
    def n_docs(self) -> int:
        return int(self.doc.max()) + 1 if len(self.doc) else 0

    def last(self, name: str) -> torch.Tensor:
        """[n_docs, d_model]: the activation at each text's last token."""
        return self.last_k(name, 1)

    def last_k(self, name: str, k: int) -> torch.Tensor:
        """[n_docs, k * d_model]: the activations at each text's last ``k`` tokens,
        concatenated earliest first (a text shorter than ``k`` repeats its first token)."""
        is_last = torch.ones_like(self.doc, dtype=torch.bool)
        is_last[:-1] = self.doc[1:] != self.doc[:-1]
        ends = torch.nonzero(is_last).squeeze(1)
        starts = torch.searchsorted(self.doc, torch.arange(self.n_docs))
        x = self.acts[name]
        return torch.cat([x[torch.maximum(ends - j, starts)] for j in range(k - 1, -1, -1)], 1)

    def mean(self, name: str) -> torch.Tensor:
        """[n_docs, d_model]: the mean activation over each text's tokens."""
        x = self.acts[name]
        total = torch.zeros(self.n_docs, x.shape[1], dtype=x.dtype).index_add_(0, self.doc, x)
        return total / torch.bincount(self.doc, minlength=self.n_docs)[:, None].to(x.dtype)

    def at(self, name: str, positions: Sequence[int]) -> torch.Tensor:
        """[n_docs, d_model]: the activation at token ``positions[j]`` of text ``j``."""
        starts = torch.searchsorted(self.doc, torch.arange(self.n_docs))
        return self.acts[name][starts + torch.as_tensor(positions)]

    def per_doc(self, name: str) -> list[torch.Tensor]:
        """The rows of each text, [len_j, d_model] for text j."""
        counts = torch.bincount(self.doc, minlength=self.n_docs).tolist()
        return list(torch.split(self.acts[name], counts))


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def _hooks(model: nn.Module, fns: dict[str, EditFn]) -> Iterator[None]:
    """Register forward hooks that pass each named activation through its function."""
    blocks = decoder_blocks(model)
    if blocks is None:
        raise ValueError(
            f"{type(model).__name__} has no known block list ({', '.join(_BLOCK_PATHS)}); only "
            "reading resid_pre / resid_post through output_hidden_states works for it"
        )
    handles = []
    try:
        for name, fn in fns.items():
            layer, point = parse_hook(name)
            if layer >= len(blocks):
                raise ValueError(f"{name}: the model has {len(blocks)} blocks")
            block = blocks[layer]
            if point == "hook_resid_pre":
                handles.append(block.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True))
            elif point == "hook_resid_post":
                handles.append(block.register_forward_hook(_post_hook(fn)))
            else:
                mlp = getattr(block, "mlp", None)
                if mlp is None:
                    raise ValueError(f"{name}: block {layer} has no .mlp module")
                handles.append(mlp.register_forward_hook(_post_hook(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


def _pre_hook(fn: EditFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return hook


def _post_hook(fn: EditFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple, out: Any) -> Any:
        new = fn(_block_output(out))
        return (new, *out[1:]) if isinstance(out, tuple) else new

    return hook


@contextlib.contextmanager
def edit_hook(model: nn.Module, name: str, fn: EditFn) -> Iterator[None]:
    """While the context is open, activation ``name`` [batch, pos, d_model] is replaced by
    ``fn(activation)`` in every forward (e.g. ``lambda x: x + alpha * direction`` to steer)."""
    with _hooks(model, {name: fn}):
        yield


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    rows = [tokenizer(t)["input_ids"] for t in texts]
    if any(not r for r in rows):
        raise ValueError("a text encodes to no tokens; drop empty texts before capturing")
    return rows


@torch.no_grad()
def capture_batches(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    hooks: Sequence[str],
    batch_size: int = 32,
    fallback: bool = False,
) -> Iterator[Activations]:
    """:class:`Activations` of ``texts`` batch by batch (``doc`` indexes into ``texts``).

    ``fallback=True`` reads ``output_hidden_states`` even when the blocks are known (it is
    used anyway when they are not).
    """
    for name in hooks:
        parse_hook(name)
    use_states = fallback or decoder_blocks(model) is None
    if use_states and any(parse_hook(h)[1] == "hook_mlp_out" for h in hooks):
        raise ValueError("hook_mlp_out needs the model's blocks; output_hidden_states lacks it")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    rows = _encode(tokenizer, texts)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask, pos = left_pad(chunk, pad, device)  # each [batch, width]
        seen: dict[str, torch.Tensor] = {}
        if use_states:
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=False,
                output_hidden_states=True,
            )
            for name in hooks:
                layer, point = parse_hook(name)
                seen[name] = out.hidden_states[layer + (point == "hook_resid_post")]
        else:
            fns = {name: _recorder(seen, name) for name in hooks}
            with _hooks(model, fns):
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        keep = mask.bool()  # [batch, width]
        doc = torch.arange(start, start + len(chunk), device=device)[:, None].expand_as(ids)
        yield Activations(
            acts={n: seen[n][keep].float().cpu() for n in hooks},
            tokens=ids[keep].cpu(),
            doc=doc[keep].cpu(),
            pos=pos[keep].cpu(),
        )


def _recorder(store: dict[str, torch.Tensor], name: str) -> EditFn:
    def record(x: torch.Tensor) -> torch.Tensor:
        store[name] = x.detach()
        return x

    return record


def capture(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    hooks: Sequence[str],
    batch_size: int = 32,
    fallback: bool = False,
) -> Activations:
    """:class:`Activations` of all ``texts`` in memory (see :func:`capture_batches`)."""
    return concat(list(capture_batches(model, tokenizer, texts, hooks, batch_size, fallback)))


def concat(parts: Sequence[Activations]) -> Activations:
    """One :class:`Activations` from several (their ``doc`` indices are kept as they are)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    return Activations(
        acts={n: torch.cat([p.acts[n] for p in parts]) for n in parts[0].acts},
        tokens=torch.cat([p.tokens for p in parts]),
        doc=torch.cat([p.doc for p in parts]),
        pos=torch.cat([p.pos for p in parts]),
    )


# --- streaming to disk --------------------------------------------------------------------------

INDEX = "index.json"


def stream_to_disk(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    hooks: Sequence[str],
    out_dir: str | Path,
    batch_size: int = 32,
    chunk_tokens: int = 65536,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Capture ``hooks`` on ``texts`` and write them to ``out_dir`` in chunks of about
    ``chunk_tokens`` rows: ``chunk-00000.safetensors``, ... (tensors named by hook, plus
    ``tokens``, ``doc``, ``pos``) and ``index.json``. Memory holds one chunk at a time; the folder
    appears whole when done (:func:`~superalign.runs.atomic_dir`). Returns the index."""
    chunks: list[dict[str, Any]] = []
    pending: list[Activations] = []

    def flush(tmp: Path) -> None:
        part = concat(pending)
        tensors = {n: x.to(dtype).contiguous() for n, x in part.acts.items()}
        tensors.update({k: getattr(part, k).contiguous() for k in _META})
        file = f"chunk-{len(chunks):05d}.safetensors"
        save_file(tensors, str(tmp / file))
        chunks.append({"file": file, "n_tokens": len(part.tokens)})
        pending.clear()

    with atomic_dir(out_dir) as tmp:
        for part in capture_batches(model, tokenizer, texts, hooks, batch_size):
            pending.append(part)
            if sum(len(p.tokens) for p in pending) >= chunk_tokens:
                flush(tmp)
        if pending:
            flush(tmp)
        index = {
            "hooks": list(hooks),
            "d_model": {n: int(chunk_width(tmp, chunks, n)) for n in hooks},
            "dtype": str(dtype).removeprefix("torch."),
            "n_docs": len(texts),
            "n_tokens": sum(c["n_tokens"] for c in chunks),
            "chunks": chunks,
            "layout": "one row per non-pad token; doc = text index, pos = position in text",
        }
        atomic_write_json(tmp / INDEX, index)
    return index


def chunk_width(folder: Path, chunks: list[dict[str, Any]], name: str) -> int:
    if not chunks:
        return 0
    return load_file(str(folder / chunks[0]["file"]))[name].shape[1]


def iter_chunks(folder: str | Path, hooks: Sequence[str] | None = None) -> Iterator[Activations]:
    """The chunks written by :func:`stream_to_disk`, in order, as float32 :class:`Activations`."""
    folder = Path(folder)
    index = read_json(folder / INDEX)
    names = list(hooks) if hooks is not None else index["hooks"]
    for c in index["chunks"]:
        t = load_file(str(folder / c["file"]))
        yield Activations({n: t[n].float() for n in names}, t["tokens"], t["doc"], t["pos"])


def load_activations(folder: str | Path, hooks: Sequence[str] | None = None) -> Activations:
    """Everything :func:`stream_to_disk` wrote to ``folder``, in memory."""
    return concat(list(iter_chunks(folder, hooks)))
