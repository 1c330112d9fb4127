"""Bring-your-own JSONL tasks: both row kinds, splits by group, the grader, errors that name the
file and line, and one JSONL task run through sft, judge_eval and interp on a tiny model."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from superalign.config import ConfigError, load_config
from superalign.tasks import Task, get_task
from superalign.tasks.jsonl import JsonlError, JsonlTask

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "maple", "piano", "lemon", "ocean", "candle",
    "forest", "silver", "garden", "rocket", "pencil", "window", "castle", "bridge", "planet",
    "needle", "butter", "circle", "dragon", "engine", "feather", "harbor", "island", "jacket",
    "kettle", "ladder", "marble", "nickel", "orange", "pepper", "quartz", "rabbit", "saddle",
    "temple", "velvet", "walnut",
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def generation_rows() -> list[dict]:
    """Reverse a word: 40 rows, levels 1 (short words) and 2 (long)."""
    return [
        {"prompt": f"Q: {w} backwards?\nA:", "target": w[::-1], "difficulty": 1 + (len(w) > 5)}
        for w in WORDS
    ]


def classification_rows() -> list[dict]:
    """A statement and its negation per word, grouped by word: the label is the last word."""
    return [
        {"text": f"The {w} is {'good' if y else 'bad'}", "label": y, "group": w}
        for w in WORDS
        for y in (1, 0)
    ]


@pytest.fixture()
def gen_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "gen.jsonl", generation_rows())


@pytest.fixture()
def cls_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "cls.jsonl", classification_rows())


# --- generation rows ---------------------------------------------------------------------------


def test_generation_rows_become_a_task(gen_file: Path) -> None:
    t = get_task("jsonl", path=str(gen_file))
    assert isinstance(t, Task) and isinstance(t, JsonlTask)
    assert t.name == "jsonl" and t.kind == "generation" and t.difficulties == (1, 2)
    ex = next(e for e in t.all_examples() if e.prompt.startswith("Q: apple"))
    assert ex.answer == "elppa" and ex.solution == " elppa\n" and ex.difficulty == 1
    assert ex.meta["group"] == ex.prompt and ex.meta["answers"] == ["elppa"]
    assert t.render(ex) == "Q: apple backwards?\nA: elppa\n"
    assert {e.difficulty for e in t.examples("train", 10, 2)} == {2}


def test_splits_are_disjoint_by_group_and_deterministic(gen_file: Path, cls_file: Path) -> None:
    for path in (gen_file, cls_file):
        t = get_task("jsonl", path=str(path))
        train, test = t.all_examples("train"), t.all_examples("test")
        groups = [{e.meta["group"] for e in rows} for rows in (train, test)]
        assert train and test and not groups[0] & groups[1]
        assert len(train) + len(test) == len(t.all_examples())
        a = t.examples("train", 15, None, seed=3)
        assert a == t.examples("train", 15, None, seed=3) != t.examples("train", 15, None, seed=4)
        assert len(set(e.prompt for e in a)) == 15  # without replacement while the split lasts
        assert len(t.examples("test", 50, seed=0)) == 50  # then repeated
    moved = get_task("jsonl", path=str(cls_file), split_seed=5)
    assert {e.meta["group"] for e in moved.all_examples("test")} != groups[1]


def test_generation_grader(gen_file: Path, tmp_path: Path) -> None:
    t = get_task("jsonl", path=str(gen_file))
    for ex in t.all_examples():
        assert t.grade(ex, ex.solution) == 1.0
        assert t.grade(ex, f"  {ex.answer.upper()}.\nmore text") == 1.0
        assert t.grade(ex, " " + ex.answer[::-1] + "x\n") == 0.0
        assert t.grade(ex, "") == 0.0
    rows = [
        {"prompt": "Capital of France? ", "target": ["Paris", "Paris, France"]},
        {"prompt": "Two lines:", "target": "a\nb"},
    ]
    multi = get_task("jsonl", path=str(write_jsonl(tmp_path / "m.jsonl", rows)), test_percent=50)
    paris, lines = multi.all_examples()
    assert paris.solution == "Paris\n"  # the prompt ends in a space: none added
    assert multi.grade(paris, "paris, france") == multi.grade(paris, " Paris") == 1.0
    assert multi.grade(paris, " Lyon") == 0.0
    assert multi.grade(lines, " a\nb\nc") == 1.0 and multi.grade(lines, " a\nc") == 0.0


# --- classification rows -----------------------------------------------------------------------


def test_classification_rows_are_labelled_statements(cls_file: Path) -> None:
    t = get_task("jsonl", path=str(cls_file))
    assert t.kind == "classification" and t.difficulties == (1,)
    rows = t.all_examples()
    assert Counter(e.meta["label"] for e in rows) == {True: 40, False: 40}
    ex = rows[0]
    assert ex.prompt == "The apple is good\nA:" and ex.answer == "True" and ex.solution == " True\n"
    assert ex.meta["text"] == "The apple is good" and ex.meta["label"] is True
    for ex in rows:
        assert t.grade(ex, ex.solution) == 1.0
        assert t.grade(ex, f" {not ex.meta['label']}\n") == 0.0
    custom = get_task("jsonl", path=str(cls_file), template="Claim: {text}\nTrue or false?")
    assert custom.all_examples()[0].prompt == "Claim: The apple is good\nTrue or false?"


# --- errors ------------------------------------------------------------------------------------


def _error(tmp_path: Path, lines: list[str], match: str, **options) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(JsonlError, match=match) as e:
        get_task("jsonl", path=str(path), **options)
    assert "bad.jsonl" in str(e.value)


def test_errors_name_the_file_the_line_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(JsonlError, match="no such file .* task_options.path must name"):
        get_task("jsonl", path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(JsonlError, match="task=jsonl needs task_options.path"):
        get_task("jsonl")
    with pytest.raises(JsonlError, match="jsonl has no sub-tasks"):
        get_task("jsonl:mine", path="x")
    with pytest.raises(ConfigError, match="task_options.paths"):
        get_task("jsonl", paths="x")
    good = json.dumps({"prompt": "Q", "target": "A"})
    _error(tmp_path, [good, "{not json"], r"line 2: not valid JSON")
    _error(tmp_path, [good, "[1, 2]"], r"line 2: a row must be a JSON object, not list")
    _error(
        tmp_path,
        [good, '{"prompt": "Q2"}'],
        r"line 2: a generation row needs prompt and target; it has 'prompt' but no 'target'",
    )
    _error(tmp_path, ['{"label": 1}'], r"line 1: a classification row needs text and label")
    _error(
        tmp_path,
        ['{"question": "Q"}'],
        r"line 1: a row needs either prompt and target .* it has \['question'\]",
    )
    _error(
        tmp_path,
        [good, "", '{"text": "T", "label": 1}'],
        r"line 3: a classification row \(text, label\) in a file whose rows are generation rows \(prompt, target, from line 1\)",
    )
    _error(
        tmp_path, ['{"text": "T", "label": 2}'], r"line 1: label must be 0, 1, true or false, not 2"
    )
    _error(
        tmp_path, ['{"prompt": "Q", "target": ""}'], r"line 1: target must be a non-empty string"
    )
    _error(
        tmp_path,
        [good.replace("}", ', "difficulty": 0}')],
        r"line 1: difficulty must be an integer >= 1",
    )
    _error(tmp_path, [""], r"the file has no rows")
    _error(tmp_path, [good], r"no row falls in the (train|test) split")
    _error(tmp_path, ['{"text": "T", "label": 1}'] * 3, r"no row falls in the test split")  # fmt: skip


# --- end to end: sft, judge_eval, interp on a tiny model ---------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised tiny model with a tokenizer trained on the rows' texts."""
    from superalign.models.tiny import build_model
    from superalign.models.tokenizer import train_tokenizer

    texts = [r["prompt"] + " " + r["target"] for r in generation_rows()]
    texts += [r["text"] for r in classification_rows()] + ["True False yes no Yes No"] * 5
    tokenizer = train_tokenizer(texts * 5, vocab_size=320)
    folder = tmp_path_factory.mktemp("tiny-model")
    build_model("tiny", tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_jsonl_task_runs_through_sft_judge_eval_and_interp(tiny_model, tmp_path: Path) -> None:
    from superalign.overseers.judge import JudgeEvalConfig
    from superalign.stages import execute
    from superalign.train.sft import SFTStageConfig
    from superalign.validate.interp import InterpConfig

    torch.set_num_threads(THREADS)
    gen = write_jsonl(tmp_path / "gen.jsonl", generation_rows())
    cls = write_jsonl(tmp_path / "cls.jsonl", classification_rows())
    task = ["task=jsonl", f"task_options.path={gen}", f"threads={THREADS}"]
    sft_cfg = load_config(
        SFTStageConfig,
        None,
        [f"model={tiny_model}", *task, "difficulties=[1,2]", "eval_difficulties=[1,2]"]
        + ["n_train=64", "max_steps=30", "batch_size=8", "lr=3e-3", "eval_n=8"]
        + ["max_new_tokens=8", "log_every=5", "checkpoint_every=0"],
    )
    sft = execute("sft", sft_cfg, root=tmp_path / "runs")
    s = sft.summary
    assert s["task"] == "jsonl" and s["steps"] == 30
    for d in (1, 2):  # held-out completion loss (answer tokens, newline, EOS) fell
        assert s[f"eval/loss/d{d}"] < s[f"eval/loss_before/d{d}"]
        assert 0.0 <= s[f"eval/accuracy/d{d}"] <= 1.0

    judge_cfg = load_config(JudgeEvalConfig, None, [f"model={sft.dir}", *task, "n=8"])
    judged = execute("judge_eval", judge_cfg, root=tmp_path / "runs")
    rows = [json.loads(x) for x in (judged.dir / "scores.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == [1.0] * 8 + [0.0] * 8  # gold solutions, then wrong ones
    assert judged.summary["gold/good_share"] == 0.5 and judged.summary["task"] == "jsonl"

    interp_cfg = load_config(
        InterpConfig,
        None,
        [f"model={sft.dir}", *task, f"datasets=[{cls}]", "folds=2", "sae_texts=40"]
        + ["sae_steps=20", "sae_latents=32", "sae_k=4", "sae_batch_size=64", "n_explain=2"]
        + ["explain_top=3", "explain_random=3", "steer=false"],
    )
    probed = execute("interp", interp_cfg, root=tmp_path / "runs")
    probe = probed.summary["probes"]["cls"]
    assert probe["n_groups"] == 40 and probe["n_texts"] == 80
    assert probe["auroc"] >= 0.9  # the label is the last token: linearly readable at any layer
    assert probed.summary["sae"]["n_train_tokens"] > 0
