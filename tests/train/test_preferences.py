"""End-to-end: the preferences stage samples pairs from a tiny arithmetic policy and labels them
with gold or a simulated rater; the HHH source reads pairs from (synthetic) BIG-bench data."""

import json
import math
import os

import pytest
import torch

import superalign.train.preferences as prefs
from superalign.config import ConfigError, load_config
from superalign.stages import execute
from superalign.tasks import get_task

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the runs below, as tests/conftest.py's TEST_THREADS."""
BASE = [
    "difficulties=[1]",
    "n_train_prompts=150",
    "n_test_prompts=60",
    "max_new_tokens=24",
    "temperature=1.5",
    f"threads={THREADS}",
]


def _run(policy, root, *args):
    cfg = load_config(prefs.PreferencesConfig, None, [f"model={policy}", *BASE, *args])
    res = execute("preferences", cfg, root=root)
    return res, prefs.read_preferences(res.dir)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    torch.set_num_threads(THREADS)
    return tmp_path_factory.mktemp("pref-runs")


@pytest.mark.outcome
def test_gold_labels_agree_with_gold_and_the_file_keeps_its_contract(arith_policy, root, test_seed):
    res, rows = _run(arith_policy, root, "overseer=gold", f"seed={test_seed}")
    s = res.summary
    print(
        f"MEASURE prefs gold {s['reward/gold']:.3f} pairs {s['pairs/n/train']}/{s['pairs/n/test']}"
    )
    text = (res.dir / prefs.FILE).read_text().splitlines()
    assert len(text) == len(rows) == s["pairs/n/train"] + s["pairs/n/test"]
    assert all(set(json.loads(line)) == set(prefs.FIELDS) for line in text)
    for split, n in (("train", 150), ("test", 60)):
        # every prompt is accounted for: written, identical completions, or no gold difference
        dropped = s[f"pairs/identical/{split}"] + s[f"pairs/overseer_tied/{split}"]
        assert s[f"pairs/n/{split}"] + dropped == n
        # the policy writes right and wrong answers: seeds 0 / 1 / 2, 1 thread | 2 threads gave
        # 52, 53, 52 | 67, 57, 51 train and 26, 21, 23 | 22, 23, 26 test pairs (the fixture
        # policy is right on 0.47, 0.38, 0.36 | 0.445, 0.395, 0.41 of these samples)
        assert s[f"pairs/n/{split}"] >= 3
        assert s[f"pairs/gold_agreement/{split}"] == 1.0 and s[f"pairs/gold_tied/{split}"] == 0
    assert all(r["gold_chosen"] == 1.0 and r["gold_rejected"] == 0.0 for r in rows)
    assert all(r["chosen"] != r["rejected"] for r in rows)
    # p = sigmoid(gold difference / label_temperature) for an overseer without compare
    assert all(r["p_chosen"] == pytest.approx(1 / (1 + math.exp(-1))) for r in rows)
    # test pairs come from test-split prompts only
    task = get_task("arithmetic")
    test_prompts = {ex.prompt for ex in task.examples("test", 60, 1, seed=test_seed)}
    assert {r["prompt"] for r in rows if r["split"] == "test"} <= test_prompts
    assert not {r["prompt"] for r in rows if r["split"] == "train"} & test_prompts
    # seeds 0 / 1 / 2, 1 thread | 2 threads: 0.47, 0.38, 0.36 | 0.445, 0.395, 0.41
    assert 0.03 < s["reward/gold"] < 0.9 and s["reward/proxy"] == s["reward/gold"]
    assert s["policy/length"] > 5


def test_kept_ties_are_coin_flips_and_gold_agreement_ignores_them(arith_policy, root):
    res, rows = _run(arith_policy, root, "overseer=gold", "keep_ties=true")
    s = res.summary
    tied = [r for r in rows if r["gold_chosen"] == r["gold_rejected"]]
    assert tied and all(r["p_chosen"] == 0.5 for r in tied)
    assert s["pairs/gold_tied/train"] > 0.2 and s["pairs/gold_agreement/train"] == 1.0
    assert s["pairs/n/train"] + s["pairs/identical/train"] == 150


@pytest.mark.outcome
def test_sampled_labels_are_noisy_at_the_rate_the_overseer_sets(arith_policy, root, test_seed):
    # label_temperature=2: p(gold-better chosen) = sigmoid(1/2) = 0.62 on every pair
    args = ["overseer=gold", "label=sample", "label_temperature=2", f"seed={test_seed}"]
    res, rows = _run(arith_policy, root, *args)
    s = res.summary
    agree = [r["gold_chosen"] > r["gold_rejected"] for r in rows]
    share, n = sum(agree) / len(agree), len(agree)
    print(f"MEASURE prefs sampled agreement {share:.3f} of {n}")
    # a Bernoulli(0.62) share of n pairs: within 3 standard errors (seeds 0 / 1 / 2, 1 thread |
    # 2 threads: 0.56, 0.69, 0.67 | 0.60, 0.61, 0.56 of 78, 74, 75 | 89, 80, 77 pairs, all within
    # 1.2)
    p = 1 / (1 + math.exp(-0.5))
    assert abs(share - p) < 3 * math.sqrt(p * (1 - p) / n), (share, n)
    assert {round(r["p_chosen"], 4) for r in rows} == {0.6225, 0.3775}
    for split in ("train", "test"):
        assert s[f"pairs/gold_agreement/{split}"] < 1.0


@pytest.mark.outcome
def test_a_surface_checking_rater_is_fooled_where_gold_is_not(arith_policy, root, test_seed):
    # check_steps=0: the rater only checks that an answer line repeats the last step's result,
    # so a well-formed wrong sum passes. Two-step problems give it room to be wrong.
    args = ["overseer=rater", "overseer_options={check_steps: 0}", "difficulties=[1,2]"]
    res, rows = _run(arith_policy, root, *args, "max_new_tokens=40", f"seed={test_seed}")
    s = res.summary
    print(f"MEASURE prefs rater proxy {s['reward/proxy']:.3f} gold {s['reward/gold']:.3f}")
    # seeds 0 / 1 / 2, 1 thread | 2 threads: proxy - gold +0.15, +0.19, +0.22 | +0.17, +0.23,
    # +0.20 (0.38 - 0.23, 0.41 - 0.22, 0.41 - 0.19 | 0.43 - 0.25, 0.42 - 0.19, 0.40 - 0.195);
    # margin +0.1
    assert s["overseer"]["spec"] == "rater" and s["overseer"]["options"] == {"check_steps": 0}
    assert s["pairs/gold_agreement/train"] < 1.0 or s["pairs/gold_tied/train"] > 0
    assert s["reward/proxy"] > s["reward/gold"] + 0.1  # it accepts wrong answers gold rejects
    # the rater's compare: sigmoid((1 - 0) / 0.1) for the pairs it can order
    assert all(r["p_chosen"] > 0.999 for r in rows)


def _hhh_folder(root):
    """A synthetic hhh_alignment: 30 prompts, each with a best answer and two worse ones."""
    folder = root / "bb" / "hhh_alignment" / "helpful"
    folder.mkdir(parents=True)
    examples = [
        {
            "input": f"Help me with chore {i}.",
            "target_scores": {f"Sure, here is how {i}.": 1, f"No {i}.": 0, f"Maybe {i}.": 0.5},
        }
        for i in range(30)
    ]
    data = {"canary": "C", "name": "helpful", "examples": examples}
    data |= {"example_input_prefix": "\nHuman: ", "example_output_prefix": "\nAssistant:"}
    (folder / "task.json").write_text(json.dumps(data))
    return root / "bb"


def test_hhh_pairs_come_from_data_with_gold_from_its_scores(root):
    path = _hhh_folder(root)
    args = [f"task_options={{path: {path}}}", "source=hhh_alignment", "n_train_prompts=5"]
    cfg = load_config(prefs.PreferencesConfig, None, [*args, "threads=1"])
    res = execute("preferences", cfg, root=root)
    rows = prefs.read_preferences(res.dir)
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert len({r["prompt"] for r in train}) == 5 and len(train) == 10  # 2 worse answers each
    assert test and not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(r["p_chosen"] == 1.0 and r["gold_chosen"] == 1.0 for r in rows)
    assert {r["gold_rejected"] for r in rows} == {0.0, 0.5}
    assert rows[0]["prompt"].startswith("Human: ") and rows[0]["chosen"].startswith(" Sure")
    assert res.summary["pairs/gold_agreement/train"] == 1.0
    assert res.summary["task"] == "bigbench:hhh_alignment"


def test_pair_stats_on_hand_made_rows():
    rows = [
        {"gold_chosen": 1.0, "gold_rejected": 0.0, "p_chosen": 0.9},
        {"gold_chosen": 0.0, "gold_rejected": 1.0, "p_chosen": 0.7},
        {"gold_chosen": 1.0, "gold_rejected": 1.0, "p_chosen": 0.5},
        {"gold_chosen": None, "gold_rejected": 0.0, "p_chosen": 0.6},
    ]
    s = prefs.pair_stats(rows, "train")
    assert s == {
        "pairs/n/train": 4,
        "pairs/gold_tied/train": pytest.approx(1 / 3),
        "pairs/gold_agreement/train": 0.5,
        "pairs/p_chosen/train": pytest.approx(0.675),
    }
    assert prefs.pair_stats([], "test")["pairs/gold_agreement/test"] is None


def test_config_checks():
    with pytest.raises(ConfigError, match="model is required"):
        prefs.PreferencesConfig()
    prefs.PreferencesConfig(source="hhh_alignment")  # data needs no model
    with pytest.raises(ConfigError, match="temperature"):
        prefs.PreferencesConfig(model="x", temperature=0)
    with pytest.raises(ConfigError, match="n_test_prompts"):
        prefs.PreferencesConfig(model="x", n_test_prompts=0)
    with pytest.raises(ConfigError, match="label_temperature"):
        prefs.PreferencesConfig(model="x", label_temperature=-1)
    with pytest.raises(ConfigError, match="source"):
        load_config(prefs.PreferencesConfig, None, ["model=x", "source=web"])
    with pytest.raises(ConfigError, match="difficulties"):
        prefs.PreferencesConfig(model="x", difficulties=[])
