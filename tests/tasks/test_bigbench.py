"""BIG-bench loading on task folders these tests write themselves: parsing, a miniature of the six
supported tasks in their real formats, reading a user's folder, clone or tarball, the cache, and
the error that says how to supply the data. Nothing here needs the real archive or a network;
the checks against the real data run only where your copy is cached (they skip otherwise)."""

from __future__ import annotations

import json
import socket
import tarfile
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from superalign.tasks import Task, get_task
from superalign.tasks import bigbench as bb
from superalign.tasks.base import split_of
from superalign.tasks.bigbench import BigBenchTask, DataUnavailableError


def _write_task(folder: Path, examples: list[dict] | None = None, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"canary": "CANARY", "name": folder.name, "description": "", "keywords": [], **fields}
    if examples is not None:
        data["examples"] = examples
    (folder / "task.json").write_text(json.dumps(data))


YES_NO = [
    {
        "input": f"Is {i} even?",
        "target_scores": {"Yes": int(i % 2 == 0), "No": int(i % 2 == 1)},
        "target": "why",
    }
    for i in range(40)
]


@pytest.fixture()
def tasks_dir(tmp_path: Path) -> Path:
    """A folder of BIG-bench-format tasks covering the formats the loader handles."""
    _write_task(tmp_path / "yesno", YES_NO, append_choices_to_input=False)
    _write_task(
        tmp_path / "mc",
        [{"input": "Pick the fruit.", "target_scores": {"car": 0, "apple": 1, "pear": 0.5}}],
        task_prefix="Choose well.\n",
    )
    _write_task(
        tmp_path / "gen",
        [{"input": "2+2", "target": "4"}, {"input": "Say hi", "target": ["hi", "hello"], "id": 7}],
        example_input_prefix="\nInput: ",
        example_output_prefix="\nOutput: ",
    )
    _write_task(tmp_path / "chat")  # a container task: examples live in sub-task folders
    pair = {"Good answer.\nSecond line.": 1, "Bad answer.": 0}
    _write_task(
        tmp_path / "chat" / "kind",
        [{"input": f"Help me {i}", "target_scores": pair} for i in range(6)],
        example_input_prefix="\nHuman: ",
        example_output_prefix="\nAssistant:",
        append_choices_to_input=False,
    )
    _write_task(
        tmp_path / "chat" / "true",
        [{"input": "Is it so?", "target_scores": {"True": 0, "False": 0, "Neither": 1}}],
        append_choices_to_input=False,
    )
    return tmp_path


def test_target_scores_become_choices_answer_and_label(tasks_dir: Path) -> None:
    t = BigBenchTask("yesno", path=str(tasks_dir))
    assert isinstance(t, Task) and t.difficulties == (1,)
    exs = t.all_examples()
    assert len(exs) == 40
    ex = exs[2]
    assert ex.prompt == "Q: Is 2 even?\nA:" and ex.answer == "Yes" and ex.solution == " Yes\n"
    assert ex.meta["label"] is True and exs[3].meta["label"] is False
    assert ex.meta["choices"] == ["Yes", "No"] and ex.meta["target_scores"] == {"Yes": 1, "No": 0}
    assert ex.meta["targets"] == ["why"]  # a target beside target_scores is kept, not graded
    assert ex.meta["source"] == "bigbench/yesno" and ex.meta["reference_labels"] is True
    assert ex.meta["canary"] == "CANARY"
    assert t.grade(ex, " yes.\nbecause") == 1.0 and t.grade(ex, " No\n") == 0.0
    assert t.grade(ex, " why\n") == 0.0


def test_choices_appended_in_bigbench_order_and_task_prefix(tasks_dir: Path) -> None:
    ex = BigBenchTask("mc", path=str(tasks_dir)).all_examples()[0]
    assert ex.answer == "apple" and "label" not in ex.meta
    body = ex.prompt.removeprefix("Q: Pick the fruit.").removesuffix("\nA:")
    shown = body.split("\n  choice: ")[1:]
    assert sorted(shown) == ["apple", "car", "pear"]
    assert shown == bb._bigbench_order(["car", "apple", "pear"])
    with_prefix = BigBenchTask("mc", path=str(tasks_dir), task_prefix=True).all_examples()[0]
    assert with_prefix.prompt == "Choose well.\n" + ex.prompt


def test_generative_targets(tasks_dir: Path) -> None:
    t = BigBenchTask("gen", path=str(tasks_dir))
    four, hi = t.all_examples()
    assert (
        four.prompt == "Input: 2+2\nOutput:" and four.answer == "4" and "choices" not in four.meta
    )
    assert t.grade(four, " 4\n") == 1.0 and t.grade(four, " 5") == 0.0
    assert hi.answer == "hi" and hi.meta["targets"] == ["hi", "hello"] and hi.meta["id"] == 7
    assert t.grade(hi, " Hello") == 1.0


def test_subtask_folders_and_multiline_choices(tasks_dir: Path) -> None:
    t = BigBenchTask("chat", path=str(tasks_dir))
    exs = t.all_examples()
    assert Counter(e.meta["category"] for e in exs) == {"kind": 6, "true": 1}
    kind = exs[0]
    assert (
        kind.prompt == "Human: Help me 0\nAssistant:"
        and kind.answer == "Good answer.\nSecond line."
    )
    assert t.grade(kind, kind.solution) == 1.0
    assert t.grade(kind, " Good answer.\n") == 0.0  # all the gold's lines must match
    assert exs[-1].meta["label"] is None and exs[-1].answer == "Neither"
    assert len(BigBenchTask("chat/kind", path=str(tasks_dir)).all_examples()) == 6
    with pytest.raises(ValueError, match="kind"):
        BigBenchTask("chat/nope", path=str(tasks_dir)).all_examples()
    # path= may also point at a task folder itself
    assert len(BigBenchTask("anything", path=str(tasks_dir / "yesno")).all_examples()) == 40


def test_preference_pairs(tasks_dir: Path) -> None:
    t = BigBenchTask("chat/kind", path=str(tasks_dir))
    pairs = t.preference_pairs(None)
    assert len(pairs) == 6 == len(t.preference_pairs("train")) + len(t.preference_pairs("test"))
    p = pairs[0]
    assert p.chosen == " Good answer.\nSecond line.\n" and p.rejected == " Bad answer.\n"
    assert p.prompt.endswith("Assistant:")
    assert len(BigBenchTask("mc", path=str(tasks_dir)).preference_pairs(None)) == 2


def test_splits_sampling_and_corpus(tasks_dir: Path) -> None:
    t = BigBenchTask("yesno", path=str(tasks_dir))
    train, test = t.all_examples("train"), t.all_examples("test")
    assert len(train) + len(test) == 40 and test
    assert all(split_of(e.prompt.removeprefix("Q: ").removesuffix("\nA:")) == "test" for e in test)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert t.examples("train", 5, seed=1) == t.examples("train", 5, seed=1)
    assert t.examples("train", 5, seed=1) != t.examples("train", 5, seed=2)
    assert t.examples("test", 5, difficulty=3) == t.examples("test", 5)  # difficulty is ignored
    assert sorted(e.prompt for e in t.examples("test", 1000)) == sorted(e.prompt for e in test)
    corpus = t.corpus(100)
    assert len(corpus) == 100 and set(corpus) == {t.render(e) for e in train}


def test_unknown_and_missing_subtask() -> None:
    with pytest.raises(ValueError, match="subtask="):
        BigBenchTask()
    with pytest.raises(ValueError, match="Did you mean 'strategyqa'") as e:
        get_task("bigbench:strategy_qa")
    for name in bb.TASK_NAMES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="Did you mean 'vitaminc'"):
        BigBenchTask("vitaminc_fact_verificaton")


def test_missing_folder_under_path(tmp_path: Path) -> None:
    _write_task(tmp_path / "present", YES_NO)
    with pytest.raises(ValueError, match="present"):
        BigBenchTask("absent", path=str(tmp_path)).all_examples()


# ---- the six supported tasks, in miniature, in their real formats ----------------------------


def _hhh(root: Path) -> None:
    _write_task(root / "hhh_alignment")  # the container: examples live in the four categories
    for k, cat in enumerate(("harmless", "helpful", "honest", "other")):
        examples = [
            {
                "input": f"How do I do {cat} thing {i}?",
                "target_scores": {f"Here is how to do {cat} thing {i}.": 1, "I won't.": 0},
            }
            for i in range(10 + k)
        ]
        _write_task(
            root / "hhh_alignment" / cat,
            examples,
            example_input_prefix="\nHuman: ",
            example_output_prefix="\n\nAssistant:",
            append_choices_to_input=False,
        )


def _truthful_qa(root: Path) -> None:
    folder = root / "truthful_qa"
    folder.mkdir(parents=True)
    (folder / "task.py").write_text("# a programmatic task: its data is in the JSON files\n")
    questions, mc = [], []
    for i in range(12):
        q = f"What happens if you crack your knuckles {i} times?"
        true, false = [f"Nothing in particular {i}", "Nothing"], [f"You get arthritis {i}"]
        questions.append(
            {"Question": q, "Best answer": true[0], "True answers": true, "False answers": false}
            | {"Category": "Health"}
        )
        mc.append({"input": q, "target_scores": {true[0]: 1, false[0]: 0}})
    (folder / "questions.json").write_text(json.dumps({"examples": questions}))
    (folder / "task_mc.json").write_text(
        json.dumps({"canary": "CANARY", "append_choices_to_input": False, "examples": mc})
    )


def mini_bigbench(root: Path) -> Path:
    """``root/bigbench/benchmark_tasks`` holding the six supported tasks, a few examples each, in
    the formats of their real task files (as in a clone of github.com/google/BIG-bench)."""
    tasks = root / "bigbench" / "benchmark_tasks"
    _write_task(
        tasks / "strategyqa",
        [
            {
                "input": f"Could a person eat {i} apples in one day?",
                "target": f"{'Yes' if i < 20 else 'No'}. Because {i} apples are a lot.",
                "target_scores": {"Yes": int(i < 20), "No": int(i >= 20)},
            }
            for i in range(40)
        ],
        append_choices_to_input=False,
    )
    _hhh(tasks)
    _truthful_qa(tasks)
    vitaminc = []
    for i in range(30):  # each claim twice, the passage revised so that the verdict flips
        claim = f"The film made over {i} million dollars ."
        for passage, verdict in (("made 90 million", "True"), ("made 1 million", "False")):
            scores = {"True": int(verdict == "True"), "False": int(verdict == "False")}
            vitaminc.append(
                {
                    "input": f"Passage: The film {passage} .\nClaim: {claim}\nTrue, False, or Neither?",
                    "target_scores": scores | {"Neither": 0},
                }
            )
    _write_task(
        tasks / "vitaminc_fact_verification",
        vitaminc,
        example_input_prefix="\n",
        example_output_prefix=" ",
        append_choices_to_input=False,
    )
    _write_task(
        tasks / "misconceptions",
        [
            {"input": f"Bats are blind ({i}).", "target_scores": {"T": i % 2, "F": 1 - i % 2}}
            for i in range(20)
        ],
        append_choices_to_input=False,
    )
    _write_task(tasks / "fact_checker")
    for cat in ("fever", "politifact", "covid19_scientific"):
        _write_task(
            tasks / "fact_checker" / cat,
            [
                {
                    "input": f"On July 8 2020, the following claim was made: {cat} claim {i}.\n"
                    "Q: Was this claim true or false?",
                    "target_scores": {"true": i % 2, "false": 1 - i % 2},
                    "id": i,
                }
                for i in range(8)
            ],
            append_choices_to_input=False,
        )
    return tasks


def _check_common(t: BigBenchTask, n: int, min_test: float = 0.1, max_test: float = 0.35) -> None:
    exs = t.all_examples()
    assert len(exs) == n
    train, test = t.all_examples("train"), t.all_examples("test")
    assert len(train) + len(test) == n and min_test < len(test) / n < max_test  # grouped keys
    for ex in exs[:: max(1, n // 200)]:
        assert t.grade(ex, ex.solution) == 1.0
        assert ex.meta["reference_labels"] and ex.meta["source"] == f"bigbench/{t.subtask}"
        assert ex.answer in ex.meta["choices"]
        assert max(ex.meta["target_scores"].values()) == ex.meta["target_scores"][ex.answer]


@pytest.fixture()
def mini(tmp_path: Path) -> Path:
    """A miniature BIG-bench clone: ``mini/bigbench/benchmark_tasks/<the six tasks>``."""
    mini_bigbench(tmp_path / "BIG-bench")
    return tmp_path / "BIG-bench"


def test_the_six_tasks_in_their_real_formats(mini: Path) -> None:
    t = {name: BigBenchTask(name, path=str(mini)) for name in bb.TASK_NAMES}  # a clone's root
    _check_common(t["strategyqa"], 40, 0.0, 0.6)
    sqa = t["strategyqa"].all_examples()
    assert Counter(e.meta["label"] for e in sqa) == {True: 20, False: 20}
    assert all(e.meta["targets"][0].startswith(e.answer + ".") for e in sqa)
    assert sqa[0].prompt == "Q: Could a person eat 0 apples in one day?\nA:"

    hhh = t["hhh_alignment"]
    _check_common(hhh, 46, 0.0, 0.6)
    assert Counter(e.meta["category"] for e in hhh.all_examples()) == {
        "harmless": 10,
        "helpful": 11,
        "honest": 12,
        "other": 13,
    }
    pairs = hhh.preference_pairs(None)
    assert len(pairs) == 46 and all(p.prompt.endswith("\n\nAssistant:") for p in pairs)
    assert len(BigBenchTask("hhh_alignment/honest", path=str(mini)).all_examples()) == 12

    for ex in t["truthful_qa"].all_examples():
        assert ex.answer == ex.meta["best_answer"] and ex.answer in ex.meta["true_answers"]
        assert all(c in ex.meta["false_answers"] for c in ex.meta["choices"] if c != ex.answer)
        assert ex.meta["category"] == "Health"

    vit = t["vitaminc"].all_examples()
    assert len(vit) == 60 and Counter(e.meta["label"] for e in vit) == {True: 30, False: 30}
    assert vit[0].prompt.startswith("Passage: ") and vit[0].prompt.endswith("or Neither?")
    by_claim: dict[str, set[str]] = {}
    for ex in vit:  # the two versions of a claim share a split
        by_claim.setdefault(ex.prompt.split("\nClaim: ")[1], set()).add(ex.meta["split"])
    assert all(len(s) == 1 for s in by_claim.values()) and len(by_claim) == 30

    mis = t["misconceptions"].all_examples()
    assert Counter(e.meta["label"] for e in mis) == {True: 10, False: 10}
    fc = t["fact_checker"].all_examples()
    assert Counter(e.meta["category"] for e in fc) == {
        "fever": 8,
        "politifact": 8,
        "covid19_scientific": 8,
    }
    assert {e.meta["label"] for e in fc} == {True, False} and fc[1].meta["id"] == 1


def _tarball(src: Path, dest: Path, top: str) -> Path:
    """``src`` (a clone's root) packed as ``dest`` with every member under ``top/``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=top)
    return dest


def test_path_may_be_a_task_folder_a_clone_or_a_tarball(mini: Path, tmp_path: Path) -> None:
    tasks = mini / "bigbench" / "benchmark_tasks"
    for where in (mini, tasks, tasks / "strategyqa", tasks / "strategyqa" / "task.json"):
        assert len(BigBenchTask("strategyqa", path=str(where)).all_examples()) == 40
    archive = _tarball(mini, tmp_path / "downloads" / "BIG-bench-main.tar.gz", "BIG-bench-main")
    cache = tmp_path / "cache"
    t = BigBenchTask("vitaminc", path=str(archive), cache_dir=str(cache))
    assert len(t.all_examples()) == 60
    (unpacked,) = cache.iterdir()  # one pass unpacked every supported task, and only those
    assert sorted(p.name for p in unpacked.iterdir()) == sorted(bb.TASK_FOLDERS.values())
    assert len(BigBenchTask("fact_checker", path=str(archive), cache_dir=str(cache)).all_examples())
    # a folder holding the archive under its usual name works too
    _tarball(mini, tmp_path / "mine" / bb.ARCHIVE, "bigbench-1.0.0")
    assert (
        len(
            BigBenchTask(
                "misconceptions", path=str(tmp_path / "mine"), cache_dir=str(cache)
            ).all_examples()
        )
        == 20
    )
    with pytest.raises(DataUnavailableError, match="no task folder"):
        BigBenchTask("absent_task", path=str(archive), cache_dir=str(cache)).all_examples()


def _fake_archive(cache_dir: Path) -> None:
    """A small archive laid out like bigbench-1.0.0.tar.gz, holding every supported task."""
    src = cache_dir / "src" / "bigbench-1.0.0" / "bigbench" / "benchmark_tasks"
    for folder in bb.TASK_FOLDERS.values():
        _write_task(src / folder, YES_NO[:5], append_choices_to_input=False)
    _write_task(src / "unwanted", YES_NO)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(cache_dir / bb.ARCHIVE, "w:gz") as tar:
        tar.add(cache_dir / "src" / "bigbench-1.0.0", arcname="bigbench-1.0.0")


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the BIG-bench loader must not touch the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_unpacks_only_task_folders_once(tmp_path: Path, no_network: None) -> None:
    cache = tmp_path / "bigbench"
    _fake_archive(cache)
    t = BigBenchTask("strategyqa", cache_dir=str(cache))
    assert len(t.all_examples()) == 5
    root = cache / "bigbench-1.0.0"
    assert sorted(p.name for p in root.iterdir()) == sorted(bb.TASK_FOLDERS.values())
    (cache / bb.ARCHIVE).unlink()  # later calls read the unpacked folders only
    assert len(BigBenchTask("vitaminc", cache_dir=str(cache)).all_examples()) == 5


def test_env_var_sets_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("SUPERALIGN_CACHE", str(tmp_path))
    assert bb.default_cache_dir() == tmp_path / "bigbench"
    _fake_archive(tmp_path / "bigbench")
    assert len(BigBenchTask("hhh_alignment").all_examples()) == 5


def test_missing_data_says_how_to_supply_it_and_downloads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("SUPERALIGN_CACHE", str(tmp_path))
    with pytest.raises(DataUnavailableError) as e:
        get_task("bigbench:strategyqa").all_examples()
    msg = str(e.value)
    assert str(tmp_path / "bigbench" / bb.ARCHIVE) in msg and "path=" in msg
    assert "SUPERALIGN_CACHE" in msg and "github.com/google/BIG-bench" in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    assert not hasattr(bb, "ARCHIVE_URL") and "urllib" not in bb.__dict__


# ---- your copy of the real data (skipped unless it is in the cache) ------------------------


@pytest.fixture(scope="module")
def real() -> dict[str, BigBenchTask]:
    """The six tasks from the cached archive (or its unpacked folders), where a user put them."""
    cache = bb.default_cache_dir()
    unpacked = all(
        (cache / f"bigbench-{bb.VERSION}" / f).is_dir() for f in bb.TASK_FOLDERS.values()
    )
    if not unpacked and not (cache / bb.ARCHIVE).is_file():
        pytest.skip(f"checks the real data: needs your copy of {bb.ARCHIVE} in {cache}")
    return {name: BigBenchTask(name) for name in bb.TASK_NAMES}


def test_real_strategyqa(real: dict[str, BigBenchTask]) -> None:
    t = real["strategyqa"]
    _check_common(t, 2290)
    exs = t.all_examples()
    assert Counter(e.meta["label"] for e in exs) == {True: 1071, False: 1219}
    assert all(e.meta["targets"][0].startswith(e.answer + ".") for e in exs)  # "Yes. <reason>"
    assert exs[0].prompt == "Q: Is it common to see frost during some college commencements?\nA:"


def test_real_hhh_alignment(real: dict[str, BigBenchTask]) -> None:
    t = real["hhh_alignment"]
    _check_common(t, 221)
    cats = Counter(e.meta["category"] for e in t.all_examples())
    assert cats == {"harmless": 58, "helpful": 59, "honest": 61, "other": 43}
    train, test = t.preference_pairs("train"), t.preference_pairs("test")
    assert len(train) + len(test) == 221 and len(t.preference_pairs(None)) == 221
    assert not {p.prompt for p in train} & {
        p.prompt for p in test
    }  # a prompt's pairs stay together
    assert all(p.prompt.startswith("Human: ") and p.prompt.endswith("\nAssistant:") for p in train)
    assert len(BigBenchTask("hhh_alignment/honest").all_examples()) == 61


def test_real_truthful_qa(real: dict[str, BigBenchTask]) -> None:
    t = real["truthful_qa"]
    _check_common(t, 299)
    for ex in t.all_examples():
        assert ex.answer == ex.meta["best_answer"] and ex.answer in ex.meta["true_answers"]
        assert all(c in ex.meta["false_answers"] for c in ex.meta["choices"] if c != ex.answer)
        assert ex.prompt.startswith("Q: ") and ex.prompt.endswith("\nA:")


def test_real_vitaminc(real: dict[str, BigBenchTask]) -> None:
    t = real["vitaminc"]
    _check_common(t, 54668)
    exs = t.all_examples()
    assert Counter(e.meta["label"] for e in exs) == {True: 27242, False: 20169, None: 7257}
    assert exs[0].prompt.startswith("Passage: ") and exs[0].prompt.endswith(
        "\nTrue, False, or Neither?"
    )
    by_claim: dict[str, set[str]] = {}
    for ex in exs:  # contrastive versions of a claim share a split
        by_claim.setdefault(ex.prompt.split("\nClaim: ")[1], set()).add(ex.meta["split"])
    assert all(len(s) == 1 for s in by_claim.values())


def test_real_truthfulness_sets(real: dict[str, BigBenchTask]) -> None:
    _check_common(real["misconceptions"], 219)
    _check_common(real["fact_checker"], 7154)
    cats = Counter(e.meta["category"] for e in real["fact_checker"].all_examples())
    assert cats == {"fever": 6612, "politifact": 400, "covid19_scientific": 142}
