"""The step critic: a model that points at the wrong step of an arithmetic solution and says why.

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

The ``critic`` stage (:mod:`superalign.train.critic`) trains one; :func:`save` writes it as a
``model/`` folder (the LM, ``head.safetensors``, ``critic.json``) that :meth:`Critic.load` reads
back. For real models without training, the spec ``prompted:<model>`` builds a
:class:`PromptedCritic` instead.

:func:`gold_critique` writes the gold critique of any solution as a verification trace that
redoes every step (``" 1: 37+45=82 wrong; 2: 83-12=71 ok; A: 71 ok"``); an earlier version of
the ``critic`` stage trained a generative critic to write such traces with SFT, and it learned
to answer ``ok`` to everything (recall 0), so it was replaced by the classifier (see
docs/stages/critic.md).

:func:`critique_quality` scores critiques against gold critiques: precision, recall,
hallucination rate, location accuracy and the "why" (the metrics ``critic/*`` of the stage).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from superalign.models.load import load_model
from superalign.models.sampling import sample
from superalign.runs import atomic_dir, atomic_write_json
from superalign.tasks.arithmetic import (
    Problem,
    Step,
    apply,
    parse_answer,
    parse_problem,
    parse_steps,
    step_labels,
)
from superalign.tasks.base import Example

ANSWER = -1
"""``Critique.step`` of a critique that flags the answer line."""


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


def problem_of(prompt: str) -> Problem:
    """The problem in ``prompt`` (``"Q: 37+45-12"``) as the critic reads it: empty when it is not
    an arithmetic problem."""
    return parse_problem(prompt) or Problem([], [])


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
        n_ops = len(problem_of(prompt).ops)
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
            operands, ops = problem_of(p)
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
    n_ops = len(problem_of(prompt).ops)
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
