"""Stage ``critic``: a model that points at the wrong step of an arithmetic solution and says why.

The critic is a per-step classifier, a process reward model as in Lightman et al. (2023), "Let's
verify step by step": the pretrained policy LM with a linear head that reads the last hidden
state at the end (the newline) of every solution line, the steps and the answer line, and gives
P(this line is wrong)::

    Q: 37+45-12\\n          (problem: read, not scored)
    37+45=83\\n             <- P(wrong) = 0.97   step 1
    83-12=71\\n             <- P(wrong) = 0.02   step 2 (continues correctly from 83)
    A: 71\\n                <- P(wrong) = 0.01   answer line

The per-line gold labels are the task's per-step gold
(:func:`~superalign.tasks.arithmetic.step_labels`: a later step that correctly continues from a
wrong result is itself correct; a line beyond the problem's steps is wrong), and the answer line
is wrong when it does not repeat the last step's result or when steps are missing before it.

A :class:`Critique` flags the first line whose P(wrong) exceeds ``threshold`` (a step, the
answer line :data:`ANSWER`, or the missing step when the answer line comes too early), and says
why: for a step, the critic LM's own greedy recomputation of the line from the previous claimed
result (``"step 1 is wrong: 37+45=83 should be 37+45=82"``); the LM is kept able to do that by a
language-modelling loss on gold solutions during training. A solution with no answer line is
flagged at the answer line (or its missing step) when no step is flagged, without the model.

``superalign critic model=runs/pretrain-1a2b`` fine-tunes ``model`` (usually the policy) and the
head with binary cross-entropy on the per-line labels of ``n_train`` solutions of the train
split: samples of ``policy`` at ``temperature`` (natural mistakes), gold solutions with one
planted error (:func:`~superalign.generalize.weak_to_strong.corrupt`), and gold solutions. The
critiques of held-out test solutions of the same mix are scored against gold before and after
training (:func:`critique_quality`); ``model/`` (the LM, ``head.safetensors``, ``critic.json``)
makes the run folder a :class:`Critic`.

:func:`gold_critique` writes the gold critique of any solution as a verification trace that
redoes every step (``" 1: 37+45=82 wrong; 2: 83-12=71 ok; A: 71 ok"``); an earlier version of
this stage trained a generative critic to write such traces with SFT, and it learned to answer
``ok`` to everything (recall 0), so it was replaced by the classifier (see docs/stages/critic.md).

Metrics (``metrics.jsonl``; ``_before`` at step 0, plain at the last step):

- ``loss/train``: the training loss (``loss/step`` + ``lm_coef`` * ``loss/lm``); ``loss/step``:
  binary cross-entropy of the per-line P(wrong); ``loss/lm``: next-token loss on the gold
  solutions of the batch; ``optim/lr``: the LM's learning rate;
- ``critic/precision``: flags that point at a truly wrong location / flags;
- ``critic/recall``: flawed solutions whose flag points at a truly wrong location / flawed ones;
- ``critic/hallucination``: flags on fully correct solutions / fully correct solutions;
- ``critic/location_accuracy``: critiques whose location (a step, the answer line, or none)
  equals the gold critique's;
- ``critic/why``: flags on a truly wrong or missing step whose recomputed line is the right one;
- ``critic/line_auroc``: AUROC of the per-line P(wrong) against the per-line gold labels.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from superalign.models.load import load_model
from superalign.models.sampling import sample
from superalign.runs import Run, atomic_dir, atomic_write_json, atomic_write_text
from superalign.tasks import get_task
from superalign.tasks.arithmetic import Step, apply, parse_answer, parse_steps, step_labels
from superalign.tasks.base import Example

ANSWER = -1
"""``Critique.step`` of a critique that flags the answer line."""

_PROBLEM = re.compile(r"Q:\s*(\d+)((?:\s*[+-]\s*\d+)*)")
_TERM = re.compile(r"([+-])\s*(\d+)")


class Critique(NamedTuple):
    """What a critic says about one solution."""

    step: int | None
    """0-based index of the flagged step (a written or a missing one), :data:`ANSWER` for the
    answer line, None when it finds no error."""
    text: str
    """The critique in words (the "why")."""
    fix: str | None = None
    """The flagged step as the critic recomputes it (``"37+45=82"``); None when it has none."""


# --- gold critiques and their scoring --------------------------------------------------------


def gold_critique(example: Example, completion: str) -> Critique:
    """The critique a perfect critic writes: a verification trace that redoes every step from
    the problem and the previous step's claimed result, with a verdict on each (``ok``,
    ``wrong``, ``missing``, ``extra``), then on the answer line; ``step`` is the first non-ok
    verdict's step, else :data:`ANSWER` when the answer verdict is wrong."""
    operands, ops = example.meta["operands"], example.meta["ops"]
    steps, labels = parse_steps(completion), step_labels(example, completion)
    parts, flagged, fix, prev = [], None, None, operands[0]
    for i in range(max(len(steps), len(ops))):
        if i >= len(ops):
            verdict, redo = "extra", ""
        else:
            value = apply(prev, ops[i], operands[i + 1])
            redo = f" {prev}{ops[i]}{operands[i + 1]}={value}"
            verdict = "missing" if i >= len(steps) else "ok" if labels[i] else "wrong"
        parts.append(f"{i + 1}:{redo} {verdict}")
        if verdict != "ok" and flagged is None:
            flagged, fix = i, redo.strip() or None
        if i < len(steps) and steps[i] is not None:
            prev = steps[i].result
        elif i >= len(steps) and i < len(ops):
            prev = value  # a missing step: continue from its right result
    answer = parse_answer(completion)
    answer_ok = bool(steps) and steps[-1] is not None and answer == steps[-1].result
    parts.append(f"A: {'' if answer is None else answer} {'ok' if answer_ok else 'wrong'}")
    if flagged is None and not answer_ok:
        flagged = ANSWER
    return Critique(flagged, " " + "; ".join(parts) + "\n", fix)


def is_wrong_location(example: Example, completion: str, step: int | None) -> bool:
    """Whether a flag at ``step`` points at a real error: a wrong written step, a missing step
    of the problem, or (:data:`ANSWER`) an answer line that does not repeat the last result."""
    if step is None:
        return False
    labels = step_labels(example, completion)
    if step == ANSWER:
        steps = parse_steps(completion)
        last = steps[-1] if steps else None
        return last is None or parse_answer(completion) != last.result
    if step < len(labels):
        return not labels[step]
    return step < len(example.meta["ops"])  # a step the problem has and the solution lacks


class CritiqueQuality(NamedTuple):
    """A critic's critiques scored against gold critiques (see the module docstring)."""

    precision: float
    recall: float
    hallucination: float
    location_accuracy: float
    why: float
    n_flags: int
    n_flawed: int
    n_correct: int


def critique_quality(
    critiques: list[Critique], examples: list[Example], completions: list[str]
) -> CritiqueQuality:
    """Precision, recall, hallucination rate, location and "why" accuracy of ``critiques``
    against gold (nan when a denominator is empty)."""
    golds = [gold_critique(ex, c) for ex, c in zip(examples, completions)]
    hits = [is_wrong_location(ex, c, k.step) for k, ex, c in zip(critiques, examples, completions)]
    flags = [k.step is not None for k in critiques]
    flawed = [g.step is not None for g in golds]
    # a hit on a step the trace recomputes: is the critic's recomputation the right line?
    fixable = [
        (k.fix, redo_line(ex, c, k.step))
        for k, h, ex, c in zip(critiques, hits, examples, completions)
        if h and k.step is not None and k.step >= 0 and k.step < len(ex.meta["ops"])
    ]

    def ratio(num: int, den: int) -> float:
        return num / den if den else float("nan")

    n_flawed = sum(flawed)
    n_correct = len(golds) - n_flawed
    return CritiqueQuality(
        precision=ratio(sum(hits), sum(flags)),
        recall=ratio(sum(h for h, w in zip(hits, flawed) if w), n_flawed),
        hallucination=ratio(sum(f for f, w in zip(flags, flawed) if not w), n_correct),
        location_accuracy=ratio(
            sum(k.step == g.step for k, g in zip(critiques, golds)), len(golds)
        ),
        why=ratio(sum(fix == right for fix, right in fixable), len(fixable)),
        n_flags=sum(flags),
        n_flawed=n_flawed,
        n_correct=n_correct,
    )


def redo_line(example: Example, completion: str, step: int) -> str | None:
    """The right line for step ``step`` of ``completion`` given the previous claimed result
    (``"83-12=71"``); None when the previous line is not a step."""
    left = previous_result(example.meta["operands"][0], parse_steps(completion), step)
    if left is None:
        return None
    op, right = example.meta["ops"][step], example.meta["operands"][step + 1]
    return f"{left}{op}{right}={apply(left, op, right)}"


def previous_result(first: int, steps: list[Step | None], step: int) -> int | None:
    """What step ``step`` starts from: the first operand, or the previous written step's claimed
    result (the right result of a missing step is not known to the solution, so None)."""
    if step == 0:
        return first
    if step - 1 < len(steps):
        prev = steps[step - 1]
        return prev.result if prev is not None else None
    return None


# --- what the critic reads ---------------------------------------------------------------------


def solution_lines(completion: str) -> tuple[list[str], bool]:
    """The lines a critic scores: the non-empty lines up to and including the first answer line,
    and whether there is an answer line (then it is the last of them)."""
    lines = []
    for line in completion.splitlines():
        if not line.strip():
            continue
        lines.append(line)
        if line.strip().startswith("A:"):
            return lines, True
    return lines, False


def line_labels(example: Example, completion: str) -> list[bool]:
    """Gold label per line of :func:`solution_lines` (True = wrong): ``not step_labels`` for the
    steps; for the answer line, whether it fails to repeat the last result or comes before all
    of the problem's steps are written."""
    lines, has_answer = solution_lines(completion)
    labels = [not ok for ok in step_labels(example, completion)]
    if has_answer:
        steps = parse_steps(completion)
        last = steps[-1] if steps else None
        repeats = last is not None and parse_answer(completion) == last.result
        labels.append(not repeats or len(steps) < len(example.meta["ops"]))
    assert len(labels) == len(lines)
    return labels


def parse_problem(prompt: str) -> tuple[list[int], list[str]]:
    """Operands and operators of the problem in ``prompt`` (``"Q: 37+45-12"``), as the critic
    reads them; empty lists when it is not an arithmetic problem."""
    m = _PROBLEM.search(prompt)
    if not m:
        return [], []
    terms = _TERM.findall(m[2])
    return [int(m[1]), *(int(x) for _, x in terms)], [op for op, _ in terms]


class Encoded(NamedTuple):
    """A problem and solution as tokens: ``ids``, and per solution line the positions of its
    first (``starts``) and last (``ends``: the newline, where the head reads) tokens."""

    ids: list[int]
    starts: list[int]
    ends: list[int]


def encode_lines(
    tokenizer: Any, prompt: str, completion: str, max_length: int | None = None
) -> Encoded:
    """The prompt's tokens, then each line of :func:`solution_lines` with its newline, cut to
    ``max_length`` tokens (lines that do not fit are dropped). Lines are encoded one by one, so
    a tokenizer never merges a newline into the next line."""
    ids = list(tokenizer(prompt)["input_ids"])
    starts, ends = [], []
    for line in solution_lines(completion)[0]:
        more = tokenizer(line + "\n", add_special_tokens=False)["input_ids"]
        if max_length is not None and len(ids) + len(more) > max_length:
            break
        starts.append(len(ids))
        ids += more
        ends.append(len(ids) - 1)
    return Encoded(ids[:max_length], starts, ends)


class Packed(NamedTuple):
    """A batch of :class:`Encoded` rows, right-padded: ``ids``/``mask``/``line_of`` [B, T]
    (``line_of``: the token's line index in its row, -1 outside the scored lines); ``ends`` and
    ``line_mask`` [B, L] (a line's last position; which lines exist)."""

    ids: torch.Tensor
    mask: torch.Tensor
    line_of: torch.Tensor
    ends: torch.Tensor
    line_mask: torch.Tensor


def pack(rows: list[Encoded], pad_id: int) -> Packed:
    ids, mask = right_pad([r.ids for r in rows], pad_id)
    n_lines = max(1, max(len(r.ends) for r in rows))
    line_of = torch.full(ids.shape, -1, dtype=torch.long)
    ends = torch.zeros((len(rows), n_lines), dtype=torch.long)
    line_mask = torch.zeros((len(rows), n_lines), dtype=torch.bool)
    for i, r in enumerate(rows):
        for j, (a, b) in enumerate(zip(r.starts, r.ends)):
            line_of[i, a : b + 1] = j
        ends[i, : len(r.ends)] = torch.tensor(r.ends, dtype=torch.long)
        line_mask[i, : len(r.ends)] = True
    return Packed(ids, mask, line_of, ends, line_mask)


# --- the critic as a model -----------------------------------------------------------------------


class StepHead(torch.nn.Module):
    """The causal LM plus a linear head that reads, per solution line, the last hidden state at
    the line's newline and the LM's own surprise on the line (the minimum and the mean
    log-probability of its tokens: a wrong digit is an unlikely token to a model that can do
    the step). Returns line logits of P(wrong) ``[B, L]`` and the LM's logits ``[B, T, V]``."""

    def __init__(self, lm: Any):
        super().__init__()
        self.lm = lm
        self.head = torch.nn.Linear(lm.config.hidden_size + 2, 1)
        torch.nn.init.zeros_(self.head.weight)  # untrained: P(wrong) = 1/2 everywhere
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, b: Packed) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(input_ids=b.ids, attention_mask=b.mask, output_hidden_states=True)
        hidden = out.hidden_states[-1].float()  # [B, T, d], after the final norm
        logp = F.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, b.ids[:, 1:, None])
        logp = F.pad(logp.squeeze(-1), (1, 0))  # [B, T]: log p(token t | tokens < t)
        B, L = b.ends.shape
        seg = (torch.arange(B)[:, None] * L + b.line_of)[b.line_of >= 0]  # flat line per token
        vals = logp[b.line_of >= 0]
        low = logp.new_zeros(B * L).scatter_reduce(0, seg, vals, "amin", include_self=False)
        total = logp.new_zeros(B * L).index_add(0, seg, vals)
        count = logp.new_zeros(B * L).index_add(0, seg, torch.ones_like(vals)).clamp(min=1)
        at_end = hidden.gather(1, b.ends[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, L, d]
        surprise = torch.stack([low, total / count], -1).view(B, L, 2)
        return self.head(torch.cat([at_end, surprise], -1)).squeeze(-1), out.logits


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [B, width] of right-padded rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


class StepCritic:
    """What every critic does with its per-line P(wrong) (``line_probs``): ``critique`` flags the
    first line above ``threshold`` and says why, ``step_scores`` ranks written steps."""

    threshold: float

    def line_probs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def recompute(
        self, prompts: list[str], completions: list[str], flags: list[int | None]
    ) -> list[str | None]:
        """What each flagged step should have been, where the critic can say (else None)."""
        return [None] * len(prompts)

    def critique(self, prompts: list[str], completions: list[str]) -> list[Critique]:
        """One critique per solution (see the module docstring)."""
        probs = self.line_probs(prompts, completions)
        flags = [self.locate(p, c, pr) for p, c, pr in zip(prompts, completions, probs)]
        fixes = self.recompute(prompts, completions, flags)
        return [
            Critique(step, describe(p, c, step, fix), fix)
            for p, c, step, fix in zip(prompts, completions, flags, fixes)
        ]

    def locate(self, prompt: str, completion: str, probs: list[float]) -> int | None:
        """The flagged location: the first line with P(wrong) above the threshold, or (no answer
        line) the answer's location; the answer line maps to the missing step when the solution
        has fewer steps than the problem."""
        lines, has_answer = solution_lines(completion)
        n_steps = len(lines) - has_answer
        first = next((i for i, p in enumerate(probs) if p > self.threshold), None)
        if first is not None and first < n_steps:
            return first
        if first is None and has_answer:
            return None
        n_ops = len(parse_problem(prompt)[1])
        return n_steps if n_steps < n_ops else ANSWER

    def step_scores(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        """Per solution, P(wrong) of each written step (at least one score: a solution with no
        steps gets its answer line's, or 1)."""
        out = []
        for c, probs in zip(completions, self.line_probs(prompts, completions)):
            lines, has_answer = solution_lines(c)
            steps = probs[: len(lines) - has_answer]
            out.append(steps or probs[-1:] or [1.0])
        return out


@dataclass
class Critic(StepCritic):
    """A trained step critic: the LM and its per-line head (see the module docstring)."""

    net: StepHead
    tokenizer: Any
    threshold: float = 0.5
    """A line is flagged when its P(wrong) exceeds this."""
    batch_size: int = 64
    max_length: int = 128
    """Token limit of problem + solution; lines past it are not scored (P(wrong) = 0)."""
    info: dict[str, Any] = field(default_factory=dict)
    """The ``load_model`` record of the critic's LM."""

    @classmethod
    def load(cls, spec: str) -> StepCritic:
        """The critic of a ``critic`` run folder, loaded once per process and shared; or, for
        ``prompted:<model>``, a :class:`PromptedCritic` on that model (a ``load_model`` spec or
        an OpenAI-compatible URL)."""
        if str(spec).startswith(PROMPTED):
            return PromptedCritic.build(str(spec)[len(PROMPTED) :])
        return _load_critic(str(spec))

    @torch.no_grad()
    def line_probs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        """P(wrong) of every line of :func:`solution_lines`, per solution."""
        self.net.eval()
        out: list[list[float]] = []
        for s in range(0, len(prompts), self.batch_size):
            enc = [
                encode_lines(self.tokenizer, p, c, self.max_length)
                for p, c in zip(
                    prompts[s : s + self.batch_size], completions[s : s + self.batch_size]
                )
            ]
            logits, _ = self.net(pack(enc, self.tokenizer.pad_token_id))
            probs = torch.sigmoid(logits)  # [B, L]
            for i, (e, c) in enumerate(zip(enc, completions[s : s + self.batch_size])):
                unscored = len(solution_lines(c)[0]) - len(e.ends)  # past max_length
                out.append(probs[i, : len(e.ends)].tolist() + [0.0] * unscored)
        return out

    def recompute(
        self, prompts: list[str], completions: list[str], flags: list[int | None]
    ) -> list[str | None]:
        """The critic LM's greedy redo of each flagged step that the problem has: it reads the
        problem, the lines before the step and ``left<op>right=`` (left: the previous claimed
        result) and writes the result."""
        todo: dict[int, tuple[str, str]] = {}
        for j, (p, c, k) in enumerate(zip(prompts, completions, flags)):
            operands, ops = parse_problem(p)
            if k is None or k < 0 or k >= len(ops):
                continue
            left = previous_result(operands[0], parse_steps(c), k)
            if left is None:
                continue
            head = f"{left}{ops[k]}{operands[k + 1]}="
            before = solution_lines(c)[0][:k]
            todo[j] = (p + "".join(line + "\n" for line in before) + head, head)
        out: list[str | None] = [None] * len(prompts)
        if todo:
            texts = sample(
                self.net.lm,
                self.tokenizer,
                [ctx for ctx, _ in todo.values()],
                max_new_tokens=8,
                temperature=0.0,
                stop=["\n"],
                batch_size=self.batch_size,
            ).texts
            for j, (_, head), text in zip(todo, todo.values(), texts):
                m = re.match(r"\s*(-?\d+)", text)
                out[j] = head + m[1] if m else None
        return out


def describe(prompt: str, completion: str, step: int | None, fix: str | None) -> str:
    """A critique in words: where the error is and what the line should have been."""
    if step is None:
        return "ok"
    if step == ANSWER:
        return "the answer line does not repeat the last step's result"
    lines = solution_lines(completion)[0]
    n_ops = len(parse_problem(prompt)[1])
    if step >= n_ops:
        return f"step {step + 1} is extra: the problem has {n_ops} steps"
    if step >= len(lines) or lines[step].strip().startswith("A:"):
        return f"step {step + 1} is missing" + (f": it should be {fix}" if fix else "")
    written = lines[step].strip()
    return f"step {step + 1} is wrong: {written}" + (f" should be {fix}" if fix else "")


PROMPTED = "prompted:"
"""Prefix of a critic spec naming a model to prompt instead of a trained critic."""

STEP_TEMPLATE = (
    "Here is a math problem and a solution, one step per line.\n\n{question}\n\n"
    "Check only this line of the solution:\n{answer}\n\n"
    "Is this line correct? Answer yes or no."
)
"""The question a :class:`PromptedCritic` asks about each line: ``{question}`` is the problem
and the numbered solution, ``{answer}`` the numbered line under review."""


@dataclass
class PromptedCritic(StepCritic):
    """A critic for real models without training: an :class:`~superalign.overseers.judge.LLMJudge`
    asked, for each solution line in turn, whether that line is correct (:data:`STEP_TEMPLATE`);
    P(wrong) of the line is ``1 - P(yes) / (P(yes) + P(no))``. It does not say what the line
    should have been. Build it as the critic spec ``prompted:<model>``."""

    judge: Any
    """The :class:`~superalign.overseers.judge.LLMJudge` holding the model and template."""
    threshold: float = 0.5
    """A line is flagged when its P(wrong) exceeds this."""

    @classmethod
    def build(cls, model: str, threshold: float = 0.5) -> PromptedCritic:
        """A prompted critic on ``model`` (a ``load_model`` spec or an OpenAI-compatible URL)."""
        from superalign.overseers.judge import LLMJudge

        return cls(LLMJudge.build(model=model, template=STEP_TEMPLATE), threshold)

    def line_probs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        """P(wrong) of every line of :func:`solution_lines`, one judge query per line."""
        queries, owners = [], []
        for j, (p, c) in enumerate(zip(prompts, completions)):
            lines = solution_lines(c)[0]
            numbered = "\n".join(f"{i + 1}. {line.strip()}" for i, line in enumerate(lines))
            for i, line in enumerate(lines):
                queries.append((f"{p.strip()}\n{numbered}", f"{i + 1}. {line.strip()}"))
                owners.append(j)
        yes = self.judge.score([q for q, _ in queries], [a for _, a in queries]) if queries else []
        out: list[list[float]] = [[] for _ in prompts]
        for j, y in zip(owners, yes):
            out[j].append(1.0 - y)
        return out


@lru_cache(maxsize=4)
def _load_critic(spec: str) -> Critic:
    from safetensors.torch import load_file

    lm, tokenizer, info = load_model(spec)
    folder = Path(info.get("model_path", spec))
    if not (folder / "head.safetensors").is_file():
        raise ValueError(
            f"{spec} is not a critic: {folder} has no head.safetensors (train one with "
            "`superalign critic model=...`)"
        )
    net = StepHead(lm)
    net.head.load_state_dict(load_file(folder / "head.safetensors"))
    net.requires_grad_(False).eval()
    meta = json.loads((folder / "critic.json").read_text())
    return Critic(
        net, tokenizer, threshold=meta["threshold"], max_length=meta["max_length"], info=info
    )


# --- the stage -------------------------------------------------------------------------------


@dataclass
class CriticConfig:
    """Train an arithmetic step critic (a process reward model) on gold per-step labels."""

    model: str = ""
    """Model to fine-tune into the critic (usually the policy): a ``load_model`` spec. Required.
    A path is fingerprinted into the cache key."""
    policy: str = ""
    """Model whose samples supply solutions with natural mistakes; empty: ``model``."""
    difficulties: list[int] = field(default_factory=lambda: [2])
    """Arithmetic levels of the problems (split evenly across them)."""
    n_train: int = 2000
    """Training solutions (each gives one labelled example per line)."""
    sampled_share: float = 0.5
    """Share of solutions sampled from ``policy`` at ``temperature``."""
    corrupted_share: float = 0.35
    """Share of solutions that are a gold one with one planted error; the rest are gold."""
    temperature: float = 1.5
    """Sampling temperature of ``policy`` (above 1: more mistakes to learn from)."""
    sample_max_new_tokens: int = 48
    """Generation limit of the sampled solutions."""
    epochs: float = 3.0
    """Passes over the solutions (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps; 0: use ``epochs``."""
    batch_size: int = 32
    """Solutions per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate of the LM (AdamW, linear warm-up then linear decay to 0)."""
    head_lr: float = 1e-2
    """Peak learning rate of the linear head (same schedule)."""
    lm_coef: float = 0.5
    """Weight of the next-token loss on the batch's gold solutions, which keeps the LM able to
    recompute a step (the critique's "why"); 0: off."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    max_length: int = 128
    """Token limit of problem + solution (longer rows are cut; lines past it go unscored)."""
    threshold: float = 0.5
    """The trained critic flags a line when its P(wrong) exceeds this (saved with it)."""
    seed: int = 0
    """Seeds problems, sources, samples, planted errors, batch order and the held-out set."""
    log_every: int = 10
    """Optimizer steps between ``loss/*`` lines."""
    checkpoint_every: int = 200
    """Optimizer steps between resumable checkpoints (0: none)."""
    eval_n: int = 200
    """Held-out test solutions (same mix of sources) scored before and after training."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if not self.model:
            raise ConfigError(
                "model is required: give a load_model spec, e.g. model=runs/pretrain-1a2b"
            )
        check_at_least(self, 1, "n_train", "batch_size", "eval_n", "log_every", "max_length")
        check_at_least(self, 0, "max_steps", "checkpoint_every", "warmup_steps", "threads")
        if self.max_steps == 0 and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive when max_steps is 0, not {self.epochs}")
        for name in ("lr", "head_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in (0, 1), not {getattr(self, name)}")
        if self.lm_coef < 0:
            raise ConfigError(f"lm_coef must be >= 0, not {self.lm_coef}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), not {self.threshold}")
        shares = (self.sampled_share, self.corrupted_share)
        if min(shares) < 0 or sum(shares) > 1:
            raise ConfigError(
                f"sampled_share and corrupted_share must be >= 0 and sum to at most 1, "
                f"not {self.sampled_share} and {self.corrupted_share}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, not {self.temperature}")
        if not self.difficulties:
            raise ConfigError("difficulties must name at least one level, e.g. [2]")

    def total_steps(self) -> int:
        """Optimizer steps of the run."""
        per_epoch = math.ceil(self.n_train / self.batch_size)
        return self.max_steps or max(1, math.ceil(self.epochs * per_epoch))


class Solutions(NamedTuple):
    """Solutions to critique, with their source (``sampled``, ``corrupted`` or ``gold``)."""

    examples: list[Example]
    completions: list[str]
    sources: list[str]


def solutions(cfg: CriticConfig, policy: Any, tokenizer: Any, split: str, n: int) -> Solutions:
    """``n`` problems of ``split`` with a solution each, from the mix of sources in ``cfg``."""
    from superalign.generalize.weak_to_strong import corrupt

    task = get_task("arithmetic")
    k = len(cfg.difficulties)
    examples = [
        ex
        for i, d in enumerate(cfg.difficulties)
        for ex in task.examples(split, n // k + (i < n % k), d, seed=cfg.seed)
    ]
    rng = random.Random(f"critic:{split}:{cfg.seed}")
    sources = []
    for _ in examples:
        u = rng.random()
        sampled = u < cfg.sampled_share
        corrupted = cfg.sampled_share <= u < cfg.sampled_share + cfg.corrupted_share
        sources.append("sampled" if sampled else "corrupted" if corrupted else "gold")
    picked = [ex.prompt for ex, s in zip(examples, sources) if s == "sampled"]
    drawn = iter(
        sample(
            policy,
            tokenizer,
            picked,
            temperature=cfg.temperature,
            max_new_tokens=cfg.sample_max_new_tokens,
            seed=cfg.seed,
        ).texts
        if picked
        else []
    )
    completions = [
        next(drawn) if s == "sampled" else corrupt(ex, rng) if s == "corrupted" else ex.solution
        for ex, s in zip(examples, sources)
    ]
    return Solutions(examples, completions, sources)


class Row(NamedTuple):
    """A training solution: its tokens and lines (cut to ``max_length``), the gold label of each
    kept line (True = wrong), and whether it is a gold solution (next-token loss)."""

    enc: Encoded
    labels: list[bool]
    gold: bool


def encode_rows(cfg: CriticConfig, tokenizer: Any, data: Solutions) -> list[Row]:
    rows = []
    for ex, c, src in zip(*data):
        enc = encode_lines(tokenizer, ex.prompt, c, cfg.max_length)
        rows.append(Row(enc, line_labels(ex, c)[: len(enc.ends)], src == "gold"))
    return rows


def losses(net: StepHead, rows: list[Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(binary cross-entropy of the lines' P(wrong), next-token loss on the gold solutions'
    tokens)."""
    b = pack([r.enc for r in rows], pad_id)
    logits, lm_logits = net(b)  # [B, L], [B, T, V]
    targets = torch.zeros(b.line_mask.shape)
    lm_mask = torch.zeros(b.ids.shape, dtype=torch.bool)
    for i, r in enumerate(rows):
        targets[i, : len(r.labels)] = torch.tensor(r.labels, dtype=torch.float)
        if r.gold and r.enc.starts:
            lm_mask[i, r.enc.starts[0] : len(r.enc.ids)] = True  # the solution's tokens
    step = F.binary_cross_entropy_with_logits(logits[b.line_mask], targets[b.line_mask])
    target = lm_mask[:, 1:]  # predict token t+1 from tokens <= t
    if not target.any():
        return step, step.new_zeros(())
    return step, F.cross_entropy(lm_logits[:, :-1][target].float(), b.ids[:, 1:][target])


def batch_order(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Row indices of optimizer step ``step``: epochs of a fresh permutation each, seeded by
    ``seed`` and the epoch (so a resumed run draws the same batches)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return perm[k * batch_size : (k + 1) * batch_size]


def _quality_metrics(critic: StepCritic, held: Solutions, suffix: str) -> dict[str, float]:
    from superalign.overseers.base import auroc

    prompts = [ex.prompt for ex in held.examples]
    crits = critic.critique(prompts, held.completions)
    q = critique_quality(crits, held.examples, held.completions)
    names = ("precision", "recall", "hallucination", "location_accuracy", "why")
    out = {f"critic/{k}{suffix}": getattr(q, k) for k in names}
    probs = critic.line_probs(prompts, held.completions)
    ys = [y for ex, c in zip(held.examples, held.completions) for y in line_labels(ex, c)]
    ps = [p for row in probs for p in row]
    out[f"critic/line_auroc{suffix}"] = auroc([-p for p in ps], [float(not y) for y in ys])
    return out


def train(cfg: CriticConfig, run: Run, net: StepHead, rows: list[dict[str, Any]], pad: int) -> int:
    """AdamW on the rows, resuming from the run's checkpoint; returns the steps done."""
    total = cfg.total_steps()
    opt = torch.optim.AdamW(
        [
            {"params": net.lm.parameters(), "lr": cfg.lr},
            {"params": net.head.parameters(), "lr": cfg.head_lr},
        ],
        weight_decay=0.0,
    )

    def schedule(t: int) -> float:
        if t < cfg.warmup_steps:
            return (t + 1) / (cfg.warmup_steps + 1)
        return max(0.0, (total - t) / max(1, total - cfg.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start = 0
    state = run.load_checkpoint()
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
    net.train()
    sums, n = {"loss/train": 0.0, "loss/step": 0.0, "loss/lm": 0.0}, 0
    for t in range(start, total):
        batch = [rows[i] for i in batch_order(len(rows), cfg.batch_size, t, cfg.seed)]
        step_loss, lm_loss = losses(net, batch, pad)
        loss = step_loss + cfg.lm_coef * lm_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        for k, v in zip(sums, (loss, step_loss, lm_loss)):
            sums[k] += v.item()
        done, n = t + 1, n + 1
        if done % cfg.log_every == 0 or done == total:
            lr = sched.get_last_lr()[0]
            run.log(done, {**{k: v / n for k, v in sums.items()}, "optim/lr": lr})
            sums, n = dict.fromkeys(sums, 0.0), 0
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "step": done}
            run.save_checkpoint({**state, "sched": sched.state_dict()}, done)
    net.eval()
    return total


def save(critic: Critic, folder: Path) -> None:
    """The critic as a ``model/`` folder: the LM and tokenizer, ``head.safetensors``,
    ``critic.json``."""
    from safetensors.torch import save_file

    lm, tok = critic.net.lm, critic.tokenizer
    lm.generation_config.eos_token_id = tok.eos_token_id
    lm.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(folder) as tmp:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        head = {k: v.contiguous() for k, v in critic.net.head.state_dict().items()}
        save_file(head, tmp / "head.safetensors")
        meta = {"kind": "step_classifier", "threshold": critic.threshold}
        atomic_write_json(tmp / "critic.json", {**meta, "max_length": critic.max_length})


def run(cfg: CriticConfig, run: Run) -> dict[str, Any]:
    """Build the labelled solutions, evaluate, train, evaluate again, save ``model/``."""
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    task = get_task("arithmetic")
    bad = [d for d in cfg.difficulties if d not in task.difficulties]
    if bad:
        raise ValueError(f"difficulties {bad} do not exist; arithmetic has {task.difficulties}")
    lm, tokenizer, info = load_model(cfg.model)
    policy, policy_tok, policy_info = (
        load_model(cfg.policy) if cfg.policy else (lm, tokenizer, info)
    )
    lm.eval()
    train_set = solutions(cfg, policy, policy_tok, "train", cfg.n_train)
    held = solutions(cfg, policy, policy_tok, "test", cfg.eval_n)
    del policy
    rows = encode_rows(cfg, tokenizer, train_set)
    critic = Critic(StepHead(lm), tokenizer, cfg.threshold, max_length=cfg.max_length, info=info)

    before = {k: v for r in run.metrics() if r["step"] == 0 for k, v in r.items() if "_before" in k}
    if not before:  # a resumed run keeps its own
        before = _quality_metrics(critic, held, "_before")
        run.log(0, before)
    steps = train(cfg, run, critic.net, rows, tokenizer.pad_token_id)
    after = _quality_metrics(critic, held, "")
    run.log(steps, after)

    crits = critic.critique([ex.prompt for ex in held.examples], held.completions)
    probs = critic.line_probs([ex.prompt for ex in held.examples], held.completions)
    lines = [
        json.dumps(
            {
                "prompt": ex.prompt,
                "completion": c,
                "source": s,
                "gold": task.grade(ex, c),
                "gold_critique": gold_critique(ex, c).text,
                "gold_step": gold_critique(ex, c).step,
                "critique": k.text,
                "step": k.step,
                "line_probs": [round(p, 4) for p in pr],
            }
        )
        for ex, c, s, k, pr in zip(held.examples, held.completions, held.sources, crits, probs)
    ]
    atomic_write_text(run.path("critiques.jsonl"), "\n".join(lines) + "\n")
    save(critic, run.path("model"))
    metrics = run.metrics()
    first = next((r for r in metrics if "loss/step" in r), {})
    last = next((r for r in reversed(metrics) if "loss/step" in r), {})
    flawed = sum(gold_critique(ex, c).step is not None for ex, c in zip(*train_set[:2]))
    return {
        "model": info,
        "policy": policy_info,
        "kind": "step_classifier",
        "n_train": len(rows),
        "train_flawed_share": flawed / len(rows),
        "steps": steps,
        **{f"{k}_first": first.get(k) for k in ("loss/step", "loss/lm")},
        **{f"{k}_final": last.get(k) for k in ("loss/step", "loss/lm")},
        **before,
        **after,
        "model_dir": "model",
    }
