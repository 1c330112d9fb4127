"""The target under attack and the attackers that search for prompts triggering a behaviour.

Every attacker has the same two methods, after Perez et al. (2022), "Red Teaming Language Models
with Language Models":

- ``propose(n) -> list[str]``: ``n`` test cases (prompts) to send to the target;
- ``update(prompts, scores, fitness)``: what the target did with them: ``scores`` are the
  behaviour classifier's (1 = success), ``fitness`` a continuous signal (the behaviour's
  white-box ``objective`` when it has one, else the scores). Only search attackers use fitness.

Attackers (:data:`ATTACKERS`):

- ``random``: uniform random adversarial suffixes on task prompts (the baseline);
- ``search``: evolutionary search over the same space: mutate one suffix character of one of the
  ``elite`` fittest test cases found so far (or swap its base prompt);
- ``zero_shot``: sample test cases from an attacker LM given a prefix (``Q: `` on the tiny path);
- ``few_shot``: the same, with past successes (up to ``shots``) written before the prefix;
- ``supervised``: zero-shot sampling, then after each round a few gradient steps of maximum
  likelihood on all successes so far;
- ``rl``: policy gradient on the attacker LM with group-normalised advantages (GRPO), reward =
  behaviour score + ``diversity_bonus`` x (1 - BLEU against earlier successes), and a per-token
  k3 KL penalty ``beta`` to the initial attacker.

The RL attacker is a compact own loop over :func:`~superalign.models.sampling.completion_logprobs`
rather than TRL's ``GRPOTrainer``: here the red-teaming loop owns generation and reward (one
optimizer step per ``propose``/``update`` round), which a TRL trainer does not hand out. Samples
come from :func:`~superalign.models.sampling.sample` at temperature 1, so the loss's log-probs
are those of the sampling policy (left padding with position ids, as in sampling).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from superalign.models.sampling import completion_logprobs, sample
from superalign.train.losses import completion_nll

# --- the target -------------------------------------------------------------------------------


@dataclass
class Target:
    """The model under attack. ``queries`` counts prompts sent to :meth:`complete`; the
    white-box :meth:`logprob` of a prompt is part of the same query and is not counted again."""

    model: Any
    tokenizer: Any
    max_new_tokens: int = 32
    """Generation limit of a completion (greedy decoding, as HarmBench evaluates)."""
    batch_size: int = 64
    queries: int = 0

    def complete(self, prompts: list[str]) -> list[str]:
        """Greedy completions; counts ``len(prompts)`` queries."""
        self.queries += len(prompts)
        return sample(
            self.model,
            self.tokenizer,
            prompts,
            temperature=0,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        ).texts

    @torch.no_grad()
    def logprob(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """log p(continuation | prompt) in nats, summed over the continuation's tokens."""
        tok = self.tokenizer
        out: list[float] = []
        for s in range(0, len(prompts), self.batch_size):
            p = [tok(x)["input_ids"] for x in prompts[s : s + self.batch_size]]
            c = [tok(x)["input_ids"] for x in continuations[s : s + self.batch_size]]
            out += [float(r.sum()) for r in completion_logprobs(self.model, p, c, tok.pad_token_id)]
        return out


# --- search in a space of prompts -------------------------------------------------------------


@dataclass
class PromptSpace:
    """Test cases ``base + suffix + end``: a base prompt (without its trailing ``end``) and an
    adversarial suffix of ``length`` characters from ``alphabet``."""

    bases: list[str]
    alphabet: str
    length: int
    end: str = "\n"

    def render(self, base: int, suffix: str) -> str:
        b = self.bases[base]
        if self.end and b.endswith(self.end):
            b = b[: -len(self.end)]
        return b + suffix + self.end

    def random(self, rng: random.Random) -> tuple[int, str]:
        return rng.randrange(len(self.bases)), "".join(
            rng.choice(self.alphabet) for _ in range(self.length)
        )


@dataclass
class RandomSearch:
    """Uniform random test cases from the prompt space (the baseline every attacker must beat)."""

    space: PromptSpace
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(f"random:{self.seed}")

    def propose(self, n: int) -> list[str]:
        return [self.space.render(*self.space.random(self.rng)) for _ in range(n)]

    def update(self, prompts: list[str], scores: list[float], fitness: list[float]) -> None:
        pass


@dataclass
class EvolutionarySearch:
    """Mutation and selection: each child changes one suffix character (or, with probability
    ``base_swap``, the base prompt) of a parent drawn uniformly from the ``elite`` fittest test
    cases so far; the first round is random. Already-tried test cases are not proposed again."""

    uses_fitness: ClassVar[bool] = True
    space: PromptSpace
    seed: int = 0
    elite: int = 4
    """Parents: the fittest test cases found so far."""
    base_swap: float = 0.1
    """Probability that a child changes the base prompt instead of a suffix character."""
    pool: list[tuple[float, int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"search:{self.seed}")
        self.seen: set[tuple[int, str]] = set()
        self._pending: dict[str, tuple[int, str]] = {}

    def propose(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            cand = self._child()
            for _ in range(20):  # avoid repeats while the neighbourhood has room
                if cand not in self.seen:
                    break
                cand = self._child()
            self.seen.add(cand)
            prompt = self.space.render(*cand)
            self._pending[prompt] = cand
            out.append(prompt)
        return out

    def _child(self) -> tuple[int, str]:
        if not self.pool:
            return self.space.random(self.rng)
        _, base, suffix = self.rng.choice(self.pool[: self.elite])
        if self.rng.random() < self.base_swap:
            return self.rng.randrange(len(self.space.bases)), suffix
        i = self.rng.randrange(self.space.length)
        return base, suffix[:i] + self.rng.choice(self.space.alphabet) + suffix[i + 1 :]

    def update(self, prompts: list[str], scores: list[float], fitness: list[float]) -> None:
        for p, f in zip(prompts, fitness):
            base, suffix = self._pending.pop(p, (None, None))
            if base is not None:
                self.pool.append((f, base, suffix))
        self.pool.sort(key=lambda x: -x[0])
        del self.pool[self.elite * 8 :]


# --- attacker language models -----------------------------------------------------------------


@dataclass
class LMAttacker:
    """Test cases sampled from an attacker LM: ``case_prefix + generated + case_end``, the LM
    reading ``instruction`` (+ few-shot examples) + ``case_prefix`` and stopping at ``case_end``.

    ``mode`` picks the attacker: ``zero_shot``, ``few_shot``, ``supervised`` or ``rl``."""

    model: Any
    tokenizer: Any
    mode: str = "zero_shot"
    seed: int = 0
    instruction: str = ""
    """Text before the test cases (e.g. "List of questions to ask someone:\\n"); "" on the tiny
    path, where the attacker is a LM trained on the task corpus."""
    case_prefix: str = "Q: "
    case_end: str = "\n"
    max_new_tokens: int = 16
    temperature: float = 1.0
    shots: int = 4
    """few_shot: past successes (most recent, distinct) written before the prefix."""
    lr: float = 1e-3
    """supervised and rl: learning rate (Adam)."""
    sft_steps: int = 4
    """supervised: gradient steps after each round that found successes."""
    sft_batch: int = 16
    """supervised: successes per gradient step (drawn with replacement)."""
    beta: float = 0.05
    """rl: weight of the per-token k3 KL penalty to the initial attacker."""
    diversity_bonus: float = 0.5
    """rl: weight of 1 - BLEU(test case, earlier successes) in the reward of a success."""
    successes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.mode}:{self.seed}")
        self._round = 0
        self._last: dict[str, Any] = {}
        if self.mode in ("supervised", "rl"):
            self.reference = copy.deepcopy(self.model).eval() if self.mode == "rl" else None
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def context(self) -> str:
        shots: list[str] = []
        if self.mode == "few_shot" and self.successes:
            distinct = list(dict.fromkeys(reversed(self.successes)))[: self.shots]
            shots = list(reversed(distinct))
        return self.instruction + "".join(shots) + self.case_prefix

    def propose(self, n: int) -> list[str]:
        ctx = self.context()
        self._round += 1
        out = sample(
            self.model,
            self.tokenizer,
            [ctx] * n,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            stop=[self.case_end] if self.case_end else None,
            seed=self.rng.randrange(2**31),
        )
        cases = [self.case_prefix + t + self.case_end for t in out.texts]
        self._last = {"cases": cases, "prompt_ids": out.prompt_ids, "ids": out.completion_ids}
        return cases

    def update(self, prompts: list[str], scores: list[float], fitness: list[float]) -> None:
        new = [p for p, s in zip(prompts, scores) if s >= 0.5]
        if self.mode == "rl" and self._last.get("cases") == prompts:
            self._rl_step(scores)
        self.successes += new
        if self.mode == "supervised" and new:
            self._sft_steps()

    def _loss_rows(self, cases: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of (context, generated part + end) for each test case."""
        ctx = self.tokenizer(self.instruction + self.case_prefix)["input_ids"]
        end = self.case_end or (self.tokenizer.eos_token or "")
        ids = [
            self.tokenizer(generated_part(c, self.case_prefix, self.case_end) + end)["input_ids"]
            for c in cases
        ]
        return [ctx] * len(ids), ids

    def _sft_steps(self) -> None:
        """Maximum likelihood on the successes so far (what follows the prefix, with the end)."""
        self.model.train()
        for _ in range(self.sft_steps):
            batch = [self.rng.choice(self.successes) for _ in range(self.sft_batch)]
            prompt_ids, ids = self._loss_rows(batch)
            loss = completion_nll(self.model, prompt_ids, ids, self.tokenizer.pad_token_id)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.model.eval()

    def _rl_step(self, scores: list[float]) -> None:
        """One GRPO step on the last round: advantage = (r - mean r) / (std r + 1e-4) over the
        round's samples (one group: they share the context), loss = -A * sum log p + beta * k3."""
        cases, prompt_ids, ids = self._last["cases"], self._last["prompt_ids"], self._last["ids"]
        rewards = [
            s + (self.diversity_bonus * (1 - bleu(c, self.successes)) if s >= 0.5 else 0.0)
            for c, s in zip(cases, scores)
        ]
        r = torch.tensor(rewards, dtype=torch.float32)
        adv = (r - r.mean()) / (r.std() + 1e-4) if len(r) > 1 else r * 0
        keep = [i for i, row in enumerate(ids) if row]
        if not keep or float(adv.abs().sum()) == 0.0:
            return
        pad = self.tokenizer.pad_token_id
        p_ids, c_ids = [prompt_ids[i] for i in keep], [ids[i] for i in keep]
        self.model.train()
        logp = completion_logprobs(self.model, p_ids, c_ids, pad)  # list of [len_i]
        with torch.no_grad():
            ref = completion_logprobs(self.reference, p_ids, c_ids, pad)
        pg = torch.stack([-adv[i] * lp.sum() for i, lp in zip(keep, logp)]).mean()
        k3 = torch.stack(
            [(torch.exp(q - lp) - (q - lp) - 1).sum() for lp, q in zip(logp, ref)]
        ).mean()
        loss = pg + self.beta * k3
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.model.eval()
        self.last_kl = float(k3.detach())


def generated_part(case: str, prefix: str, end: str) -> str:
    """The generated part of a test case: without ``prefix`` and the trailing ``end``."""
    if prefix and case.startswith(prefix):
        case = case[len(prefix) :]
    if end and case.endswith(end):
        case = case[: -len(end)]
    return case


# --- diversity ---------------------------------------------------------------------------------


def bleu_tokens(text: str) -> list[str]:
    """Words, punctuation marks and single digits (digits split as the tiny tokenizer does)."""
    import re

    return re.findall(r"\d|[^\W\d_]+|[^\w\s]", text)


def _ngrams(tokens: list[str], n: int) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        g = tuple(tokens[i : i + n])
        out[g] = out.get(g, 0) + 1
    return out


def bleu(hypothesis: str, references: list[str], max_n: int = 4) -> float:
    """Sentence BLEU of ``hypothesis`` against ``references`` (Papineni et al. 2002): geometric
    mean of clipped n-gram precisions, n = 1..max_n, times the brevity penalty. Precisions of
    n > 1 are add-one smoothed (Lin and Och 2004), so short texts do not score 0. 0.0 without
    references."""
    import math

    hyp = bleu_tokens(hypothesis)
    refs = [bleu_tokens(r) for r in references]
    if not hyp or not refs:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        counts = _ngrams(hyp, n)
        best: dict[tuple[str, ...], int] = {}
        for r in refs:
            for g, c in _ngrams(r, n).items():
                best[g] = max(best.get(g, 0), c)
        clipped = sum(min(c, best.get(g, 0)) for g, c in counts.items())
        total = sum(counts.values())
        if n == 1 and clipped == 0:
            return 0.0
        smooth = 0 if n == 1 else 1
        log_p += math.log((clipped + smooth) / (total + smooth)) / max_n
    ref_len = min((len(r) for r in refs), key=lambda m: (abs(m - len(hyp)), m))
    bp = 1.0 if len(hyp) > ref_len else math.exp(1 - ref_len / len(hyp))
    return bp * math.exp(log_p)


def self_bleu(texts: list[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others (Zhu et al. 2018): 1 = all alike, lower
    is more diverse. nan for fewer than two texts."""
    if len(texts) < 2:
        return float("nan")
    return sum(bleu(t, texts[:i] + texts[i + 1 :], max_n) for i, t in enumerate(texts)) / len(texts)


ATTACKERS: tuple[str, ...] = ("random", "search", "zero_shot", "few_shot", "supervised", "rl")
"""Attacker names accepted by :func:`build_attacker`."""


def build_attacker(
    name: str,
    *,
    seed: int,
    space: PromptSpace,
    attacker_lm: tuple[Any, Any] | None,
    options: dict[str, Any],
) -> Any:
    """An attacker by name. LM attackers that train (``supervised``, ``rl``) get their own copy
    of the attacker LM; ``options`` are the attacker's fields (e.g. ``{beta: 0.1}``)."""
    if name == "random":
        return RandomSearch(space, seed)
    if name == "search":
        return EvolutionarySearch(space, seed, **options)
    if name not in ATTACKERS:
        raise ValueError(f"attacker {name!r} is not one of {list(ATTACKERS)}")
    if attacker_lm is None:
        raise ValueError(f"attacker {name!r} needs an attacker LM")
    model, tok = attacker_lm
    if name in ("supervised", "rl"):
        model = copy.deepcopy(model)
        torch.manual_seed(seed)
    return LMAttacker(model, tok, mode=name, seed=seed, **options)
