"""Stage ``interp``: linear probes (supervised, and CCS) with their transfer across datasets, a
sparse autoencoder, explain-simulate-score and a causal steering check on one model.

``superalign interp model=runs/pretrain-1a2b`` loads any ``load_model`` spec and:

1. **probes**: for each contrast dataset in ``datasets`` (:data:`~superalign.validate.probes.
   DATASETS`, or a JSON-lines file of ``{"text", "label"}``), captures
   ``blocks.{i}.hook_resid_post`` at every layer in ``layers`` at each text's last token (or the
   mean over its tokens), deduplicates the texts, holds out ``test_share`` of their groups
   (entities, problems) as a test split, chooses the layer by grouped cross-validation on the
   rest (``layer_rule``) and reports that layer's logistic-regression probe and its mass-mean
   probe (Marks & Tegmark 2023) on the test split
   (:func:`~superalign.validate.probes.probe_layers`); the ``world`` datasets are the task's
   paired true/false statements, grouped by entity. Each probe is then scored, not refitted, on
   every ``transfer`` dataset at its chosen layer (that dataset's statements about entities the
   training dataset does not have: :func:`~superalign.validate.probes.transfer_items`); and, for
   ``world``
   datasets by default, CCS (:mod:`superalign.validate.ccs`) is fitted without labels beside it,
   its sign and layer chosen on a validation split of the non-test groups;
2. **sae**: streams ``blocks.{sae_layer}.hook_resid_post`` of ``sae_texts`` texts of the task's
   pretraining corpus (train split) to disk in safetensors chunks, trains a TopK SAE on the
   tokens of the first ``1 - sae_heldout`` of the texts and measures FVU, L0 and dead latents on
   the rest;
3. **autointerp**: explains ``n_explain`` randomly chosen live latents from their top-activating
   texts, simulates and scores each explanation on held-out texts; as a control, every
   explanation is also scored on another latent's held-out texts;
4. **steer** (arithmetic; with the SAE, off by default for ``task=world``): the difference of the mean ``resid_post`` at the operator token of
   ``a-b`` and ``a+b`` prompts, at ``steer_hook``, is added (times ``steer_scale``) at the
   operator token of ``+`` prompts (and subtracted for ``-`` prompts); the behaviour is the
   operator the model writes when it copies the problem into its first solution line
   (teacher-forced after ``"Q: a+b\\na"``), and the greedy final answer. A random direction of the
   same norm is the control. Ablation projects the direction out at the operator token.

Metrics (``metrics.jsonl``; step 0 unless said otherwise), all documented in
docs/stages/interp.md:

- ``probe/<dataset>/auroc``, ``probe/<dataset>/auroc_low``, ``probe/<dataset>/auroc_high``,
  ``probe/<dataset>/accuracy``, ``probe/<dataset>/n``: the chosen layer's AUROC on the held-out
  test groups with its 95% bootstrap interval (over test groups), its accuracy and the test
  texts scored; ``probe/<dataset>/layer``; ``probe/<dataset>/n_texts``, ``probe/<dataset>/n_groups``:
  distinct texts and groups used; ``probe/<dataset>/auroc_by_layer`` (and ``auroc_std_by_layer``)
  at step = layer: cross-validated AUROC on the non-test groups, what the layer is chosen by;
- ``transfer/<train>-><test>/auroc`` (``_low``, ``_high``, ``n``): the ``<train>`` probe on the
  ``<test>`` dataset; ``mass_mean/<dataset>/auroc`` (``_low``, ``_high``, ``n``) and
  ``transfer/mass_mean/<train>-><test>/auroc`` (...): the same for the mass-mean probe, at the
  same layer; ``ccs/<dataset>/auroc`` (``_low``, ``_high``, ``n``, ``layer``),
  ``ccs/<dataset>/auroc_by_layer`` (validation, at step = layer) and
  ``transfer/ccs/<train>-><test>/auroc`` (...): the same for CCS;
- ``sae/loss`` at step = SAE step (every 50); ``sae/fvu``, ``sae/l0``, ``sae/dead_fraction`` on
  held-out activations, ``sae/fvu_train`` on the training ones;
- ``autointerp/score_mean``, ``autointerp/score_median``, ``autointerp/n``,
  ``autointerp/control_score_mean``;
- ``steer/effect``, ``steer/control_effect``, ``steer/base_rate``, ``steer/answer_flip``,
  ``steer/control_answer_flip``, ``ablate/effect``, ``ablate/control_effect``,
  ``ablate/base_accuracy``; ``steer/effect_by_layer`` at step = layer (steering at
  ``blocks.{layer}.hook_resid_pre`` with that hook's own direction).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from superalign.config import set_threads
from superalign.metrics import auroc_interval
from superalign.models.load import load_model
from superalign.runs import Run, atomic_write_json
from superalign.tasks import get_task
from superalign.tasks.arithmetic import parse_problem
from superalign.validate import activations as A
from superalign.validate.autointerp import LLMExplainer, explain_latents, heuristic_explain
from superalign.validate.ccs import ccs_layers, ccs_scores, contrast_pair, normalize_pairs
from superalign.validate.probes import (
    LAYER_RULES,
    WORLD_DATASETS,
    Contrast,
    contrast_dataset,
    mean_difference,
    probe_layers,
    transfer_items,
)
from superalign.validate.sae import SAEConfig, sae_stats, save_sae, train_sae

PROBE_CS = (0.01, 0.1, 1.0)
"""Inverse L2 strengths the probe of a ``world`` dataset chooses among (``probe_c=None``)."""


@dataclass
class InterpConfig:
    """Probe, decompose and steer one model's residual stream."""

    model: str = ""
    """Model to inspect: a ``load_model`` spec (run folder, model folder, preset, hub id).
    Required. A path is fingerprinted into the cache key."""
    task: str = "arithmetic"
    """Task family whose pretraining corpus (train split) feeds the SAE."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task family, also used by the built-in contrast datasets."""
    datasets: list[str] = field(default_factory=lambda: ["arith_true_false", "arith_op"])
    """Contrast datasets to probe: names from ``superalign.validate.probes.DATASETS``
    (arith_true_false, arith_op, facts_true_false, facts_belief, and the ``world`` statements
    cities, capitals, continents, currencies, hypernyms) or paths to JSON-lines files of
    ``{"text": ..., "label": 0|1}`` (e.g. triggered vs untriggered prompts)."""
    transfer: list[str] = field(default_factory=list)
    """Datasets (names or paths, as ``datasets``) that each probe of ``datasets`` is tested on
    without retraining, at its chosen layer: ``transfer/<train>-><test>/auroc``."""
    n_probe: int = 0
    """Rows per built-in contrast dataset (half of each label); 0: 400, or for a ``world``
    dataset one true and one false statement per entity (1,200 for cities). Repeated texts are
    dropped before probing, so fewer distinct texts may be used (``n_texts`` in the summary)."""
    ccs: bool | None = None
    """Also fit contrast-consistent search (unsupervised; :mod:`superalign.validate.ccs`) beside
    each supervised probe, and test it on ``transfer``. None: only for ``world`` datasets (CCS
    asks whether a statement is true; an operator or a trigger is not a statement)."""
    ccs_restarts: int = 10
    """Random initialisations of each CCS fit; the lowest CCS loss is kept."""
    ccs_steps: int = 1000
    """Full-batch AdamW steps of each CCS fit."""
    layers: list[int] = field(default_factory=list)
    """Blocks whose ``hook_resid_post`` is probed; empty: all."""
    position: Literal["last", "last2", "mean"] | None = None
    """Probe features: the activation at each text's last token (``last``), at its last two
    tokens concatenated (``last2``: a statement's final word piece and its period), or the mean
    over its tokens. None: ``last2`` for ``world`` datasets (on SmolLM2 the cities probe reads
    0.946-0.967 held out on seeds 0-4, against 0.943-0.962 at the last token alone, and higher
    on four of five seeds never used to choose it; docs/stages/interp.md), ``last`` otherwise."""
    folds: int = 5
    """Grouped cross-validation folds on the non-test groups, over which each layer is scored
    to choose the probe's layer."""
    layer_rule: Literal["best", "one_se"] | None = None
    """How the probe's layer is chosen from those validation scores: ``best`` (highest AUROC) or
    ``one_se`` (the earliest layer within one standard error of the best; see
    ``superalign.validate.probes.choose_layer``). The test split plays no part in either. None:
    ``one_se`` for ``world`` datasets (on SmolLM2 it picks a middle block whose probe transfers
    to other topics; docs/stages/interp.md), ``best`` otherwise."""
    test_share: float = 0.25
    """Share of each contrast dataset's groups (entities, problems) held out as the test split:
    never used to fit a probe or choose its layer; the reported AUROC is on it."""
    probe_c: float | None = None
    """Inverse L2 strength of the logistic regression (on standardized features). None: for
    ``world`` datasets chosen with the layer, by the same cross-validation, among
    :data:`PROBE_CS` (SmolLM2's 576 features against ~900 fitting statements: at 1.0 the
    probe overfits, 0.937 held out on seed 1; docs/stages/interp.md); 1.0 otherwise."""
    sae_layer: int = -1
    """Block whose ``hook_resid_post`` the SAE decomposes; -1: the middle block (n_layers // 2)."""
    sae_texts: int = 2000
    """Corpus texts whose tokens feed the SAE."""
    sae_heldout: float = 0.2
    """Share of those texts held out for the SAE statistics and autointerp scoring."""
    sae_latents: int = 256
    """SAE dictionary size."""
    sae_k: int = 8
    """Active latents per token (TopK)."""
    sae_steps: int = 1500
    """SAE Adam steps."""
    sae_batch_size: int = 256
    """Activations per SAE step."""
    sae_lr: float = 1e-3
    """SAE learning rate."""
    sae_aux_k: int = 0
    """Dead latents in the auxiliary loss (0: none)."""
    chunk_tokens: int = 65536
    """Activation rows per safetensors chunk on disk."""
    keep_activations: bool = False
    """Keep the captured SAE activations (``activations/``) in the run folder."""
    n_explain: int = 32
    """Live latents to explain and score."""
    explain_top: int = 10
    """Top-activating texts shown to the explainer (as many more are held out for scoring)."""
    explain_random: int = 10
    """Random texts added to the held-out scoring set."""
    explainer: str = "heuristic"
    """``heuristic``, or a ``load_model`` spec / ``http(s)://`` URL of an LLM explainer."""
    sae: bool | None = None
    """Train the SAE on the task's corpus and explain its latents (autointerp). None: yes, except
    for ``task=world`` (a real model's SAE is another stage's work; the probes are the point)."""
    steer: bool | None = None
    """Run the causal check (needs a model that solves arithmetic in the task's format). None:
    only when ``task`` is arithmetic."""
    steer_hook: str = "blocks.0.hook_resid_pre"
    """Activation where the operator direction is found and added (a ``blocks.{i}.hook_*`` name).
    In the tiny models block 0's attention already copies the operator, so later hooks find the
    direction but steering there changes nothing; ``steer/effect_by_layer`` shows this."""
    steer_n: int = 200
    """Prompts in the steering check (half ``+``, half ``-``)."""
    steer_scale: float = 1.0
    """Multiple of the mean difference added (1: move a ``+`` operator onto the ``-`` mean)."""
    seed: int = 0
    """Seeds datasets, folds, the SAE, latent choice and the random control direction."""
    batch_size: int = 32
    """Texts per forward pass."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if not self.model:
            raise ConfigError("model is required: a load_model spec, e.g. model=runs/pretrain-1a2b")
        check_at_least(self, 0, "n_probe")
        check_at_least(self, 1, "sae_texts", "sae_latents", "sae_k", "sae_steps", "batch_size")
        check_at_least(self, 0, "sae_aux_k", "n_explain", "explain_random", "threads")
        if self.folds < 2:
            raise ConfigError(f"folds must be at least 2, not {self.folds}")
        if self.layer_rule is not None and self.layer_rule not in LAYER_RULES:
            raise ConfigError(
                f"layer_rule must be one of {', '.join(LAYER_RULES)}, not {self.layer_rule!r}"
            )
        if not 0 < self.test_share < 0.5:
            raise ConfigError(f"test_share must be in (0, 0.5), not {self.test_share}")
        if 0 < self.n_probe < 2 * self.folds:
            raise ConfigError(f"n_probe must be 0 or at least 2 * folds = {2 * self.folds}")
        if self.ccs_restarts < 1 or self.ccs_steps < 1:
            raise ConfigError("ccs_restarts and ccs_steps must be at least 1")
        if self.sae_k > self.sae_latents:
            raise ConfigError(f"sae_k ({self.sae_k}) cannot exceed sae_latents")
        if not 0 < self.sae_heldout < 1:
            raise ConfigError(f"sae_heldout must be in (0, 1), not {self.sae_heldout}")
        if self.explain_top < 1 or self.steer_n < 2 or self.chunk_tokens < 1:
            raise ConfigError("explain_top and chunk_tokens must be at least 1, steer_n 2")
        if not 0 < self.sae_lr < 1 or (self.probe_c is not None and self.probe_c <= 0):
            raise ConfigError("sae_lr must be in (0, 1) and probe_c positive")
        try:
            A.parse_hook(self.steer_hook)
        except ValueError as e:
            raise ConfigError(f"steer_hook: {e}") from None
        if self.position not in (None, "last", "last2", "mean"):
            raise ConfigError(
                f"position must be 'last', 'last2' or 'mean' (or unset), not {self.position!r}"
            )


def run(cfg: InterpConfig, run: Run) -> dict[str, Any]:
    """Probes, SAE, autointerp and the steering check; returns the summary."""
    set_threads(cfg.threads)
    model, tokenizer, info = load_model(cfg.model)
    model.eval()
    n_layers = A.n_blocks(model)
    summary: dict[str, Any] = {"model": info, "n_layers": n_layers}
    summary.update(probe_all(cfg, run, model, tokenizer, n_layers))
    family = cfg.task.split(":")[0]
    if cfg.sae if cfg.sae is not None else family != "world":
        sae_layer = cfg.sae_layer if cfg.sae_layer >= 0 else n_layers // 2
        summary.update(sae_and_autointerp(cfg, run, model, tokenizer, sae_layer))
    if cfg.steer if cfg.steer is not None else family == "arithmetic":
        summary["steer"] = steering_check(cfg, run, model, tokenizer)
    return summary


# --- probes -------------------------------------------------------------------------------------


def probe_all(cfg: InterpConfig, run: Run, model: Any, tokenizer: Any, n_layers: int) -> dict:
    """One probe per contrast dataset (and CCS where it applies): its layer chosen without the
    test split, its AUROC on it; then each probe, not refitted, on every ``transfer`` dataset.
    Returns ``{"probes", "ccs", "transfer"}`` details and the flat headline keys."""
    layers = cfg.layers or list(range(n_layers))
    results: dict[str, Any] = {}
    ccs_results: dict[str, Any] = {}
    fitted: dict[str, tuple[Contrast, Any, Any, str]] = {}  # name -> data, probe, CCS, position
    flat: dict[str, Any] = {}
    for kind in cfg.datasets:
        name = _name(kind)
        data = _contrast(cfg, kind)
        position = _position(cfg, kind)
        features = _features(cfg, model, tokenizer, data.texts, layers, position)  # layer -> [n, d]
        rule = _rule(cfg, kind)
        strength = _probe_c(cfg, kind)
        r = probe_layers(features, data, cfg.folds, strength, cfg.seed, cfg.test_share, rule)
        for layer in layers:
            run.log(
                layer,
                {
                    f"probe/{name}/auroc_by_layer": r.val_auroc[layer],
                    f"probe/{name}/auroc_std_by_layer": r.val_auroc_std[layer],
                },
            )
        results[name] = {
            "auroc": r.auroc,
            "auroc_low": r.auroc_low,
            "auroc_high": r.auroc_high,
            "accuracy": r.accuracy,
            "layer": r.layer,
            "n": r.n,
            "n_test_groups": r.n_test_groups,
            "n_texts": r.n_texts,
            "n_groups": r.n_groups,
            "n_rows": r.n_rows,
            "n_duplicates": r.n_duplicates,
            "n_conflicting": r.n_conflicting,
            "auroc_by_layer": {str(k): v for k, v in r.val_auroc.items()},
            "auroc_std_by_layer": {str(k): v for k, v in r.val_auroc_std.items()},
            "layer_rule": rule,
            "c": r.c,
            "position": position,
            "mass_mean": {
                "auroc": r.mass_mean_auroc,
                "auroc_low": r.mass_mean_auroc_low,
                "auroc_high": r.mass_mean_auroc_high,
                "n": r.n,
                "layer": r.layer,
            },
        }
        keys = [
            "auroc", "auroc_low", "auroc_high", "accuracy", "layer", "c", "n", "n_texts",
            "n_groups",
        ]  # fmt: skip
        logged = {f"probe/{name}/{k}": results[name][k] for k in keys}
        logged.update({f"mass_mean/{name}/{k}": results[name]["mass_mean"][k] for k in KEYS})
        c = None
        if _use_ccs(cfg, kind):
            pos, neg = _pair_features(cfg, model, tokenizer, data.texts, layers)
            c = ccs_layers(
                pos,
                neg,
                data.labels,
                r.split,
                cfg.test_share,
                cfg.ccs_restarts,
                cfg.ccs_steps,
                cfg.seed,
            )
            ccs_results[name] = {
                "auroc": c.auroc,
                "auroc_low": c.auroc_low,
                "auroc_high": c.auroc_high,
                "n": c.n,
                "layer": c.layer,
                "sign": c.probe.sign,
                "loss": c.probe.loss,
                "auroc_by_layer": {str(k): v for k, v in c.val_auroc.items()},
            }
            for layer in layers:
                run.log(layer, {f"ccs/{name}/auroc_by_layer": c.val_auroc[layer]})
            logged.update({f"ccs/{name}/{k}": ccs_results[name][k] for k in KEYS + ("layer",)})
        run.log(0, logged)
        flat.update(logged)
        fitted[name] = (data, r, c, position)
    transfer = transfer_all(cfg, run, model, tokenizer, fitted)
    for pair, t in transfer.items():
        flat.update({f"transfer/{pair}/{k}": t[k] for k in KEYS})
    atomic_write_json(
        run.path("probes.json"), {**results, "ccs": ccs_results, "transfer": transfer}
    )
    _plot_auroc(results, run.path("probe_auroc_by_layer.png"))
    return {"probes": results, "ccs": ccs_results, "transfer": transfer, **flat}


KEYS = ("auroc", "auroc_low", "auroc_high", "n")
"""The keys of each AUROC measurement: the value, its 95% interval and the items scored."""


def transfer_all(
    cfg: InterpConfig, run: Run, model: Any, tokenizer: Any, fitted: dict[str, tuple]
) -> dict[str, dict[str, Any]]:
    """Each fitted probe (and CCS probe) scored, not refitted, on each ``transfer`` dataset at
    its chosen layer; logs ``transfer/<train>-><test>/*`` and ``transfer/ccs/<train>-><test>/*``."""
    out: dict[str, dict[str, Any]] = {}
    for kind in cfg.transfer:
        target = _name(kind)
        probes = {name: f for name, f in fitted.items() if name != target}  # never itself
        if not probes:
            continue
        data = _contrast(cfg, kind)
        feats = {}  # by the position each probe was trained at
        for position in {p for *_, p in probes.values()}:
            needed = sorted({r.layer for _, r, _, p in probes.values() if p == position})
            feats[position] = _features(cfg, model, tokenizer, data.texts, needed, position)
        ccs_layers_needed = sorted({c.layer for _, _, c, _ in probes.values() if c is not None})
        if ccs_layers_needed and _use_ccs(cfg, kind):
            pos, neg = _pair_features(cfg, model, tokenizer, data.texts, ccs_layers_needed)
        y = np.asarray(data.labels)
        g = np.asarray(data.groups if data.groups is not None else data.texts, dtype=object)
        for name, (train, r, c, position) in probes.items():
            items = transfer_items(train, data)
            rows = items.rows
            x = np.asarray(feats[position][r.layer], np.float64)[rows]
            scores = r.probe.predict_proba(x)[:, 1]
            ci = auroc_interval(scores, y[rows], g[rows], seed=cfg.seed)
            key = f"{name}->{target}"
            where = {"layer": r.layer, "items": items.which, "n_shared": items.n_shared_groups}
            out[key] = {**_interval(ci), **where}
            run.log(0, {f"transfer/{key}/{k}": out[key][k] for k in KEYS})
            ci = auroc_interval(x @ r.mass_mean, y[rows], g[rows], seed=cfg.seed)
            out[f"mass_mean/{key}"] = {**_interval(ci), **where}
            run.log(0, {f"transfer/mass_mean/{key}/{k}": out[f"mass_mean/{key}"][k] for k in KEYS})
            if c is not None and _use_ccs(cfg, kind):
                xp, xn = normalize_pairs(
                    np.asarray(pos[c.layer])[rows], np.asarray(neg[c.layer])[rows]
                )
                ci = auroc_interval(ccs_scores(c.probe, xp, xn), y[rows], g[rows], seed=cfg.seed)
                out[f"ccs/{key}"] = {**_interval(ci), **where, "layer": c.layer}
                run.log(0, {f"transfer/ccs/{key}/{k}": out[f"ccs/{key}"][k] for k in KEYS})
    return out


def _interval(ci: Any) -> dict[str, Any]:
    return {"auroc": ci.value, "auroc_low": ci.low, "auroc_high": ci.high, "n": ci.n}


def _name(kind: str) -> str:
    return Path(kind).stem if kind.endswith(".jsonl") else kind


def _contrast(cfg: InterpConfig, kind: str) -> Contrast:
    """Contrast dataset ``kind``, with ``task_options`` when it comes from ``cfg.task``'s family."""
    family = (
        "world" if kind in WORLD_DATASETS else "arithmetic" if kind.startswith("arith") else "facts"
    )
    options = cfg.task_options if cfg.task.split(":")[0] == family else {}
    return contrast_dataset(kind, cfg.n_probe, cfg.seed, task_options=options)


def _rule(cfg: InterpConfig, kind: str) -> str:
    """The layer rule of dataset ``kind``: ``cfg.layer_rule``, or its default (see the field)."""
    return cfg.layer_rule or ("one_se" if kind in WORLD_DATASETS else "best")


def _probe_c(cfg: InterpConfig, kind: str) -> float | tuple[float, ...]:
    """The probe's inverse L2 strength for dataset ``kind``, or the strengths to choose among."""
    if cfg.probe_c is not None:
        return cfg.probe_c
    return PROBE_CS if kind in WORLD_DATASETS else 1.0


def _use_ccs(cfg: InterpConfig, kind: str) -> bool:
    return cfg.ccs if cfg.ccs is not None else kind in WORLD_DATASETS


def _position(cfg: InterpConfig, kind: str) -> str:
    """The probe features of dataset ``kind``: ``cfg.position``, or its default (see the field)."""
    return cfg.position or ("last2" if kind in WORLD_DATASETS else "last")


def _features(
    cfg: InterpConfig,
    model: Any,
    tokenizer: Any,
    texts: list[str],
    layers: list[int],
    position: str,
) -> dict[int, torch.Tensor]:
    """Layer -> [n_texts, width]: ``hook_resid_post`` at each text's ``position`` (see
    :attr:`InterpConfig.position`)."""
    hooks = [A.hook_name(layer) for layer in layers]
    acts = A.capture(model, tokenizer, texts, hooks, cfg.batch_size)
    read = {
        "last": acts.last,
        "last2": lambda hook: acts.last_k(hook, 2),
        "mean": acts.mean,
    }[position]
    return {layer: read(hook) for layer, hook in zip(layers, hooks)}


def _pair_features(
    cfg: InterpConfig, model: Any, tokenizer: Any, texts: list[str], layers: list[int]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """The features of each text's CCS contrast pair (:func:`~superalign.validate.ccs.
    contrast_pair`): ``(x+ by layer, x- by layer)``, at the pair's last token (or the mean with
    ``position=mean``; CCS reads the answer token, as in Burns et al. 2022)."""
    pairs = [contrast_pair(t) for t in texts]
    position = "mean" if cfg.position == "mean" else "last"
    both = _features(cfg, model, tokenizer, [p for pair in pairs for p in pair], layers, position)
    return {k: v[0::2] for k, v in both.items()}, {k: v[1::2] for k, v in both.items()}


# --- SAE and autointerp -------------------------------------------------------------------------


def sae_and_autointerp(
    cfg: InterpConfig, run: Run, model: Any, tokenizer: Any, layer: int
) -> dict[str, Any]:
    hook = A.hook_name(layer)
    texts = get_task(cfg.task, **cfg.task_options).corpus(cfg.sae_texts, cfg.seed)
    folder = run.path("activations")
    A.stream_to_disk(model, tokenizer, texts, [hook], folder, cfg.batch_size, cfg.chunk_tokens)
    acts = A.load_activations(folder)
    if not cfg.keep_activations:
        shutil.rmtree(folder)
    n_train_docs = round(len(texts) * (1 - cfg.sae_heldout))
    train = acts.doc < n_train_docs
    sae_cfg = SAEConfig(
        n_latents=cfg.sae_latents,
        k=cfg.sae_k,
        steps=cfg.sae_steps,
        batch_size=cfg.sae_batch_size,
        lr=cfg.sae_lr,
        aux_k=cfg.sae_aux_k,
        seed=cfg.seed,
    )
    trained = train_sae(acts.acts[hook][train], sae_cfg)
    for step in range(0, len(trained.losses), 50):
        run.log(step, {"sae/loss": trained.losses[step]})
    held = sae_stats(trained.sae, acts.acts[hook][~train])
    fit = sae_stats(trained.sae, acts.acts[hook][train])
    sae = {
        "layer": layer,
        "hook": hook,
        "fvu": held.fvu,
        "l0": held.l0,
        "dead_fraction": held.dead_fraction,
        "fvu_train": fit.fvu,
        "n_train_tokens": int(train.sum()),
        "n_heldout_tokens": int((~train).sum()),
    }
    run.log(len(trained.losses), {f"sae/{k}": sae[k] for k in ("fvu", "l0", "dead_fraction")})
    run.log(len(trained.losses), {"sae/fvu_train": fit.fvu})
    save_sae(trained.sae, run.path("sae"), {"hook": hook, "model": cfg.model, **vars(sae_cfg)})

    held_docs = sorted(set(acts.doc[~train].tolist()))
    auto = autointerp(cfg, run, trained.sae, tokenizer, acts, hook, held_docs)
    return {"sae": sae, "autointerp": auto}


def autointerp(
    cfg: InterpConfig,
    run: Run,
    sae: Any,
    tokenizer: Any,
    acts: A.Activations,
    hook: str,
    docs: list[int],
) -> dict[str, Any]:
    """Explain-simulate-score ``n_explain`` live latents on the held-out texts ``docs``."""
    per_doc_x = acts.per_doc(hook)
    per_doc_tokens = torch.split(acts.tokens, torch.bincount(acts.doc).tolist())
    with torch.no_grad():
        codes = [sae.encode(per_doc_x[d]) for d in docs]  # each [len, n_latents]
    token_strs = [[tokenizer.decode([t]) for t in per_doc_tokens[d].tolist()] for d in docs]
    alive = torch.stack([c.max(0).values for c in codes]).amax(0) > 0
    live = torch.nonzero(alive).flatten().tolist()
    latents = sorted(random.Random(cfg.seed).sample(live, min(cfg.n_explain, len(live))))
    explainer = heuristic_explain if cfg.explainer == "heuristic" else LLMExplainer(cfg.explainer)
    args = dict(n_top=cfg.explain_top, n_random=cfg.explain_random, seed=cfg.seed)
    scores = explain_latents(token_strs, codes, latents, explainer, **args)
    # control: each latent scored with the explanation of the next one in the list
    others = {s.latent: scores[(i + 1) % len(scores)].explanation for i, s in enumerate(scores)}
    control = explain_latents(token_strs, codes, list(others), given=others, **args)
    values = [s.score for s in scores]
    out = {
        "score_mean": float(np.mean(values)) if values else float("nan"),
        "score_median": float(np.median(values)) if values else float("nan"),
        "n": len(values),
        "control_score_mean": float(np.mean([s.score for s in control]))
        if control
        else float("nan"),
        "explainer": cfg.explainer,
    }
    run.log(0, {f"autointerp/{k}": v for k, v in out.items() if k != "explainer"})
    atomic_write_json(  # with each latent's control score, for paired comparisons
        run.path("explanations.json"),
        [{**s._asdict(), "control_score": c.score} for s, c in zip(scores, control)],
    )
    _plot_hist(values, [s.score for s in control], run.path("autointerp_scores.png"))
    return out


# --- the causal check ---------------------------------------------------------------------------


def op_position(tokenizer: Any, text: str, char: int) -> int:
    """Index of the token of ``text`` that covers character ``char``."""
    enc = tokenizer(text, return_offsets_mapping=True)
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        if s <= char < e:
            return i
    raise ValueError(f"no token of {text!r} covers character {char}")


def steering_check(cfg: InterpConfig, run: Run, model: Any, tokenizer: Any) -> dict[str, Any]:
    """Find the operator direction and steer / ablate along it (see the module docstring)."""
    data = contrast_dataset("arith_op", cfg.steer_n, cfg.seed + 1, task_options=cfg.task_options)
    ops = [t.index("+") if y else t.index("-") for t, y in zip(data.texts, data.labels)]
    pos = [op_position(tokenizer, t, c) for t, c in zip(data.texts, ops)]
    sign = torch.tensor([1.0 if y else -1.0 for y in data.labels])  # push + to -, - to +
    gen = torch.Generator().manual_seed(cfg.seed)

    def direction(hook: str) -> torch.Tensor:
        acts = A.capture(model, tokenizer, data.texts, [hook], cfg.batch_size)
        return -mean_difference(acts.at(hook, pos), data.labels)  # mean(-) - mean(+), [d]

    def add(v: torch.Tensor) -> Any:
        return lambda x, p: x + cfg.steer_scale * v * p  # p: [batch, 1], the row's sign

    def ablate(v: torch.Tensor) -> Any:
        u = v / v.norm()
        return lambda x, p: x - (x @ u)[..., None] * u

    def copies(hook: str, edit: Any) -> float:
        return _op_copies(model, tokenizer, data.texts, pos, hook, edit, sign, cfg.batch_size)

    hook = cfg.steer_hook
    v = direction(hook)
    rand = torch.randn(v.shape, generator=gen)
    rand = rand / rand.norm() * v.norm()
    base = copies(hook, None)
    flip_args = (model, tokenizer, data.texts, pos, hook)
    out = {
        "hook": hook,
        "direction_norm": float(v.norm()),
        "steer/base_rate": 1 - base,
        "steer/effect": base - copies(hook, add(v)),
        "steer/control_effect": base - copies(hook, add(rand)),
        "steer/answer_flip": _answer_flips(*flip_args, add(v), sign),
        "steer/control_answer_flip": _answer_flips(*flip_args, add(rand), sign),
        "ablate/base_accuracy": base,
        "ablate/effect": base - copies(hook, ablate(v)),
        "ablate/control_effect": base - copies(hook, ablate(rand)),
    }
    run.log(0, {k: v for k, v in out.items() if "/" in k})
    by_layer = {}
    for layer in range(A.n_blocks(model)):
        h = A.hook_name(layer, "hook_resid_pre")
        by_layer[layer] = base - copies(h, add(direction(h)))
        run.log(layer, {"steer/effect_by_layer": by_layer[layer]})
    out["effect_by_layer"] = by_layer
    return out


def _at_positions(width: int, cols: torch.Tensor, edit: Any, signs: torch.Tensor) -> A.EditFn:
    """An edit hook applying ``edit(x, sign)`` at column ``cols[j]`` of row j, only in the
    full-width (prefill) forward of a left-padded batch of ``width`` tokens."""
    rows = torch.arange(len(cols))

    def fn(x: torch.Tensor) -> torch.Tensor:
        if edit is None or x.shape[1] != width:
            return x
        x = x.clone()
        x[rows, cols] = edit(x[rows, cols], signs[:, None])
        return x

    return fn


@torch.no_grad()
def _op_copies(model, tokenizer, texts, pos, hook, edit, signs, batch_size=64) -> float:
    """Share of prompts whose model, after ``"Q: a<op>b\\na"``, prefers the prompt's operator
    over the other one (next-token logit of "+" vs "-"), with ``edit`` at the operator token."""
    plus = tokenizer("+", add_special_tokens=False)["input_ids"][-1]
    minus = tokenizer("-", add_special_tokens=False)["input_ids"][-1]
    rows = [tokenizer(t + str(_parse_problem(t)[0]))["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    right = 0
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        ids, mask, posids = A.left_pad(chunk, pad, next(model.parameters()).device)
        cols = torch.tensor([ids.shape[1] - len(r) + p for r, p in zip(chunk, pos[s:])])
        fn = _at_positions(ids.shape[1], cols, edit, signs[s : s + batch_size])
        with A.edit_hook(model, hook, fn):
            last = model(input_ids=ids, attention_mask=mask, position_ids=posids).logits[:, -1]
        prefers_plus = last[:, plus] > last[:, minus]  # [batch]
        is_plus = torch.tensor([_parse_problem(t)[1] == "+" for t in texts[s : s + batch_size]])
        right += int((prefers_plus.cpu() == is_plus).sum())
    return right / len(texts)


@torch.no_grad()
def _answer_flips(model, tokenizer, texts, pos, hook, edit, signs) -> float:
    """Share of prompts whose greedy answer is the other operator's result (a-b for a+b)."""
    from superalign.models.sampling import sample
    from superalign.tasks.arithmetic import parse_answer

    rows = [tokenizer(t)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    cols = torch.tensor([width - len(r) + p for r, p in zip(rows, pos)])
    with A.edit_hook(model, hook, _at_positions(width, cols, edit, signs)):
        # one batch, so that the prefill width is the one the columns assume
        done = sample(
            model, tokenizer, texts, max_new_tokens=24, temperature=0.0, batch_size=len(texts)
        )
    flips = 0
    for t, completion in zip(texts, done.texts):
        a, op, b = _parse_problem(t)
        flips += parse_answer(completion) == (a - b if op == "+" else a + b)
    return flips / len(texts)


def _parse_problem(prompt: str) -> tuple[int, str, int]:
    """``(a, op, b)`` of a one-step problem ``"Q: a<op>b"``."""
    (a, b), (op,) = parse_problem(prompt)
    return a, op, b


# --- plots --------------------------------------------------------------------------------------


def _plot_auroc(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in results.items():
        layers = [int(k) for k in r["auroc_by_layer"]]
        means = np.array(list(r["auroc_by_layer"].values()))
        stds = np.array(list(r["auroc_std_by_layer"].values()))
        ax.errorbar(layers, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="layer (resid_post)", ylabel="cross-validated AUROC (non-test)", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_hist(scores: list[float], control: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(-1, 1, 21)
    ax.hist(scores, bins=bins, alpha=0.7, label="own explanation")
    ax.hist(control, bins=bins, alpha=0.5, label="another latent's explanation")
    ax.set(xlabel="explanation score (correlation)", ylabel="latents")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
