"""A trained reward model as an overseer: ``score(prompts, completions)`` -> one scalar each.

``RewardModelOverseer.load(path)`` reads a ``reward_model`` run folder (its ``model/``) or any
model folder holding a sequence-classification model with one output (``num_labels=1``), such
as ``save_pretrained`` of a TRL reward model.

A completion is scored exactly as TRL's ``RewardTrainer`` trained on it: the text
``prompt + completion + EOS`` (EOS appended unless the completion already ends with it),
tokenized with the tokenizer's defaults, **right-padded** in batches. Hugging Face's
``*ForSequenceClassification`` models read the reward at the rightmost token that is not
``pad_token_id``; with right padding that is the sequence's own last token, and since attention
is causal the padding after it changes nothing, so a batch scores each row as it would alone.
(Left padding would also find the right token, but would shift the positions of the real
tokens unless position ids were passed, and change the rewards.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from superalign.models.sampling import default_device
from superalign.runs import fingerprint, read_json


@dataclass
class RewardModelOverseer:
    """Scores completions with a sequence-classification reward model (higher is better)."""

    model: PreTrainedModel
    """A ``*ForSequenceClassification`` model with one output; its config sets ``pad_token_id``."""
    tokenizer: PreTrainedTokenizerBase
    batch_size: int = 64
    """Sequences per forward pass."""
    info: dict[str, Any] = field(default_factory=dict)
    """JSON-able record of where the model came from (``path``, ``model_path``, fingerprint)."""

    @classmethod
    def load(
        cls, path: str, batch_size: int = 64, device: str | None = None
    ) -> RewardModelOverseer:
        """The reward model in ``path`` (a ``reward_model`` run folder or a model folder);
        ``device`` defaults to cuda when present, else CPU. These are its ``overseer_options``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        root = Path(path).expanduser()
        folder = model_folder(root)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
        device = torch.device(device) if device else default_device()
        model = model.to(device).eval()
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        info = {
            "overseer": "reward_model",
            "path": str(root.resolve()),
            "model_path": str(folder.resolve()),
            "fingerprint": fingerprint(root),
            "model_class": type(model).__name__,
        }
        return cls(model, tokenizer, batch_size, info)

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return reward_scores(self.model, self.tokenizer, prompts, completions, self.batch_size)


def model_folder(path: Path) -> Path:
    """The folder holding the reward model: ``path/model`` for a run folder, else ``path``.
    Raises ``ValueError`` when it holds no one-output sequence-classification model."""
    if (path / "model").is_dir() or (path / "summary.json").is_file():
        if not (path / "summary.json").is_file():
            raise ValueError(
                f"run folder {path} has no summary.json: its stage has not finished; "
                "run it again to finish it"
            )
        path = path / "model"
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{path} holds no model (no config.json): give a reward_model run folder "
            "or a folder saved from a sequence-classification model"
        )
    config = read_json(path / "config.json")
    arch = config.get("architectures") or ["?"]
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if not any(a.endswith("ForSequenceClassification") for a in arch) or labels != 1:
        raise ValueError(
            f"{path} holds a {arch[0]} with {labels} outputs, not a reward model "
            "(a *ForSequenceClassification model with num_labels=1); train one with "
            "`superalign reward_model`"
        )
    return path


def reward_inputs(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]
) -> list[list[int]]:
    """Token ids of ``prompt + completion + EOS`` per row, as TRL's RewardTrainer builds them
    (it appends the EOS string unless the completion ends with it, then tokenizes the text)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    eos = tokenizer.eos_token or ""
    return [
        tokenizer(p + c + ("" if c.endswith(eos) else eos))["input_ids"]
        for p, c in zip(prompts, completions)
    ]


@torch.no_grad()
def reward_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    batch_size: int = 64,
) -> list[float]:
    """The reward of each (prompt, completion), right-padded in batches of ``batch_size``
    (rows of similar length batched together, so that little compute goes to padding)."""
    rows = reward_inputs(tokenizer, prompts, completions)
    pad = model.config.pad_token_id
    if pad is None:
        raise ValueError("the reward model's config has no pad_token_id; set it to the tokenizer's")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = [0.0] * len(rows)
    for start in range(0, len(rows), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)  # [batch, width]
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(rows[i])] = torch.tensor(rows[i])
            mask[j, : len(rows[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [b, 1]
        for i, r in zip(idx, logits[:, 0].float().tolist()):
            out[i] = r
    model.train(was_training)
    return out
