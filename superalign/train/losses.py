"""Loss functions of the training stages, as small pure functions tests can check."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from superalign.models.sampling import completion_logprobs


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean -log sigma(r_chosen - r_rejected): the negative log-likelihood of the preferences
    under the Bradley-Terry model P(a > b) = sigma(r_a - r_b) (as TRL's RewardTrainer)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def bradley_terry_prob(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """P(a is preferred to b) under Bradley-Terry."""
    return torch.sigmoid(r_a - r_b)


def completion_nll(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
) -> torch.Tensor:
    """Mean negative log-likelihood of the completion tokens given their prompts (each token
    weighs the same; the prompt is context only): the supervised fine-tuning loss, with grad."""
    return -torch.cat(completion_logprobs(model, prompt_ids, completion_ids, pad_id)).mean()
