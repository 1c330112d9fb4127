"""The sparse-pixel debate on 8x8 digits: judge, debaters, game and the stage end to end.

The judge here is a small one (64 hidden units, 1500 steps, ~3 s on one thread); measured with
it (seed 0): 43% held-out 10-way accuracy on 4 random pixels, and the honest greedy debater
beats a greedy liar's most plausible lie on 90% of the first 60 held-out images.
"""

import json
import os

import numpy as np
import pytest
import torch

import superalign.overseers.digits_debate as dd
from superalign.config import ConfigError, load_config
from superalign.runs import read_metrics
from superalign.stages import execute

K = 4
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the judges below, as tests/conftest.py's TEST_THREADS."""
TRUTH, LIE = 3, 8
A, B, C = 10, 20, 30  # pixels of the rigged judge below


@pytest.fixture(scope="module")
def digits(test_seed):
    return dd.load_digits_split(0.2, seed=test_seed)


@pytest.fixture(scope="module")
def judge(digits, test_seed):
    torch.set_num_threads(THREADS)
    cfg = dd.DigitsDebateConfig(
        ks=[K], hidden=64, train_steps=1500, threads=THREADS, seed=test_seed
    )
    losses = []
    trained, _ = dd.train_judge(digits, K, cfg, log=lambda step, loss: losses.append(loss))
    assert losses[-1] < losses[0] - 0.3  # the judge learned
    return trained


def no_debate_accuracy(judge, digits, n, seed):
    probs = dd.random_reveal_probs(judge, digits.test_x[:n], K, 20, 0.1, seed=seed)
    return probs, float((probs.argmax(-1) == digits.test_y[:n, None]).mean())


def test_random_masks_are_weighted_draws_without_replacement():
    rng = np.random.default_rng(0)
    images = np.zeros((500, 64))
    images[:, :10] = 1.0  # ten nonzero pixels
    exclude = np.zeros((500, 64), dtype=bool)
    exclude[:, 0] = True
    mask = dd.random_masks(dd.reveal_weights(images, 0.0), 4, rng, exclude)
    assert (mask.sum(1) == 4).all()
    assert not mask[:, 0].any()  # excluded
    assert not mask[:, 10:].any()  # zero weight: only nonzero pixels
    mask = dd.random_masks(dd.reveal_weights(images, 0.1), 4, rng)
    zero_share = mask[:, 10:].sum() / mask.sum()
    # weight 0.1 x 54 zero pixels vs 1 x 10 nonzero: a zero pixel is about 1/3 of the first draws
    assert 0.15 < zero_share < 0.45


def test_wilson_interval_matches_the_closed_form():
    low, high = dd.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = dd.wilson_interval(50, 50)
    assert high == 1.0 and 0.92 < low < 0.93  # stays inside [0, 1] at 100%


@pytest.mark.outcome
def test_judge_beats_chance_on_held_out_random_pixels(judge, digits, test_seed):
    _, acc = no_debate_accuracy(judge, digits, len(digits.test_x), test_seed)
    print(f"MEASURE digits judge alone {acc:.3f}")
    # chance is 0.10; seeds 0 / 1 / 2, 1 thread | 2 threads: 0.430, 0.422, 0.432 | 0.430, 0.422,
    # 0.432 (judge loss fall, in the fixture: not printed)
    assert acc > 0.35


def test_judge_sees_only_revealed_pixels(judge, digits):
    mask = np.zeros((1, 64), dtype=bool)
    mask[0, [5, 6, 7]] = True
    a = judge(digits.test_x[:1], mask)
    b = judge(digits.test_x[1:2] * mask + (1 - mask) * 0.77, mask)
    c = judge(digits.test_x[1:2], mask)
    np.testing.assert_allclose(b, c, rtol=1e-6)  # hidden pixel values do not matter
    assert a.shape == (1, 10)


@pytest.mark.outcome
def test_greedy_debate_beats_judging_alone_at_k4(judge, digits, test_seed):
    n = 60
    probs, alone = no_debate_accuracy(judge, digits, n, test_seed)
    wins = [
        dd.debate_correct(
            judge,
            digits.test_x[i],
            int(digits.test_y[i]),
            dd.lies_by_plausibility(probs[i], int(digits.test_y[i]))[:1],
            lambda: dd.greedy_player,
            K,
            "honest",
        )
        for i in range(n)
    ]
    print(f"MEASURE digits debate {np.mean(wins):.3f} alone {alone:.3f}")
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.90 vs 0.45, 0.93 vs 0.44, 0.88 vs 0.42 | the same
    assert np.mean(wins) > alone + 0.2


@pytest.mark.parametrize(
    "player", [dd.greedy_player, dd.MCTSPlayer(rollouts=16, seed=0)], ids=["greedy", "mcts"]
)
def test_a_move_is_a_legal_unrevealed_pixel(judge, digits, player):
    image = digits.test_x[0]
    mask = np.zeros(64, dtype=bool)
    best_first = dd.greedy_player(judge, image, mask, TRUTH, LIE, 3)
    mask[best_first] = True  # the greedy favourite is taken: the next move must differ
    mask[::2] = True  # and so are all even pixels
    for turns_left in (1, 3):
        px = player(judge, image, mask.copy(), TRUTH, LIE, turns_left)
        assert 0 <= px < 64 and not mask[px]


def test_the_game_rejects_an_illegal_move(judge, digits):
    def cheat(judge, image, mask, own, other, turns_left):
        return int(np.flatnonzero(mask)[0]) if mask.any() else 0  # re-reveals a pixel

    with pytest.raises(ValueError, match="illegal move"):
        dd.play(judge, digits.test_x[0], TRUTH, LIE, cheat, cheat, 2, "honest")


def rigged(values, mask):
    """Truth leads by 1 unless the liar shows A (+3 to the lie, which showing B refutes: +5 to
    the truth) or C (+2 to the lie, irrefutable)."""
    logits = np.zeros((len(mask), 10))
    logits[:, TRUTH] = 1.0 + 5.0 * (mask[:, A] & mask[:, B])
    logits[:, LIE] = 3.0 * mask[:, A] + 2.0 * mask[:, C]
    return logits


def test_the_liar_wins_against_a_rigged_judge_and_search_beats_greed():
    image = np.zeros(64)
    honest = dd.greedy_player
    # honest first: the liar moves last and shows A, which nobody can refute any more
    res = dd.play(rigged, image, TRUTH, LIE, honest, dd.greedy_player, 2, "honest")
    assert not res.honest_wins and res.pixels[1] == A
    # liar first: the greedy liar takes the bait (A, the biggest one-step gain) and is refuted by B
    res = dd.play(rigged, image, TRUTH, LIE, honest, dd.greedy_player, 2, "liar")
    assert res.pixels == [A, B] and res.honest_wins
    # the searching liar looks one reply ahead and shows C, which the honest player cannot refute
    res = dd.play(rigged, image, TRUTH, LIE, honest, dd.MCTSPlayer(rollouts=64, seed=0), 2, "liar")
    assert res.pixels[0] == C and not res.honest_wins


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="ks"):
        dd.DigitsDebateConfig(ks=[0])
    with pytest.raises(ConfigError, match="zero_weight"):
        dd.DigitsDebateConfig(zero_weight=2.0)
    with pytest.raises(ConfigError, match="mcts_rollouts"):
        dd.DigitsDebateConfig(mcts_rollouts=0)


TINY = [
    "ks=[4]",
    "hidden=64",
    "train_steps=600",
    "log_every=100",
    "random_draws=5",
    "n_test=40",
    "mcts_n=4",
    "mcts_rollouts=16",
    "first=[liar]",
    f"threads={THREADS}",
]


@pytest.mark.outcome
def test_stage_runs_end_to_end_and_writes_the_table(tmp_path, test_seed):
    cfg = load_config(dd.DigitsDebateConfig, None, [*TINY, f"seed={test_seed}"])
    result = execute("digits_debate", cfg, root=tmp_path)
    summary = json.loads((result.dir / "summary.json").read_text())
    rows = {(r["method"], r["first"]): r for r in summary["table"]}
    assert set(rows) == {("none", "-"), ("greedy", "liar"), ("mcts", "liar")}
    assert rows["none", "-"]["n"] == summary["n_test_images"] == 360
    assert rows["greedy", "liar"]["n"] == 40 and rows["mcts", "liar"]["n"] == 4
    assert 0 <= rows["mcts", "liar"]["greedy_same_images"] <= 1
    for r in rows.values():
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    print(f"MEASURE digits stage { ({k: round(r['accuracy'], 3) for k, r in rows.items()}) }")
    # a 600-step judge, still well above chance; seeds 0 / 1 / 2, 1 thread | 2 threads: 0.370,
    # 0.375, 0.389 | the same, and debate (greedy liar first) 0.775, 0.80, 0.85 | the same
    assert rows["none", "-"]["accuracy"] > 0.25
    assert rows["greedy", "liar"]["accuracy"] > rows["none", "-"]["accuracy"]
    table = (result.dir / "table.md").read_text()
    assert table == summary["table_markdown"]
    assert table.count("\n| 4 |") == 3 and "48.2%" in table  # the paper's k=4 figure beside ours
    assert (result.dir / "debate.png").read_bytes()[:4] == b"\x89PNG"
    assert (result.dir / "judge_k4.safetensors").is_file()
    losses = [r["judge/loss/k4"] for r in read_metrics(result.dir) if "judge/loss/k4" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    final = [r for r in read_metrics(result.dir) if "judge/accuracy/k4" in r]
    assert final[0]["debate/greedy/liar_first/k4"] == rows["greedy", "liar"]["accuracy"]
