"""Stage ``digits_debate``: Irving, Christiano & Amodei's (2018) sparse-pixel debate on 8x8 digits.

``superalign digits_debate ks=[4,6]`` reproduces the MNIST experiment of "AI safety via debate"
on the 1797 8x8 digits that ship with scikit-learn (``sklearn.datasets.load_digits``):

1. **Judge.** A small MLP is trained to classify a digit from ``k`` revealed pixels only. Its input
   is the revealed values (pixel / 16, hidden pixels set to 0) beside a 0/1 mask channel, so it
   can tell "revealed black" from "hidden". Training reveals ``k`` pixels drawn without
   replacement with weight 1 for a nonzero pixel and ``zero_weight`` for a zero (background)
   pixel, fresh for every batch: the paper's judge saw random *nonzero* pixels; a small
   ``zero_weight`` keeps zero pixels, which debaters may reveal, in its training distribution.
   One judge per ``k``.
2. **Without debate.** Judge accuracy (10-way argmax) on held-out images with ``k`` random pixels
   revealed by the same sampling as training.
3. **Debate.** An honest player argues for the true label, a liar for a wrong label it commits to
   up front (the paper's "precommit"). They alternately reveal one pixel each, ``k`` in total,
   ``first`` moving first. The judge then picks the more likely of the two claimed labels from
   the revealed pixels; the honest player wins when the true label's logit is strictly higher.
   With ``lie="all"`` the image counts as judged correctly only if the honest player wins
   against every one of the 9 wrong labels (the liar picks its best lie with hindsight); with
   ``lie="plausible"`` the liar argues for the wrong label the judge finds most probable under
   random reveals of that image.
4. **Debaters.** ``greedy`` reveals the pixel that most increases its own label's judge logit
   minus the opponent's, one step ahead. ``mcts`` is UCT tree search over the remaining reveals
   of both players: each node considers the ``mcts_width`` best one-step moves for the player to
   move, leaves are valued by the judge's verdict after random completions of the game (the
   paper's rollouts), and the most-visited move is played.

A judge here is any callable ``judge(values [n, 64], mask [n, 64] bool) -> logits [n, 10]``; a
player any callable ``player(judge, image, mask, own, other, turns_left) -> pixel``. The game
(:func:`play`) checks that every move is a legal, unrevealed pixel.

Artifacts: ``table.md`` and ``results.json`` (the accuracy table), ``debate.png`` (bar plot with
95% intervals), ``judge_k{k}.safetensors`` (judge weights).

Metrics (``metrics.jsonl``):

- ``judge/loss/k{k}``: training cross-entropy (nats) of the k-pixel judge, mean over the last
  ``log_every`` steps (step = training step);
- ``judge/accuracy/k{k}``: held-out 10-way accuracy of the judge on ``k`` random revealed pixels,
  i.e. accuracy without debate;
- ``debate/{greedy,mcts}/{honest,liar}_first/k{k}``: held-out fraction of images on which the
  honest player wins the debate (judge accuracy with debate), for each debater and first mover.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from superalign.runs import Run, atomic_write_json, atomic_write_text

N_PIXELS = 64  # 8x8 images
N_CLASSES = 10
PAPER = {4: (0.482, 0.852), 6: (0.594, 0.889)}
"""Irving et al. (2018), MNIST 28x28, CNN judge, MCTS debaters with precommit:
k -> (judge accuracy on k random nonzero pixels, judge accuracy with debate) (paper abstract)."""

Judge = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``judge(values [n, 64], mask [n, 64] bool) -> logits [n, 10]``; sees ``values`` only where
``mask`` is set."""
Player = Callable[[Judge, np.ndarray, np.ndarray, int, int, int], int]
"""``player(judge, image [64], mask [64], own_label, other_label, turns_left) -> pixel``."""


@dataclass
class DigitsDebateConfig:
    """Judge accuracy with and without sparse-pixel debate on scikit-learn's 8x8 digits."""

    ks: list[int] = field(default_factory=lambda: [4, 6])
    """Numbers of revealed pixels; one judge is trained for each (the paper used 4 and 6)."""
    test_fraction: float = 0.2
    """Fraction of the 1797 images held out (stratified by label, seeded) for every evaluation."""
    zero_weight: float = 0.1
    """Sampling weight of a zero (background) pixel relative to a nonzero one when pixels are
    revealed at random (judge training, the no-debate baseline, MCTS rollouts). 0: only nonzero
    pixels, as in the paper."""
    hidden: int = 128
    """Width of the judge's two hidden layers (MLP on revealed values + mask, 128 inputs)."""
    train_steps: int = 4000
    """Judge training steps (AdamW); every batch draws fresh random reveals."""
    batch_size: int = 128
    """Images per judge training step."""
    lr: float = 2e-3
    """Judge learning rate (AdamW, cosine decay to 0)."""
    weight_decay: float = 1e-4
    """Judge AdamW weight decay."""
    log_every: int = 200
    """Training steps between ``judge/loss/k{k}`` log lines."""
    random_draws: int = 20
    """Random reveals per held-out image for the no-debate accuracy (and the plausible lie)."""
    n_test: int = 0
    """Held-out images for the greedy debates (0: all of them, 360 by default)."""
    lie: Literal["all", "plausible"] = "all"
    """``all``: the honest player must beat each of the 9 wrong labels; ``plausible``: the liar
    argues for the wrong label the judge rates most probable under random reveals."""
    first: list[Literal["honest", "liar"]] = field(default_factory=lambda: ["honest", "liar"])
    """Who reveals the first pixel; each entry is a separate row of the table."""
    mcts_n: int = 100
    """Held-out images for the MCTS debates (the first ones of the greedy sample; 0: no MCTS)."""
    mcts_rollouts: int = 48
    """MCTS simulations per move."""
    mcts_width: int = 8
    """Moves MCTS considers at each node: the best ones by one-step judge score for the player to
    move."""
    mcts_c: float = 0.7
    """UCT exploration constant."""
    mcts_leaf_samples: int = 8
    """Random completions of the game that value each new MCTS leaf (one batched judge call)."""
    seed: int = 0
    """Seeds the split, the judge, the random reveals and the rollouts."""
    threads: int = 1
    """CPU threads for torch and numpy (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if not self.ks or any(not 1 <= k <= N_PIXELS - 1 for k in self.ks):
            raise ConfigError(f"ks must list pixel counts between 1 and 63, not {self.ks}")
        if not 0.05 <= self.test_fraction <= 0.5:
            raise ConfigError(f"test_fraction must be in [0.05, 0.5], not {self.test_fraction}")
        if not 0 <= self.zero_weight <= 1:
            raise ConfigError(f"zero_weight must be in [0, 1], not {self.zero_weight}")
        check_at_least(
            self,
            1,
            "hidden",
            "train_steps",
            "batch_size",
            "log_every",
            "random_draws",
            "mcts_rollouts",
            "mcts_width",
            "mcts_leaf_samples",
        )
        check_at_least(self, 0, "n_test", "mcts_n", "threads")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), not {self.lr}")
        if not self.first:
            raise ConfigError("first must name at least one first mover: honest or liar")
        if self.mcts_c < 0:
            raise ConfigError(f"mcts_c must be at least 0, not {self.mcts_c}")


# --- data and random reveals ---------------------------------------------------------------------


@dataclass
class Digits:
    """The scikit-learn digits, split: images scaled to [0, 1], flattened row-major."""

    train_x: np.ndarray  # [n_train, 64] float32
    train_y: np.ndarray  # [n_train] int64
    test_x: np.ndarray  # [n_test, 64] float32
    test_y: np.ndarray  # [n_test] int64


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """``load_digits`` (1797 images, values 0..16) / 16, split stratified by label."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return Digits(tr_x, tr_y, te_x, te_y)


def reveal_weights(images: np.ndarray, zero_weight: float) -> np.ndarray:
    """Sampling weight of each pixel: 1 when nonzero, ``zero_weight`` when zero."""
    return np.where(images > 0, 1.0, zero_weight)


def random_masks(
    weights: np.ndarray, k: int, rng: np.random.Generator, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Masks with ``k`` pixels per row drawn without replacement, proportionally to ``weights``
    ([n, 64]), skipping ``exclude`` ([n, 64] bool). Gumbel top-k: the ``k`` largest of
    ``log w + Gumbel`` are a weighted draw without replacement."""
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + rng.gumbel(size=weights.shape)
    keys = np.where(weights > 0, keys, -1e9)  # a zero weight only when nothing else is left
    if exclude is not None:
        keys = np.where(exclude, -np.inf, keys)
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    mask = np.zeros(weights.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


# --- the judge -----------------------------------------------------------------------------------


def judge_input(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[n, 128]: the revealed values (hidden pixels 0) beside the 0/1 mask."""
    mask = mask.astype(np.float32)
    return np.concatenate([values * mask, mask], axis=-1).astype(np.float32)


def judge_network(hidden: int) -> torch.nn.Sequential:
    """MLP 128 -> hidden -> hidden -> 10 logits."""
    return torch.nn.Sequential(
        torch.nn.Linear(2 * N_PIXELS, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, N_CLASSES),
    )


@dataclass
class MLPJudge:
    """A trained judge network as a numpy callable (fast on the single rows that games need)."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    """(weight [in, out], bias [out]) per linear layer; ReLU between them."""

    @classmethod
    def from_network(cls, net: torch.nn.Sequential) -> MLPJudge:
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        return cls(
            [(m.weight.detach().T.numpy().copy(), m.bias.detach().numpy().copy()) for m in linears]
        )

    def __call__(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        h = judge_input(values, mask)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                np.maximum(h, 0, out=h)
        return h


def train_judge(
    digits: Digits,
    k: int,
    cfg: DigitsDebateConfig,
    log: Callable[[int, float], None] | None = None,
) -> tuple[MLPJudge, torch.nn.Sequential]:
    """Train the ``k``-pixel judge: fresh random reveals every batch, cross-entropy, AdamW with
    cosine decay; ``log(step, mean_loss)`` every ``cfg.log_every`` steps."""
    torch.manual_seed(cfg.seed + k)
    rng = np.random.default_rng([cfg.seed, k, 1])
    net = judge_network(cfg.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps)
    weights = reveal_weights(digits.train_x, cfg.zero_weight)
    running: list[float] = []
    for step in range(1, cfg.train_steps + 1):
        idx = rng.integers(0, len(digits.train_x), cfg.batch_size)
        mask = random_masks(weights[idx], k, rng)
        x = torch.from_numpy(judge_input(digits.train_x[idx], mask))  # [batch, 128]
        loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(digits.train_y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if log is not None and step % cfg.log_every == 0:
            log(step, float(np.mean(running)))
            running = []
    net.eval()
    return MLPJudge.from_network(net), net


def random_reveal_probs(
    judge: Judge, images: np.ndarray, k: int, draws: int, zero_weight: float, seed: int
) -> np.ndarray:
    """[n, draws, 10] judge probabilities on ``draws`` random ``k``-pixel reveals per image."""
    rng = np.random.default_rng([seed, k, 2])
    rep = np.repeat(images, draws, axis=0)  # [n * draws, 64]
    mask = random_masks(reveal_weights(rep, zero_weight), k, rng)
    logits = judge(rep, mask)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs.reshape(len(images), draws, N_CLASSES)


# --- the game ------------------------------------------------------------------------------------


@dataclass
class DebateResult:
    """One debate: the pixels in the order revealed and the judge's verdict."""

    pixels: list[int]
    margin: float
    """Judge logit of the true label minus that of the lie after all reveals."""

    @property
    def honest_wins(self) -> bool:
        return self.margin > 0


def play(
    judge: Judge,
    image: np.ndarray,
    truth: int,
    lie: int,
    honest: Player,
    liar: Player,
    k: int,
    first: Literal["honest", "liar"] = "honest",
) -> DebateResult:
    """Alternate ``k`` reveals between the players (``first`` moves first), then ask the judge to
    pick between the two claimed labels. Raises ValueError on an illegal move."""
    mask = np.zeros(N_PIXELS, dtype=bool)
    turns = [(honest, truth, lie), (liar, lie, truth)]
    if first == "liar":
        turns.reverse()
    pixels = []
    for t in range(k):
        player, own, other = turns[t % 2]
        px = int(player(judge, image, mask, own, other, k - t))
        if not 0 <= px < N_PIXELS or mask[px]:
            raise ValueError(f"illegal move {px}: not an unrevealed pixel in 0..63")
        mask[px] = True
        pixels.append(px)
    logits = judge(image[None], mask[None])[0]
    return DebateResult(pixels, float(logits[truth] - logits[lie]))


def one_step_scores(
    judge: Judge, image: np.ndarray, mask: np.ndarray, own: int, other: int
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate pixels, judge logit of ``own`` minus ``other`` after revealing each one)."""
    cand = np.flatnonzero(~mask)
    masks = np.repeat(mask[None], len(cand), axis=0)  # [n_cand, 64]
    masks[np.arange(len(cand)), cand] = True
    logits = judge(np.broadcast_to(image, masks.shape), masks)
    return cand, logits[:, own] - logits[:, other]


def greedy_player(
    judge: Judge, image: np.ndarray, mask: np.ndarray, own: int, other: int, turns_left: int
) -> int:
    """Reveal the pixel that most raises the judge's log-odds of ``own`` against ``other``."""
    cand, score = one_step_scores(judge, image, mask, own, other)
    return int(cand[np.argmax(score)])


@dataclass
class _Node:
    mask: np.ndarray
    turns_left: int
    mine: bool  # the searching player moves here
    n: int = 0
    wins: float = 0.0  # summed value for the searching player
    untried: list[int] | None = None  # candidate moves not expanded yet (None: not scored yet)
    children: dict[int, _Node] = field(default_factory=dict)


@dataclass
class MCTSPlayer:
    """UCT search over the rest of the game. At each node the player to move considers its
    ``width`` best one-step moves; a new leaf is valued by the fraction of ``leaf_samples`` random
    completions (weighted as the judge's training reveals) that the searching player wins;
    the root plays its most-visited move."""

    rollouts: int = 48
    width: int = 8
    c: float = 0.7
    leaf_samples: int = 8
    zero_weight: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(
        self, judge: Judge, image: np.ndarray, mask: np.ndarray, own: int, other: int, turns: int
    ) -> int:
        weights = reveal_weights(image, self.zero_weight)
        root = _Node(mask.copy(), turns, mine=True)
        for _ in range(self.rollouts):
            self._simulate(root, judge, image, weights, own, other)
        return max(root.children, key=lambda px: root.children[px].n)

    def _simulate(
        self, root: _Node, judge: Judge, image: np.ndarray, w: np.ndarray, own: int, other: int
    ) -> None:
        node, path = root, [root]
        while node.turns_left > 0:
            if node.untried is None:
                mover, opponent = (own, other) if node.mine else (other, own)
                cand, score = one_step_scores(judge, image, node.mask, mover, opponent)
                node.untried = [
                    int(p) for p in cand[np.argsort(-score, kind="stable")][: self.width]
                ]
            if node.untried:
                px = node.untried.pop(0)
                mask = node.mask.copy()
                mask[px] = True
                child = _Node(mask, node.turns_left - 1, not node.mine)
                node.children[px] = child
                path.append(child)
                break
            node = self._select(node)
            path.append(node)
        value = self._leaf_value(path[-1], judge, image, w, own, other)
        for nd in path:
            nd.n += 1
            nd.wins += value

    def _select(self, node: _Node) -> _Node:
        log_n = math.log(node.n)

        def ucb(child: _Node) -> float:
            q = child.wins / child.n
            return (q if node.mine else 1 - q) + self.c * math.sqrt(log_n / child.n)

        return max(node.children.values(), key=ucb)

    def _leaf_value(
        self, node: _Node, judge: Judge, image: np.ndarray, w: np.ndarray, own: int, other: int
    ) -> float:
        """Fraction of random completions of the game after ``node`` that ``own`` wins."""
        n = 1 if node.turns_left == 0 else self.leaf_samples
        masks = np.repeat(node.mask[None], n, axis=0)
        if node.turns_left > 0:
            extra = random_masks(np.repeat(w[None], n, axis=0), node.turns_left, self.rng, masks)
            masks |= extra
        logits = judge(np.broadcast_to(image, masks.shape), masks)
        return float(np.mean(logits[:, own] > logits[:, other]))


# --- accuracy with and without debate ------------------------------------------------------------


@dataclass
class Accuracy:
    """A held-out accuracy with its Wilson 95% interval over ``n`` images."""

    accuracy: float
    low: float
    high: float
    n: int


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (stays inside [0, 1], unlike the normal
    interval, which matters near 100%)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_of(correct: Sequence[float]) -> Accuracy:
    """Mean of per-image scores in [0, 1] with a Wilson interval (per-image means of several
    random draws count as fractional successes)."""
    n = len(correct)
    acc = float(np.mean(correct)) if n else float("nan")
    low, high = wilson_interval(float(np.sum(correct)), n)
    return Accuracy(acc, low, high, n)


def lies_by_plausibility(probs: np.ndarray, truth: int) -> list[int]:
    """Wrong labels, most plausible first (mean judge probability under random reveals)."""
    mean = probs.mean(0) if probs.ndim == 2 else probs
    return [int(c) for c in np.argsort(-mean, kind="stable") if c != truth]


def debate_correct(
    judge: Judge,
    image: np.ndarray,
    truth: int,
    lies: Sequence[int],
    player: Callable[[], Player],
    k: int,
    first: Literal["honest", "liar"],
) -> bool:
    """True when the honest player wins against every lie in ``lies`` (stops at the first loss).
    ``player()`` makes a fresh debater for each side."""
    return all(
        play(judge, image, truth, lie, player(), player(), k, first).honest_wins for lie in lies
    )


# --- the stage -----------------------------------------------------------------------------------


def run(cfg: DigitsDebateConfig, run: Run) -> dict[str, Any]:
    """Train a judge per k, measure its accuracy without and with debate; returns the summary."""
    from threadpoolctl import threadpool_limits

    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    with threadpool_limits(threads):
        return _run(cfg, run)


def _run(cfg: DigitsDebateConfig, run: Run) -> dict[str, Any]:
    from safetensors.torch import save_file

    digits = load_digits_split(cfg.test_fraction, cfg.seed)
    n_greedy = min(cfg.n_test or len(digits.test_x), len(digits.test_x))
    n_mcts = min(cfg.mcts_n, n_greedy)
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for k in cfg.ks:
        t0 = time.time()
        judge, net = train_judge(
            digits, k, cfg, log=lambda s, v, k=k: run.log(s, {f"judge/loss/k{k}": v})
        )
        tmp = run.path(f".judge_k{k}.safetensors.tmp-{os.getpid()}")
        save_file({n: p.detach().contiguous() for n, p in net.state_dict().items()}, str(tmp))
        os.replace(tmp, run.path(f"judge_k{k}.safetensors"))
        probs = random_reveal_probs(
            judge, digits.test_x, k, cfg.random_draws, cfg.zero_weight, cfg.seed
        )  # [n_test, draws, 10]
        per_image = (probs.argmax(-1) == digits.test_y[:, None]).mean(1)
        rows.append(_row(k, "none", "-", accuracy_of(per_image)))
        metrics = {f"judge/accuracy/k{k}": rows[-1]["accuracy"]}
        timings[f"judge/k{k}"] = time.time() - t0

        lies = [
            lies_by_plausibility(probs[i], int(digits.test_y[i]))[: 9 if cfg.lie == "all" else 1]
            for i in range(len(digits.test_x))
        ]
        greedy: dict[str, list[bool]] = {}
        for method, n in (("greedy", n_greedy), ("mcts", n_mcts)):
            for first in cfg.first if n else []:
                t0 = time.time()
                player = _player_factory(cfg, method, k, first)
                correct = [
                    debate_correct(
                        judge, digits.test_x[i], int(digits.test_y[i]), lies[i], player, k, first
                    )
                    for i in range(n)
                ]
                rows.append(_row(k, method, first, accuracy_of(correct)))
                if method == "greedy":
                    greedy[first] = correct
                else:  # the MCTS images are the first n of the greedy ones: a paired comparison
                    rows[-1]["greedy_same_images"] = float(np.mean(greedy[first][:n]))
                metrics[f"debate/{method}/{first}_first/k{k}"] = rows[-1]["accuracy"]
                timings[f"{method}/{first}_first/k{k}"] = time.time() - t0
        run.log(cfg.train_steps, metrics)

    table = markdown_table(rows, cfg)
    atomic_write_text(run.path("table.md"), table)
    atomic_write_json(run.path("results.json"), {"rows": rows, "paper": PAPER})
    plot_accuracy(rows, run.path("debate.png"))
    return {
        "ks": cfg.ks,
        "lie": cfg.lie,
        "n_train_images": len(digits.train_x),
        "n_test_images": len(digits.test_x),
        "table": rows,
        "table_markdown": table,
        "paper": {f"k{k}": {"no_debate": a, "debate": b} for k, (a, b) in PAPER.items()},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "files": ["table.md", "results.json", "debate.png"]
        + [f"judge_k{k}.safetensors" for k in cfg.ks],
    }


def _player_factory(
    cfg: DigitsDebateConfig, method: str, k: int, first: str
) -> Callable[[], Player]:
    if method == "greedy":
        return lambda: greedy_player
    rng = np.random.default_rng([cfg.seed, k, 3, first == "liar"])

    def make() -> Player:
        return MCTSPlayer(
            rollouts=cfg.mcts_rollouts,
            width=cfg.mcts_width,
            c=cfg.mcts_c,
            leaf_samples=cfg.mcts_leaf_samples,
            zero_weight=cfg.zero_weight,
            seed=int(rng.integers(2**31)),
        )

    return make


def _row(k: int, method: str, first: str, acc: Accuracy) -> dict[str, Any]:
    return {
        "k": k,
        "method": method,
        "first": first,
        "n": acc.n,
        "accuracy": acc.accuracy,
        "ci_low": acc.low,
        "ci_high": acc.high,
    }


_METHOD_NAMES = {
    "none": "no debate (k random pixels)",
    "greedy": "debate, greedy",
    "mcts": "debate, MCTS",
}


def markdown_table(rows: Sequence[dict[str, Any]], cfg: DigitsDebateConfig) -> str:
    """The accuracy table in markdown, with the paper's MNIST figures beside each k."""
    lies = "every wrong label" if cfg.lie == "all" else "the most plausible wrong label"
    lines = [
        f"Judge accuracy on held-out 8x8 digits; the liar argues for {lies}; 95% Wilson intervals.",
        "",
        "| k | judge sees | first mover | images | accuracy | 95% CI | greedy, same images "
        "| paper (MNIST) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        paper = PAPER.get(r["k"])
        ref = (
            ""
            if paper is None or r["method"] == "greedy"
            else f"{paper[r['method'] != 'none']:.1%}"
        )
        same = f"{r['greedy_same_images']:.1%}" if "greedy_same_images" in r else ""
        lines.append(
            f"| {r['k']} | {_METHOD_NAMES[r['method']]} | {r['first']} | {r['n']} | "
            f"{r['accuracy']:.1%} | {r['ci_low']:.1%} to {r['ci_high']:.1%} | {same} | {ref} |"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars: judge accuracy per k for each setting, with 95% intervals; written atomically
    as a PNG (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = sorted({r["k"] for r in rows})
    settings = list(dict.fromkeys((r["method"], r["first"]) for r in rows))
    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(settings)
    for j, (method, first) in enumerate(settings):
        xs, ys, err = [], [], [[], []]
        for i, k in enumerate(ks):
            r = next(
                (r for r in rows if (r["k"], r["method"], r["first"]) == (k, method, first)), None
            )
            if r is None:
                continue
            xs.append(i + (j - (len(settings) - 1) / 2) * width)
            ys.append(r["accuracy"])
            err[0].append(r["accuracy"] - r["ci_low"])
            err[1].append(r["ci_high"] - r["accuracy"])
        label = _METHOD_NAMES[method] + ("" if first == "-" else f", {first} first")
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=label, color=f"C{j % 10}")
    ax.set_xticks(range(len(ks)), [f"k = {k}" for k in ks])
    ax.set_ylabel("judge accuracy (held out)")
    ax.set_ylim(0, 1.25)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", ncols=3)
    ax.set_title("Sparse-pixel debate on 8x8 digits")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
    return path
