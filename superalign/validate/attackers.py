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
- ``gcg``: greedy coordinate gradient (Zou et al. 2023) over the same space: the objective's
  gradient w.r.t. the one-hot suffix tokens of the best test case picks candidate substitutions;
- ``zero_shot``: sample test cases from an attacker LM given a prefix (``Q: `` on the tiny path);
- ``few_shot``: the same, with past successes (up to ``shots``) written before the prefix;
- ``supervised``: zero-shot sampling, then after each round a few gradient steps of maximum
  likelihood on all successes so far;
- ``rl``: TRL's ``GRPOTrainer`` on the attacker LM (:class:`GRPOAttacker`), reward = behaviour
  score + ``diversity_bonus`` x (1 - BLEU against earlier successes), GRPO's per-token k3 KL
  penalty ``beta`` to the initial attacker. TRL owns generation, so this attacker gets the whole
  budget through ``train_against(query, budget, batch_size)``: its reward function sends every
  sampled test case to the target (a counted query) and the loop records it like any other.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
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


@dataclass
class GreedyCoordinateGradient:
    """Greedy coordinate gradient (GCG; Zou et al. 2023, "Universal and Transferable Adversarial
    Attacks on Aligned Language Models", Algorithm 1) over the suffix tokens.

    The suffix is ``space.length`` tokens, each one whose text is made of ``space.alphabet``
    characters (one character per token on the tiny byte-level tokenizer, so the space equals
    that of ``random`` and ``search``). Each round: the gradient of the behaviour's white-box
    objective (``objective_sign`` x log p(``objective_texts`` | prompt)) with respect to the
    one-hot suffix tokens of the best test case so far gives, per position, the ``top_k``
    allowed tokens whose substitution raises the objective most to first order; each child
    substitutes one such token at a uniformly drawn position (or, with probability
    ``base_swap``, changes the base prompt). The round's fittest child replaces the best if it
    is fitter. The first round is random.

    The gradient is white-box access to a prompt already sent (like the objective), so it costs
    no query; children that tokenize differently from their tokens, or were tried before, are
    redrawn."""

    uses_fitness: ClassVar[bool] = True
    space: PromptSpace
    model: Any
    tokenizer: Any
    behaviour: Any
    seed: int = 0
    top_k: int = 4
    """Candidate tokens per suffix position: those with the largest objective gradient."""
    base_swap: float = 0.1
    """Probability that a child changes the base prompt instead of a suffix token."""

    def __post_init__(self) -> None:
        if getattr(self.behaviour, "objective_texts", None) is None:
            raise ValueError("attacker 'gcg' needs a behaviour with a white-box objective")
        self.rng = random.Random(f"gcg:{self.seed}")
        self.allowed = allowed_tokens(self.tokenizer, self.space.alphabet)
        self.best: tuple[float, int, tuple[int, ...]] | None = None
        self.seen: set[tuple[int, tuple[int, ...]]] = set()
        self._pending: dict[str, tuple[int, tuple[int, ...]]] = {}

    def render(self, base: int, suffix: tuple[int, ...]) -> str:
        return self.space.render(base, self.tokenizer.decode(list(suffix)))

    def propose(self, n: int) -> list[str]:
        top = self._top_tokens() if self.best is not None else None
        out = []
        for _ in range(n):
            cand = self._child(top)
            for _ in range(20):  # avoid repeats and tokenizations that do not round-trip
                if cand not in self.seen and self._round_trips(cand):
                    break
                cand = self._child(top)
            self.seen.add(cand)
            prompt = self.render(*cand)
            self._pending[prompt] = cand
            out.append(prompt)
        return out

    def update(self, prompts: list[str], scores: list[float], fitness: list[float]) -> None:
        for p, f in zip(prompts, fitness):
            cand = self._pending.pop(p, None)
            if cand is not None and (self.best is None or f > self.best[0]):
                self.best = (f, *cand)

    def _child(self, top: list[list[int]] | None) -> tuple[int, tuple[int, ...]]:
        if self.best is None or top is None:
            suffix = tuple(self.rng.choice(self.allowed) for _ in range(self.space.length))
            return self.rng.randrange(len(self.space.bases)), suffix
        _, base, suffix = self.best
        if self.rng.random() < self.base_swap:
            return self.rng.randrange(len(self.space.bases)), suffix
        i = self.rng.randrange(len(suffix))
        return base, suffix[:i] + (self.rng.choice(top[i]),) + suffix[i + 1 :]

    def _pieces(self, base: int) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before and after the suffix."""
        b = self.space.render(base, "")
        head = b[: len(b) - len(self.space.end)] if self.space.end else b
        tail = self.tokenizer(self.space.end, add_special_tokens=False)["input_ids"]
        return self.tokenizer(head)["input_ids"], tail

    def _round_trips(self, cand: tuple[int, tuple[int, ...]]) -> bool:
        head, tail = self._pieces(cand[0])
        return self.tokenizer(self.render(*cand))["input_ids"] == head + list(cand[1]) + tail

    def _top_tokens(self) -> list[list[int]]:
        """Per suffix position, the ``top_k`` allowed tokens of largest objective gradient."""
        assert self.best is not None
        _, base, suffix = self.best
        head, tail = self._pieces(base)
        text = self.behaviour.objective_texts([self.render(base, suffix)])[0]
        cont = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        grad = suffix_token_gradient(
            self.model, head, list(suffix), tail, cont, self.behaviour.objective_sign
        )  # [suffix_len, vocab]
        allowed = torch.tensor(self.allowed)
        k = min(self.top_k, len(self.allowed))
        best = grad[:, allowed].topk(k, dim=-1).indices  # [suffix_len, k]
        return [[self.allowed[j] for j in row] for row in best.tolist()]


def allowed_tokens(tokenizer: Any, alphabet: str) -> list[int]:
    """Ids of the tokens whose text is non-empty and made only of ``alphabet`` characters."""
    chars = set(alphabet)
    special = set(tokenizer.all_special_ids)
    out = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if i not in special and text and set(text) <= chars:
            out.append(i)
    if not out:
        raise ValueError(f"no token of the tokenizer is made of {alphabet!r} characters")
    return out


def suffix_token_gradient(
    model: Any,
    head: list[int],
    suffix: list[int],
    tail: list[int],
    continuation: list[int],
    sign: float = 1.0,
) -> torch.Tensor:
    """d(sign x log p(continuation | head + suffix + tail)) / d(one-hot suffix tokens), shape
    [len(suffix), vocab]: GCG's linearised effect of substituting each token at each position."""
    emb = model.get_input_embeddings()
    weight = emb.weight  # [vocab, d]
    one_hot = torch.zeros(len(suffix), weight.shape[0], dtype=weight.dtype, device=weight.device)
    one_hot[torch.arange(len(suffix)), torch.tensor(suffix)] = 1.0
    one_hot.requires_grad_(True)

    def embed(ids: list[int]) -> torch.Tensor:
        return emb(torch.tensor(ids, dtype=torch.long, device=weight.device))

    embeds = torch.cat([embed(head), one_hot @ weight, embed(tail), embed(continuation)])
    logits = model(inputs_embeds=embeds[None]).logits[0]  # [seq, vocab]
    start = len(head) + len(suffix) + len(tail)
    logp = torch.log_softmax(logits[start - 1 : start - 1 + len(continuation)].float(), dim=-1)
    objective = sign * logp.gather(-1, torch.tensor(continuation)[:, None]).sum()
    (grad,) = torch.autograd.grad(objective, one_hot)
    return grad


# --- attacker language models -----------------------------------------------------------------


@dataclass
class LMAttacker:
    """Test cases sampled from an attacker LM: ``case_prefix + generated + case_end``, the LM
    reading ``instruction`` (+ few-shot examples) + ``case_prefix`` and stopping at ``case_end``.

    ``mode`` picks the attacker: ``zero_shot``, ``few_shot`` or ``supervised`` (``rl`` is
    :class:`GRPOAttacker`)."""

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
    """supervised: learning rate (Adam)."""
    sft_steps: int = 4
    """supervised: gradient steps after each round that found successes."""
    sft_batch: int = 16
    """supervised: successes per gradient step (drawn with replacement)."""
    successes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.mode}:{self.seed}")
        self._round = 0
        if self.mode == "supervised":
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
        return [self.case_prefix + t + self.case_end for t in out.texts]

    def update(self, prompts: list[str], scores: list[float], fitness: list[float]) -> None:
        new = [p for p, s in zip(prompts, scores) if s >= 0.5]
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


Query = Callable[[list[str]], list[float]]
"""Sends test cases to the target (each one a query) and returns the behaviour's scores."""


@dataclass
class GRPOAttacker:
    """The RL attacker of Perez et al. (2022) with TRL's ``GRPOTrainer``: the attacker LM is
    trained on its own test cases, reward = behaviour score + ``diversity_bonus`` x (1 - BLEU
    against the successes of earlier steps) for a success (0 otherwise), with GRPO's per-token
    k3 KL penalty ``beta`` to the initial attacker (a frozen copy).

    It does not fit ``propose``/``update`` (TRL owns generation), so the attack loop hands it the
    whole budget: :meth:`train_against` runs one ``trainer.train()`` of ``ceil(budget /
    batch_size)`` steps, each sampling one group of ``batch_size`` test cases from the shared
    context, whose reward function sends them to the target through ``query`` (so every scored
    test case is a counted query, recorded like any attacker's). Test cases past the budget in a
    last partial step are not sent and get reward 0. ``propose`` then samples fresh test cases
    from the trained attacker, as the zero-shot attacker does. TRL stops a test case at
    ``case_end`` when it is one token (it is added to the attacker's EOS ids)."""

    model: Any
    tokenizer: Any
    seed: int = 0
    instruction: str = ""
    """Text before the test cases; empty on the tiny path."""
    case_prefix: str = "Q: "
    case_end: str = "\n"
    max_new_tokens: int = 16
    lr: float = 1e-3
    """Learning rate (AdamW, constant after TRL's default warmup of 0)."""
    beta: float = 0.05
    """Weight of GRPO's per-token k3 KL penalty to the initial attacker."""
    diversity_bonus: float = 0.5
    """Weight of 1 - BLEU(test case, earlier successes) in the reward of a success."""
    successes: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    """Per training step: ``queries`` so far, mean ``reward``, ``success_rate``, TRL's ``kl``."""

    def __post_init__(self) -> None:
        self.sampler = LMAttacker(
            self.model,
            self.tokenizer,
            mode="zero_shot",
            seed=self.seed,
            instruction=self.instruction,
            case_prefix=self.case_prefix,
            case_end=self.case_end,
            max_new_tokens=self.max_new_tokens,
        )

    def propose(self, n: int) -> list[str]:
        return self.sampler.propose(n)

    def update(self, prompts: list[str], scores: list[float], fitness: list[float]) -> None:
        self.successes += [p for p, s in zip(prompts, scores) if s >= 0.5]

    def case(self, completion: str) -> str:
        """The test case of a TRL completion: cut at ``case_end``, framed like the sampler's."""
        text = completion.split(self.case_end)[0] if self.case_end else completion
        return self.case_prefix + text + self.case_end

    def reward(self, cases: list[str], scores: list[float]) -> list[float]:
        """score + ``diversity_bonus`` x (1 - BLEU against successes before this step) for a
        success, the score otherwise."""
        earlier = list(self.successes)
        return [
            s + (self.diversity_bonus * (1 - bleu(c, earlier)) if s >= 0.5 else 0.0)
            for c, s in zip(cases, scores)
        ]

    def train_against(self, query: Query, budget: int, batch_size: int) -> None:
        """Spend ``budget`` queries in one TRL ``GRPOTrainer.train()`` (see the class)."""
        import tempfile

        from datasets import Dataset
        from transformers import PrinterCallback
        from trl import GRPOConfig, GRPOTrainer

        from superalign.train.rl import attach_reference, check_sampling
        from superalign.train.trl_common import trainer_args

        if batch_size < 2:
            raise ValueError("attacker 'rl' needs batch_size >= 2: GRPO compares within a group")
        steps = -(-budget // batch_size)
        spent = 0

        def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
            nonlocal spent
            cases = [self.case(c) for c in completions]
            sent = cases[: max(0, budget - spent)]
            scores = query(sent) if sent else []
            spent += len(sent)
            rewards = self.reward(sent, scores) + [0.0] * (len(cases) - len(sent))
            self.update(sent, scores, scores)
            self.history.append(
                {
                    "queries": spent,
                    "reward": sum(rewards) / len(rewards),
                    "success_rate": sum(s >= 0.5 for s in scores) / max(1, len(scores)),
                }
            )
            return rewards

        reward.__name__ = "behaviour"
        reference = copy.deepcopy(self.model).eval()
        self._stop_at_case_end()
        with tempfile.TemporaryDirectory() as out:
            args = GRPOConfig(
                **trainer_args(out, seed=self.seed, log_every=1, checkpoint_every=0),
                max_steps=steps,
                per_device_train_batch_size=batch_size,
                num_generations=batch_size,  # one group: every test case shares the context
                max_completion_length=self.max_new_tokens,
                temperature=1.0,  # sample from the attacker itself: what the KL assumes
                top_p=1.0,
                top_k=0,
                beta=0.0,  # set by attach_reference, with the frozen initial attacker
                learning_rate=self.lr,
                lr_scheduler_type="constant",
                disable_dropout=True,
            )
            context = self.sampler.context()
            trainer = GRPOTrainer(
                model=self.model,
                reward_funcs=reward,
                args=args,
                train_dataset=Dataset.from_list([{"prompt": context}] * steps),
                processing_class=self.tokenizer,
            )
            trainer.remove_callback(PrinterCallback)  # per-step log lines: kept in history
            attach_reference(trainer, reference, self.beta)
            check_sampling(trainer, self.tokenizer)
            trainer.train()
        kls = [log["kl"] for log in trainer.state.log_history if "kl" in log]
        for row, kl in zip(self.history, kls):
            row["kl"] = kl
        self.model.eval()

    def _stop_at_case_end(self) -> None:
        """Make ``case_end`` (when it is one token) an EOS id of the attacker's generation."""
        ids = self.tokenizer(self.case_end, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            return
        g = self.model.generation_config
        eos = g.eos_token_id if g.eos_token_id is not None else self.tokenizer.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos)
        g.eos_token_id = list(dict.fromkeys([*eos, ids[0]]))


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


ATTACKERS: tuple[str, ...] = (
    "random",
    "search",
    "gcg",
    "zero_shot",
    "few_shot",
    "supervised",
    "rl",
)
"""Attacker names accepted by :func:`build_attacker`."""


def build_attacker(
    name: str,
    *,
    seed: int,
    space: PromptSpace,
    attacker_lm: tuple[Any, Any] | None,
    options: dict[str, Any],
    target: Target | None = None,
    behaviour: Any = None,
) -> Any:
    """An attacker by name. LM attackers that train (``supervised``, ``rl``) get their own copy
    of the attacker LM; ``gcg`` differentiates through ``target`` for ``behaviour``'s objective;
    ``options`` are the attacker's fields (e.g. ``{beta: 0.1}``)."""
    if name == "random":
        return RandomSearch(space, seed)
    if name == "search":
        return EvolutionarySearch(space, seed, **options)
    if name == "gcg":
        if target is None or behaviour is None:
            raise ValueError("attacker 'gcg' needs the target and the behaviour")
        return GreedyCoordinateGradient(
            space, target.model, target.tokenizer, behaviour, seed, **options
        )
    if name not in ATTACKERS:
        raise ValueError(f"attacker {name!r} is not one of {list(ATTACKERS)}")
    if attacker_lm is None:
        raise ValueError(f"attacker {name!r} needs an attacker LM")
    model, tok = attacker_lm
    if name in ("supervised", "rl"):
        model = copy.deepcopy(model)
        torch.manual_seed(seed)
    if name == "rl":
        return GRPOAttacker(model, tok, seed=seed, **options)
    return LMAttacker(model, tok, mode=name, seed=seed, **options)
