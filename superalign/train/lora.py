"""LoRA (low-rank adapters, Hu et al. 2021) for the stages that fine-tune a language model:
``sft``, ``dpo``, ``rl`` and ``organism``, through the ``peft`` library.

With ``lora=true`` the base weights stay frozen and only rank-``lora_rank`` adapters on the
``lora_targets`` modules train (scaled by ``lora_alpha / lora_rank``). The TRL stages pass
:func:`lora_config` to their trainer as ``peft_config``; a hand-written loop (the organism's
implanting fine-tune) calls :func:`wrap`. Either way the trained model is a ``PeftModel``, and
:func:`save` writes it twice:

- ``adapter/``: the adapter alone (``adapter_config.json``, ``adapter_model.safetensors``) and the
  tokenizer, for ``peft.PeftModel.from_pretrained(base, "adapter")``;
- ``model/``: the adapter merged into the base weights (``merge_and_unload``): a plain model
  folder, so the run folder stays a ``load_model`` spec for the next stage, as without LoRA.

A model that is not a ``PeftModel`` is saved to ``model/`` alone, as before. The reference of
DPO and GRPO / RLOO under LoRA is the base model, i.e. the policy with its adapter disabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superalign.config import ConfigError
from superalign.runs import Run, atomic_dir

FIELDS: tuple[str, ...] = ("lora", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")
"""The LoRA fields of a config, as a nested stage receives them from its parent."""


@dataclass
class LoRAFields:
    """The LoRA fields a fine-tuning stage's config shares (a dataclass mixin)."""

    lora: bool = False
    """Train LoRA adapters on a frozen base instead of every weight; saves ``adapter/`` and the
    merged ``model/`` (see ``superalign.train.lora``)."""
    lora_rank: int = 8
    """Rank of each adapter (``r``)."""
    lora_alpha: int = 16
    """Adapter scale: its update is multiplied by ``lora_alpha / lora_rank``."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input, in [0, 1)."""
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Names of the modules that get adapters (Llama: ``q_proj``, ``k_proj``, ``v_proj``,
    ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``), or ``[all-linear]``: every linear
    layer but the output head."""


def check(cfg: LoRAFields) -> None:
    """Raise :class:`ConfigError` on a LoRA field that ``peft`` would reject (a config's
    ``__post_init__`` calls it)."""
    if cfg.lora_rank < 1:
        raise ConfigError(f"lora_rank must be at least 1 (e.g. lora_rank=8), not {cfg.lora_rank}")
    if cfg.lora_alpha < 1:
        raise ConfigError(
            f"lora_alpha must be at least 1 (e.g. lora_alpha=16, twice the rank), not "
            f"{cfg.lora_alpha}"
        )
    if not 0 <= cfg.lora_dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), not {cfg.lora_dropout}")
    if not cfg.lora_targets or ("all-linear" in cfg.lora_targets and len(cfg.lora_targets) > 1):
        raise ConfigError(
            f"lora_targets must name modules (e.g. lora_targets=[q_proj,v_proj]) or be "
            f"[all-linear] alone, not {cfg.lora_targets}"
        )


def fields(cfg: LoRAFields) -> dict[str, Any]:
    """The LoRA fields of ``cfg`` by name, for a nested stage's config (the organism's safety
    training and reward-hacking RL train with LoRA when the organism does)."""
    return {name: getattr(cfg, name) for name in FIELDS}


def trl_reference(cfg: Any, reference: Any) -> Any:
    """The reference model to hand TRL: None under LoRA when the config names no ``reference``
    (TRL then uses the policy with its adapter disabled, i.e. the base), else ``reference``."""
    return None if cfg.lora and not cfg.reference else reference


def lora_config(cfg: LoRAFields) -> Any:
    """The ``peft.LoraConfig`` of ``cfg`` for a causal LM, or None when ``cfg.lora`` is off."""
    if not cfg.lora:
        return None
    from peft import LoraConfig, TaskType

    targets = cfg.lora_targets
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
    )


def wrap(model: Any, cfg: LoRAFields) -> Any:
    """``model`` with fresh LoRA adapters (``peft.get_peft_model``: only they train) when
    ``cfg.lora`` is on, else ``model`` itself. For hand-written loops; TRL trainers take
    :func:`lora_config` as ``peft_config`` instead."""
    if not cfg.lora:
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg))


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (a base with adapters)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def summary(model: Any, cfg: LoRAFields) -> dict[str, Any]:
    """``{"lora": {rank, alpha, targets, trainable_params, total_params}}`` of a ``PeftModel``
    (parameters counted once, adapters included in the total), for a stage's summary; ``{}``
    without LoRA. Call it before :func:`save`, which merges the adapters away."""
    if not is_peft(model):
        return {}
    trainable, total = model.get_nb_trainable_parameters()
    return {
        "lora": {
            "rank": cfg.lora_rank,
            "alpha": cfg.lora_alpha,
            "targets": list(cfg.lora_targets),
            "trainable_params": trainable,
            "total_params": total,
        }
    }


def save(
    model: Any, tokenizer: Any, where: Run | str | Path, adapter_dir: str | Path | None = None
) -> Any:
    """Save ``model`` and ``tokenizer`` as a plain model folder (``save_pretrained``, atomic):
    ``where``'s ``model/`` when it is a run, else the folder ``where``.

    A ``PeftModel`` first saves its adapter and the tokenizer to ``adapter_dir`` (default:
    ``adapter/`` beside the model folder), then is merged into its base in place
    (``merge_and_unload``) and that base is saved. Returns the model saved: the merged base for a
    ``PeftModel`` (do not use ``model`` after), else ``model``."""
    model_dir = where.path("model") if isinstance(where, Run) else Path(where)
    if is_peft(model):
        with atomic_dir(adapter_dir or model_dir.with_name("adapter")) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        model = model.merge_and_unload()
    with atomic_dir(model_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return model
