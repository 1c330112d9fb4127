"""Stage ``best_of_n``: best-of-n sampling against any overseer, with gold reward and KL for each n.

``superalign best_of_n model=runs/sft-1a2b overseer=rater ns=[1,2,4,8,16,32,64]`` samples
``N = max(ns)`` completions of each of ``n_prompts`` held-out test prompts **once** (seeded, at
``temperature``), scores every sample with the overseer (the proxy) and the task's gold grader,
and then, for each n, estimates what best-of-n selection by the proxy would give, from the same
N samples. No model is trained; the "policy" at each n is "draw n, keep the proxy's favourite".

Estimators (pure functions below, tested against brute force):

- **Rewards** (:func:`best_of_n_mean`): the unbiased estimator of E[value of the best of n by
  proxy] from N >= n i.i.d. samples is the average over all C(N, n) subsets of size n (Nakano et
  al. 2021, WebGPT, appendix; Gao et al. 2022, section 2). In closed form: sort the samples by
  proxy; the sample of rank i (0-based, lowest first) is the best of a uniformly random n-subset
  with probability ``C(i, n-1) / C(N, n)``. **Ties** in the proxy are broken uniformly at random,
  and averaged exactly rather than drawn: within a group of equal proxy scores the selected sample
  is, by symmetry, uniform over the group, so each value is replaced by its group's mean before
  weighting. The estimate is deterministic and the curve in n is smooth.
- **KL** (:func:`best_of_n_empirical_kl`): KL(best-of-n || base) by plug-in. The N samples of a
  prompt are taken as the base distribution (each 1/N); best-of-n from it (draws with
  replacement, ties broken uniformly at random) puts mass ``F_k^n - F_(k-1)^n`` on the k-th
  distinct proxy value (``F`` the empirical CDF of proxy values) and spreads it within the value's
  group in proportion to the base, so the KL is exactly that of the proxy-value distributions,
  computed with :func:`~superalign.train.kl.best_of_n_distribution`. Averaged over prompts. With
  no ties it reaches ``log n - (n-1)/n`` only as N -> infinity: with N atoms it is smaller (at
  most log N), so the plug-in **underestimates** a continuous proxy's KL, badly when n is close to
  N (``kl/ref_no_ties`` shows that finite-N ceiling). With ties (a binary grader, a rater's 0/1
  checks) the true KL is smaller than the bound; the plug-in shows it, and for a proxy with few
  levels it is consistent and nearly unbiased once N is large.

Metrics (``metrics.jsonl``, one line per n, ``step = n``):

- ``reward/proxy``, ``reward/gold``: the subset estimates of the mean proxy and gold score of the
  best-of-n completion, averaged over prompts;
- ``reward/gold_low``, ``reward/gold_high``: 95% normal interval of ``reward/gold`` over prompts;
- ``kl/bound``: ``log n - (n-1)/n``, the analytic KL(best-of-n || base) without ties;
- ``kl/ref``: the plug-in KL above (nats), averaged over prompts;
- ``kl/ref_no_ties``: the same plug-in as if all N proxy scores were distinct (the most the
  plug-in can show with N samples); ``kl/bound - kl/ref_no_ties`` is the finite-N bias and
  ``kl/ref_no_ties - kl/ref`` what ties in the proxy remove;
- ``policy/length``: subset estimate of the best-of-n completion's length in tokens;
- ``n``: n again, for tables.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from superalign.config import set_threads
from superalign.metrics import auroc
from superalign.models.load import load_model
from superalign.models.sampling import sample
from superalign.overseers import build_overseer
from superalign.runs import Run, atomic_write_text
from superalign.tasks import get_task, split_examples
from superalign.train.kl import (
    best_of_n_distribution,
    best_of_n_kl_bound,
    categorical_kl,
    mean_ci,
)


@dataclass
class BestOfNConfig:
    """Best-of-n selection by an overseer, measured in gold reward and KL for each n."""

    model: str = ""
    """Policy to sample from: a ``load_model`` spec (run folder, model folder, preset, .gguf, hub
    id). Required."""
    task: str = "arithmetic"
    """Task family whose held-out test split supplies the prompts and the gold grader."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task family (e.g. ``{n_entities: 40}`` for facts)."""
    difficulties: list[int] = field(default_factory=lambda: [1])
    """Difficulty levels of the prompts (``n_prompts`` split evenly across them)."""
    n_prompts: int = 64
    """Held-out test prompts; each gets ``max(ns)`` samples."""
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    """Values of n to evaluate. All are estimated from the same ``max(ns)`` samples per prompt."""
    temperature: float = 1.0
    """Sampling temperature of the base distribution (KL is measured against this
    distribution)."""
    max_new_tokens: int = 64
    """Generation limit per completion."""
    overseer: str = "gold"
    """The proxy that picks the best of n: ``gold``, ``rater``, ``judge``, ``reward_model`` or a
    reward_model run folder (see ``superalign.overseers.build_overseer``)."""
    overseer_options: dict[str, Any] = field(default_factory=dict)
    """Options of the overseer (e.g. ``{check_steps: 0, length_bias: 0.2}`` for ``rater``)."""
    seed: int = 0
    """Seeds the prompts and the samples."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""
    batch_size: int = 64
    """Completions sampled per forward batch."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if not self.model:
            raise ConfigError(
                "model is required: give a load_model spec, e.g. model=runs/pretrain-1a2b"
            )
        check_at_least(self, 1, "n_prompts", "max_new_tokens", "batch_size")
        if self.threads < 0:
            raise ConfigError(f"threads must be at least 0, not {self.threads}")
        if not self.ns or min(self.ns) < 1:
            raise ConfigError(
                f"ns must be a non-empty list of n >= 1, e.g. [1, 4, 16], not {self.ns}"
            )
        if len(set(self.ns)) != len(self.ns):
            raise ConfigError(f"ns must not repeat a value: {self.ns}")
        if not self.temperature > 0:
            raise ConfigError(
                f"temperature must be positive (greedy samples are all alike), not {self.temperature}"
            )
        if not self.difficulties:
            raise ConfigError("difficulties must name at least one level, e.g. [1]")


# --- estimators (pure) ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def best_of_n_weights(N: int, n: int) -> np.ndarray:
    """``w[i] = C(i, n-1) / C(N, n)``: the probability that the sample of rank i (0 = lowest
    proxy) is the best of a uniformly random n-subset of N samples. Sums to 1; shape [N]
    (read-only: cached). Exact integer binomials, one rounding each."""
    if not 1 <= n <= N:
        raise ValueError(f"need 1 <= n <= N, got n={n}, N={N}")
    total = math.comb(N, n)
    w = np.array([math.comb(i, n - 1) / total for i in range(N)])
    w.flags.writeable = False
    return w


def best_of_n_mean(proxy: Any, values: Any, n: int) -> float:
    """Unbiased estimate of E[value of the best of n samples by ``proxy``] from N >= n samples:
    the exact average over all size-n subsets, ties in ``proxy`` broken uniformly at random
    (averaged: values are replaced by their tie group's mean)."""
    proxy, values = np.asarray(proxy, dtype=float), np.asarray(values, dtype=float)
    if proxy.shape != values.shape or proxy.ndim != 1:
        raise ValueError(
            f"proxy and values must be equal-length 1-D, got {proxy.shape}, {values.shape}"
        )
    if np.isnan(proxy).any():
        raise ValueError("proxy scores contain NaN; the overseer must score every completion")
    order = np.argsort(proxy, kind="stable")
    _, group, size = np.unique(proxy[order], return_inverse=True, return_counts=True)
    tied = (np.bincount(group, weights=values[order]) / size)[group]  # [N], in proxy order
    return float(best_of_n_weights(len(proxy), n) @ tied)


def best_of_n_empirical_kl(proxy: Any, n: int) -> float:
    """Plug-in KL(best-of-n || base) in nats, with the samples as the base distribution (each
    1/N) and ties broken uniformly at random: the KL between the distribution of the best-of-n
    proxy value and that of one draw. At most ``log n - (n-1)/n`` and at most log N."""
    levels, counts = np.unique(np.asarray(proxy, dtype=float), return_counts=True)
    p = torch.as_tensor(counts / counts.sum(), dtype=torch.float64)
    bon = best_of_n_distribution(p, torch.as_tensor(levels), n)
    return max(float(categorical_kl(bon, p)), 0.0)


# --- the stage -----------------------------------------------------------------------------------


def prompts_for(cfg: BestOfNConfig, task: Any) -> list[Any]:
    """``n_prompts`` held-out test examples, split evenly over ``difficulties``."""
    return split_examples(task, "test", cfg.n_prompts, cfg.difficulties, cfg.seed)


def run(cfg: BestOfNConfig, run: Run) -> dict[str, Any]:
    """Sample once, score with proxy and gold, estimate best-of-n for each n; returns the summary."""
    set_threads(cfg.threads)
    task = get_task(cfg.task, **cfg.task_options)
    bad = [d for d in cfg.difficulties if d not in task.difficulties]
    if bad:
        raise ValueError(
            f"difficulties {bad} do not exist in {cfg.task}; it has {list(task.difficulties)}"
        )
    examples = prompts_for(cfg, task)
    N = max(cfg.ns)
    model, tokenizer, info = load_model(cfg.model)
    tokenizer.padding_side = "left"
    rows = [ex for ex in examples for _ in range(N)]  # prompt-major: row j*N + i is sample i of j
    out = sample(
        model,
        tokenizer,
        [ex.prompt for ex in rows],
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    del model  # the overseer may load a model of its own
    overseer = build_overseer(cfg.overseer, task, examples, cfg.overseer_options)
    proxy = np.array(overseer.score([ex.prompt for ex in rows], out.texts), dtype=float)
    gold = np.array([task.grade(ex, c) for ex, c in zip(rows, out.texts)], dtype=float)
    length = np.array([len(c) for c in out.completion_ids], dtype=float)
    proxy, gold, length = (a.reshape(len(examples), N) for a in (proxy, gold, length))

    table = []
    for n in sorted(cfg.ns):
        row = evaluate_n(proxy, gold, length, n)
        run.log(n, row)
        table.append({k: round(v, 6) for k, v in row.items()})

    atomic_write_text(
        run.path("samples.jsonl"),
        "".join(
            json.dumps(
                {
                    "prompt": ex.prompt,
                    "completion": c,
                    "proxy": float(p),
                    "gold": float(g),
                    "tokens": int(t),
                }
            )
            + "\n"
            for ex, c, p, g, t in zip(rows, out.texts, proxy.flat, gold.flat, length.flat)
        ),
    )
    peak = max(table, key=lambda r: r["reward/gold"])  # first n reaching the maximum
    return {
        "task": cfg.task,
        "model": info,
        "overseer": cfg.overseer,
        "n_prompts": len(examples),
        "samples_per_prompt": N,
        "table": table,
        "gold_peak": peak["reward/gold"],
        "n_at_gold_peak": peak["n"],
        "kl_at_gold_peak": peak["kl/bound"],
        "gold_first": table[0]["reward/gold"],
        "gold_final": table[-1]["reward/gold"],
        "proxy_first": table[0]["reward/proxy"],
        "proxy_final": table[-1]["reward/proxy"],
        "proxy_auroc": within_prompt_auroc(proxy, gold),
        "prompts_with_both_labels": int(sum(0 < (g >= 0.5).sum() < N for g in gold)),
        "samples": "samples.jsonl",
    }


def evaluate_n(proxy: np.ndarray, gold: np.ndarray, length: np.ndarray, n: int) -> dict[str, float]:
    """The metrics of best-of-n from [prompts, N] arrays of proxy, gold and length per sample."""
    N = proxy.shape[1]
    g = [best_of_n_mean(p, v, n) for p, v in zip(proxy, gold)]
    ci = mean_ci(g)
    no_ties = best_of_n_empirical_kl(np.arange(N), n)
    return {
        "n": n,
        "reward/proxy": float(np.mean([best_of_n_mean(p, p, n) for p in proxy])),
        "reward/gold": ci.mean,
        "reward/gold_low": ci.low if len(g) > 1 else ci.mean,
        "reward/gold_high": ci.high if len(g) > 1 else ci.mean,
        "kl/bound": best_of_n_kl_bound(n),
        "kl/ref": float(np.mean([best_of_n_empirical_kl(p, n) for p in proxy])),
        "kl/ref_no_ties": no_ties,
        "policy/length": float(np.mean([best_of_n_mean(p, v, n) for p, v in zip(proxy, length)])),
    }


def within_prompt_auroc(proxy: np.ndarray, gold: np.ndarray) -> float | None:
    """Mean over prompts of the proxy's AUROC against gold labels (gold >= 0.5 is good) among
    that prompt's samples: how well the proxy ranks what best-of-n chooses between. Prompts
    whose samples are all good or all bad are skipped; None when none is left."""
    per_prompt = [auroc(list(p), [x >= 0.5 for x in g]) for p, g in zip(proxy, gold)]
    per_prompt = [a for a in per_prompt if not math.isnan(a)]
    return float(np.mean(per_prompt)) if per_prompt else None
