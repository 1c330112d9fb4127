"""Explain-simulate-score (Bills et al., 2023, "Language models can explain neurons in language
models"), for SAE latents or neurons.

For one latent, each text is a :class:`Record`: its tokens and the latent's activation on each.

1. **Explain**: an explainer reads the top-activating records of a latent (activations rescaled
   to 0..10 by the largest one it is shown) and writes an explanation. The default
   :func:`heuristic_explain` names the tokens whose mean activation is highest in those records,
   each with its mean level, as ``fires on "+" (10), "=" (3)``; :class:`LLMExplainer` asks a
   language model (a ``load_model`` spec or an OpenAI-compatible URL) in Bills et al.'s format.
2. **Simulate**: a simulator sees only the explanation and a text and predicts the activation
   of every token. :func:`simulate` reads the quoted tokens of the explanation (with their level,
   10 when none is given) and predicts that level where the token occurs and 0 elsewhere, so it
   also scores an LLM's explanation that quotes tokens.
3. **Score**: Pearson correlation of simulated and true activations over all tokens of held-out
   records: top-activating records the explainer did not see together with random records
   (Bills et al.'s "top and random" scoring). A constant simulation scores 0. 1 means the
   explanation predicts the activations up to an affine map.

Records are split as in Bills et al.: the texts ranked by their maximum activation, the top
``2 * n_top`` alternate between explanation and held-out scoring, and ``n_random`` random other
texts join the held-out set.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch


class Record(NamedTuple):
    """One text and a latent's activation on each of its tokens."""

    tokens: list[str]
    acts: list[float]


class LatentScore(NamedTuple):
    latent: int
    explanation: str
    score: float
    """Pearson correlation of simulated and true activations on the held-out records."""
    max_act: float
    """Largest activation among the explainer's records."""


Explainer = Callable[[list[Record]], str]
"""Reads top-activating records, returns an explanation."""
Simulator = Callable[[str, list[list[str]]], list[list[float]]]
"""(explanation, tokens of each text) -> predicted activation of each token."""


# --- explain ------------------------------------------------------------------------------------


def heuristic_explain(records: Sequence[Record], max_tokens: int = 4, min_level: int = 1) -> str:
    """Name the (at most ``max_tokens``) tokens with the highest mean activation in ``records``,
    on the 0..10 scale of the largest activation, keeping those at ``min_level`` or above."""
    top = max((max(r.acts) for r in records if r.acts), default=0.0)
    if top <= 0:
        return "fires on nothing"
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for r in records:
        for tok, a in zip(r.tokens, r.acts):
            sums[tok] = sums.get(tok, 0.0) + max(a, 0.0)
            counts[tok] = counts.get(tok, 0) + 1
    levels = {t: round(10 * sums[t] / counts[t] / top) for t in sums}
    ranked = sorted((t for t in levels if levels[t] >= min_level), key=lambda t: -levels[t])
    if not ranked:
        return "fires on nothing"
    return "fires on " + ", ".join(f"{json.dumps(t)} ({levels[t]})" for t in ranked[:max_tokens])


_QUOTED = re.compile(r'("(?:[^"\\]|\\.)*")(?:\s*\((\d+(?:\.\d+)?)\))?')


def parse_explanation(explanation: str) -> dict[str, float]:
    """Quoted tokens of an explanation -> their level (10 when no ``(level)`` follows)."""
    out: dict[str, float] = {}
    for m in _QUOTED.finditer(explanation):
        try:
            token = json.loads(m[1])
        except json.JSONDecodeError:
            token = m[1][1:-1]
        out.setdefault(token, float(m[2]) if m[2] else 10.0)
    return out


def simulate(explanation: str, texts: list[list[str]]) -> list[list[float]]:
    """Predict each token's activation: the level of the token in ``explanation``, else 0.
    A token matches a quoted one exactly, or after stripping spaces when that is not empty."""
    levels = parse_explanation(explanation)
    stripped = {t.strip(): v for t, v in levels.items() if t.strip()}
    return [
        [levels.get(t, stripped.get(t.strip(), 0.0) if t.strip() else 0.0) for t in toks]
        for toks in texts
    ]


# --- score --------------------------------------------------------------------------------------


def correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def score_explanation(explanation: str, records: Sequence[Record], simulator: Simulator) -> float:
    """Correlation of simulated and true activations over all tokens of ``records``."""
    predicted = simulator(explanation, [r.tokens for r in records])
    flat_pred = [p for row in predicted for p in row]
    flat_true = [a for r in records for a in r.acts]
    return correlation(flat_pred, flat_true)


# --- records of a latent ------------------------------------------------------------------------


class Split(NamedTuple):
    explain: list[int]
    """Text indices the explainer sees (top-activating, even ranks)."""
    holdout: list[int]
    """Held-out text indices: top-activating (odd ranks) plus random ones."""


def split_records(
    max_per_text: torch.Tensor, n_top: int, n_random: int, rng: random.Random
) -> Split:
    """Bills et al.'s split of texts for one latent from its max activation per text [n_texts]."""
    order = torch.argsort(max_per_text, descending=True).tolist()
    top = [i for i in order[: 2 * n_top] if max_per_text[i] > 0]
    explain, held_top = top[0::2], top[1::2]
    chosen = set(top)
    rest = [i for i in range(len(max_per_text)) if i not in chosen]
    return Split(explain, held_top + rng.sample(rest, min(n_random, len(rest))))


def explain_latents(
    token_strs: list[list[str]],
    latent_acts: list[torch.Tensor],
    latents: Sequence[int],
    explainer: Explainer = heuristic_explain,
    simulator: Simulator = simulate,
    n_top: int = 10,
    n_random: int = 10,
    seed: int = 0,
    given: dict[int, str] | None = None,
) -> list[LatentScore]:
    """Explain, simulate and score each of ``latents``.

    ``token_strs[j]`` are the tokens of text j and ``latent_acts[j]`` [len_j, n_latents] the
    latent activations on them. Latents that fire on no text are skipped. ``given`` maps a latent
    to an explanation to score instead of asking the explainer (e.g. another latent's, as a
    control); the split of texts is the same for the same ``seed``.
    """
    rng = random.Random(f"autointerp:{seed}")
    max_per_text = torch.stack([a.max(0).values for a in latent_acts])  # [n_texts, n_latents]
    out = []
    for latent in latents:
        column = max_per_text[:, latent]
        if column.max() <= 0:
            continue
        split = split_records(column, n_top, n_random, rng)

        def records(ids: list[int], latent: int = latent) -> list[Record]:
            return [Record(token_strs[i], latent_acts[i][:, latent].tolist()) for i in ids]

        shown = records(split.explain)
        explanation = given[latent] if given is not None else explainer(shown)
        score = score_explanation(explanation, records(split.holdout), simulator)
        out.append(LatentScore(latent, explanation, score, max(max(r.acts) for r in shown)))
    return out


# --- an LLM explainer ---------------------------------------------------------------------------

EXPLAIN_PROMPT = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in "
    "a short document. Look at the parts of the document the neuron activates for and summarize "
    "in a single sentence what the neuron is looking for. Quote the tokens it fires on in double "
    "quotes. Activations go from 0 to 10; most are 0.\n\n"
    "Neuron\nActivations:\n{records}\n\n"
    "Explanation of neuron behavior: the main thing this neuron does is find"
)
"""Bills et al.'s explainer prompt, one neuron, ``{records}`` filled with ``token<TAB>level``
lines between ``<start>`` and ``<end>``."""


def format_records(records: Sequence[Record]) -> str:
    """Records as Bills et al.'s ``<start> token<TAB>level ... <end>`` blocks, levels 0..10."""
    top = max((max(r.acts) for r in records if r.acts), default=0.0) or 1.0
    blocks = []
    for r in records:
        lines = [f"{t!r}\t{max(0, round(10 * a / top))}" for t, a in zip(r.tokens, r.acts)]
        blocks.append("<start>\n" + "\n".join(lines) + "\n<end>")
    return "\n".join(blocks)


@dataclass
class LLMExplainer:
    """An explainer that asks a language model, greedily, for a one-line explanation."""

    model: str
    """``load_model`` spec, or the URL of an OpenAI-compatible server (``http(s)://...``)."""
    max_new_tokens: int = 48
    """Tokens of the explanation."""
    _backend: Any = None

    def __post_init__(self) -> None:
        if self.model.startswith(("http://", "https://")):
            from superalign.models.http import OpenAIClient

            self._backend = OpenAIClient(self.model)
        else:
            from superalign.models.load import load_model

            self._backend = load_model(self.model)

    def prompt(self, records: Sequence[Record]) -> str:
        return EXPLAIN_PROMPT.format(records=format_records(records))

    def __call__(self, records: list[Record]) -> str:
        text = self.prompt(records)
        if hasattr(self._backend, "complete"):
            reply = self._backend.complete([text], max_tokens=self.max_new_tokens, temperature=0)
            completion = reply[0].text
        else:
            from superalign.models.sampling import sample

            model, tokenizer, _ = self._backend
            completion = sample(
                model,
                tokenizer,
                [text],
                max_new_tokens=self.max_new_tokens,
                temperature=0.0,
                stop=["\n"],
            ).texts[0]
        return completion.strip().splitlines()[0] if completion.strip() else ""
