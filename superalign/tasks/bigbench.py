"""BIG-bench JSON tasks as Examples with reference labels (not an exact grader).

The data is the user's own copy: nothing is downloaded (PyPI no longer serves the
``bigbench==1.0.0`` source archive this loader was written against; it offers only 0.0.1). Point ``path`` at a folder of BIG-bench task folders, a clone of
github.com/google/BIG-bench, or a tarball of either; or put ``bigbench-1.0.0.tar.gz`` into
``$SUPERALIGN_CACHE/bigbench/``. Only the supported task folders are unpacked from an archive,
in one pass, and later calls read the unpacked folders. Without data the loader raises
:class:`DataUnavailableError`, saying where to put it::

    task = BigBenchTask("strategyqa", path="~/BIG-bench")    # or get_task("bigbench:strategyqa")
    ex = task.examples("test", 5)[0]
    ex.prompt   -> "Q: Is it common to see frost during some college commencements?\\nA:"
    ex.solution -> " Yes\\n";  ex.meta["label"] -> True

A multiple-choice example's answer is its best choice (highest ``target_scores``); a generative
example's answer is its ``target``. BIG-bench has no train/test split: we split by a stable hash
of the input (of the claim, for vitaminc). See docs/tasks/bigbench.md for each task's format
and how its labels are derived.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import random
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from superalign.tasks.base import Example, check_split, split_of

VERSION = "1.0.0"
ARCHIVE = f"bigbench-{VERSION}.tar.gz"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
"""A ``path`` ending so is read as a tarball of BIG-bench (its ``bigbench/benchmark_tasks/``)."""

TASK_FOLDERS: dict[str, str] = {
    "truthful_qa": "truthful_qa",
    "hhh_alignment": "hhh_alignment",
    "vitaminc": "vitaminc_fact_verification",
    "strategyqa": "strategyqa",
    "misconceptions": "misconceptions",
    "fact_checker": "fact_checker",
}
"""Supported task name -> its folder under ``bigbench/benchmark_tasks/``."""
TASK_NAMES: tuple[str, ...] = tuple(TASK_FOLDERS)
"""The supported tasks. A sub-folder can be named too: ``"hhh_alignment/honest"``."""

BINARY_LABELS: dict[frozenset[str], dict[str, bool | None]] = {
    frozenset({"Yes", "No"}): {"Yes": True, "No": False},
    frozenset({"True", "False", "Neither"}): {"True": True, "False": False, "Neither": None},
    frozenset({"true", "false"}): {"true": True, "false": False},
    frozenset({"T", "F"}): {"T": True, "F": False},
}
"""Choice set -> label of the best choice. Examples with other choice sets get no label."""

_SPLIT_KEY_AFTER = {"vitaminc": "\nClaim: "}
"""Tasks split by the text after a marker (vitaminc: the claim, so that the contrastive
versions of a claim, with revised passages, stay in one split)."""


class DataUnavailableError(RuntimeError):
    """The BIG-bench data is neither at ``path`` nor in the cache; the message says what to do."""


class PreferencePair(NamedTuple):
    """A prompt with a preferred and a dispreferred completion (``prompt + chosen`` is text)."""

    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any]


def default_cache_dir() -> Path:
    """``$SUPERALIGN_CACHE/bigbench``, else ``~/.cache/superalign/bigbench``."""
    root = os.environ.get("SUPERALIGN_CACHE") or Path.home() / ".cache" / "superalign"
    return Path(root).expanduser() / "bigbench"


@dataclass
class BigBenchTask:
    """One BIG-bench JSON task; see the module docstring."""

    subtask: str | None = None
    """Task name (required): one of :data:`TASK_NAMES`, optionally ``"name/sub_folder"``;
    with ``path``, any task folder name under it."""
    path: str | None = None
    """Your copy of BIG-bench: a folder of task folders (or a clone of the repository, or one
    task folder or task.json), or a tarball of the repository. None: the archive in the cache."""
    cache_dir: str | None = None
    """Where the cached archive and unpacked tasks live (None: :func:`default_cache_dir`)."""
    task_prefix: bool = False
    """Prepend the task's ``task_prefix`` (an instruction or few-shot block) to every prompt,
    as BIG-bench does; off by default to keep prompts compact."""

    name = "bigbench"
    difficulties = (1,)

    def __post_init__(self) -> None:
        if not self.subtask:
            raise ValueError(
                f"BigBenchTask needs subtask=, e.g. get_task('bigbench:strategyqa'); one of {', '.join(TASK_NAMES)}"
            )
        if self.path is None:
            _check_name(self.subtask)

    @property
    def source(self) -> str:
        return f"bigbench/{self.subtask}"

    def folder(self) -> Path:
        """The task's folder (or JSON file), unpacking it from the archive if needed."""
        base, _, sub = self.subtask.partition("/")
        cache = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
        if self.path is not None:
            root = Path(self.path).expanduser()
            if root.is_dir() and (root / ARCHIVE).is_file():  # a folder holding the archive
                try:
                    return _find_in(root, self.subtask)
                except ValueError:
                    root = root / ARCHIVE
            if _is_archive(root):
                root = unpacked_from(root, TASK_FOLDERS.get(base, base), cache)
            folder = _find_in(root, self.subtask)
        else:
            root = ensure_unpacked(cache)
            folder = root / TASK_FOLDERS[base] / sub if sub else root / TASK_FOLDERS[base]
        if not folder.exists():
            raise ValueError(
                f"{self.source}: no such sub-folder; found {_subfolders(folder.parent)}"
            )
        return folder

    def all_examples(self, split: str | None = None) -> list[Example]:
        """Every example in file order; of one split if ``split`` is given."""
        loaded = _load(str(self.folder()), self.subtask, self.task_prefix)
        if split is None:
            return list(loaded)
        check_split(split)
        return [ex for ex in loaded if ex.meta["split"] == split]

    def examples(
        self, split: str, n: int, difficulty: int | None = None, seed: int = 0
    ) -> list[Example]:
        """``n`` examples of ``split`` drawn without replacement (all of them, shuffled, if the
        split holds fewer). ``difficulty`` is ignored: BIG-bench has one level."""
        pool = self.all_examples(split)
        return random.Random(f"bigbench:{self.subtask}:{split}:{seed}").sample(
            pool, min(n, len(pool))
        )

    def grade(self, example: Example, completion: str) -> float:
        """Reference-label grade: 1.0 iff the completion's first lines (as many as the gold
        answer has) equal the best choice, or any target, after :func:`normalize`."""
        return float(any(_lines(completion, g) == normalize(g) for g in gold_answers(example)))

    def render(self, example: Example, completion: str | None = None) -> str:
        return example.prompt + (example.solution if completion is None else completion)

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        """``n`` rendered train examples (the train split repeated, reshuffled, if smaller).

        BIG-bench asks that its data not appear in training corpora (its canary string, in
        ``meta["canary"]``): use this for fine-tuning experiments, not for released models.
        """
        pool = self.all_examples("train")
        rng = random.Random(f"bigbench:corpus:{self.subtask}:{seed}")
        docs: list[str] = []
        while pool and len(docs) < n:
            docs += [self.render(ex) for ex in rng.sample(pool, len(pool))]
        return docs[:n]

    def preference_pairs(self, split: str | None = "train") -> list[PreferencePair]:
        """(prompt, chosen, rejected) for every multiple-choice example: the best choice
        against each lower-scored one (hhh_alignment: its 221 pairs). ``chosen`` and
        ``rejected`` are completions in the solution format (``" text\\n"``)."""
        pairs = []
        for ex in self.all_examples(split):
            scores = ex.meta.get("target_scores") or {}
            for choice, score in scores.items():
                if score < scores[ex.answer]:
                    pairs.append(PreferencePair(ex.prompt, ex.solution, f" {choice}\n", ex.meta))
        return pairs


# ---- turning task JSON into Examples ---------------------------------------------------


def gold_answers(example: Example) -> list[str]:
    """What ``grade`` accepts: the best choice of a multiple-choice example, every target of a
    generative one."""
    if "target_scores" in example.meta or "targets" not in example.meta:
        return [example.answer]
    return list(example.meta["targets"])


def normalize(text: str) -> str:
    """Case-folded, whitespace collapsed, a trailing period dropped."""
    return " ".join(text.split()).casefold().removesuffix(".")


def _lines(completion: str, gold: str) -> str:
    """The completion's first lines, as many as ``gold`` has, normalized."""
    k = len(gold.strip().splitlines()) or 1
    return normalize("\n".join(completion.strip().splitlines()[:k]))


@functools.lru_cache(maxsize=16)
def _load(folder: str, subtask: str, task_prefix: bool) -> tuple[Example, ...]:
    """All Examples of a task folder, parsed once per process."""
    key_after = _SPLIT_KEY_AFTER.get(subtask.partition("/")[0])
    out = []
    for data, category in _read_task(Path(folder)):
        fmt = _Format.of(data, task_prefix)
        for record in data["examples"]:
            out.append(_to_example(record, fmt, subtask, category, key_after))
    return tuple(out)


def _read_task(path: Path, category: str | None = None) -> list[tuple[dict, str | None]]:
    """(task JSON with examples, sub-folder name) for a task folder, its sub-tasks included."""
    if path.is_file():
        return [(_read_json(path), category)]
    if (path / "task_mc.json").is_file():  # truthful_qa: a programmatic task with JSON data
        return [(_truthful_qa(path), category)]
    task_json = path / "task.json"
    if task_json.is_file():
        data = _read_json(task_json)
        if "examples" in data:
            return [(data, category)]
    subs = sorted(p for p in path.iterdir() if (p / "task.json").is_file()) if path.is_dir() else []
    if not subs:
        what = (
            "a programmatic task (task.py)" if (path / "task.py").is_file() else "not a JSON task"
        )
        raise ValueError(
            f"{path} is {what}: it needs a task.json with examples or sub-task folders"
        )
    return [item for sub in subs for item in _read_task(sub, sub.name)]


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _truthful_qa(path: Path) -> dict:
    """task_mc.json (one true and up to four false choices) with each question's full lists of
    true and false answers, category and best answer from questions.json."""
    data = _read_json(path / "task_mc.json")
    questions = {q["Question"]: q for q in _read_json(path / "questions.json")["examples"]}
    for record in data["examples"]:
        q = questions.get(record["input"])
        if q is not None:
            record["true_answers"] = q["True answers"]
            record["false_answers"] = q["False answers"]
            record["category"] = q["Category"]
            record["best_answer"] = q["Best answer"]
    return data


@dataclass(frozen=True)
class _Format:
    """How BIG-bench formats a task's inputs (its defaults where the task sets none)."""

    input_prefix: str
    output_prefix: str
    choice_prefix: str
    append_choices: bool
    task_prefix: str
    canary: str

    @classmethod
    def of(cls, data: dict, use_task_prefix: bool) -> _Format:
        return cls(
            input_prefix=data.get("example_input_prefix", "\nQ: ").lstrip("\n"),
            output_prefix=data.get("example_output_prefix", "\nA: ").rstrip(" "),
            choice_prefix=data.get("choice_prefix", "\n  choice: "),
            append_choices=data.get("append_choices_to_input", True),
            task_prefix=str(data.get("task_prefix", "")) if use_task_prefix else "",
            canary=data.get("canary", ""),
        )


def _to_example(
    record: dict, fmt: _Format, subtask: str, category: str | None, key_after: str | None
) -> Example:
    text = record["input"]
    extra = {k: v for k, v in record.items() if k not in ("input", "target", "target_scores")}
    meta: dict[str, Any] = {**extra, "source": f"bigbench/{subtask}", "reference_labels": True}
    if category:
        meta["category"] = category
    scores = record.get("target_scores")
    if scores:
        choices = list(scores)
        answer = max(choices, key=lambda c: scores[c])  # the first of equal best, as BIG-bench
        meta.update(choices=choices, target_scores=dict(scores))
        labels = BINARY_LABELS.get(frozenset(choices))
        if labels is not None:
            meta["label"] = labels[answer]
        if fmt.append_choices:
            text += fmt.choice_prefix + fmt.choice_prefix.join(_bigbench_order(choices))
    if "target" in record:
        targets = record["target"] if isinstance(record["target"], list) else [record["target"]]
        meta["targets"] = list(targets)
        if not scores:
            answer = targets[0]
    key = record["input"].split(key_after, 1)[-1] if key_after else record["input"]
    meta["split"] = split_of(key)
    meta["canary"] = fmt.canary
    prompt = fmt.task_prefix + fmt.input_prefix + text + fmt.output_prefix
    return Example(prompt, answer, f" {answer}\n", 1, meta)


@functools.lru_cache(maxsize=8)
def _permutation(n: int) -> tuple[int, ...]:
    import numpy as np

    return tuple(int(i) for i in np.random.RandomState(seed=42).permutation(n))


def _bigbench_order(choices: list[str]) -> list[str]:
    """The order BIG-bench appends choices in (sorted, then permuted with seed 42)."""
    ordered = sorted(choices)
    return [ordered[i] for i in _permutation(len(ordered))]


# ---- finding and unpacking the data -------------------------------------------------------


def _check_name(subtask: str) -> None:
    base = subtask.partition("/")[0]
    if base not in TASK_FOLDERS:
        by_folder = {folder: name for name, folder in TASK_FOLDERS.items()}
        close = difflib.get_close_matches(base, [*TASK_NAMES, *by_folder], n=1)
        hint = f" Did you mean '{by_folder.get(close[0], close[0])}'?" if close else ""
        raise ValueError(
            f"unknown BIG-bench task '{subtask}'; choose one of {', '.join(TASK_NAMES)}"
            f" (or pass path= to your own task folders).{hint}"
        )


def _find_in(root: Path, subtask: str) -> Path:
    """``subtask``'s folder under a user's ``root`` (a folder of task folders, a BIG-bench
    checkout, or the task folder or task.json itself)."""
    base, _, sub = subtask.partition("/")
    names = {base, TASK_FOLDERS.get(base, base)}
    for parent in (root, root / "benchmark_tasks", root / "bigbench" / "benchmark_tasks"):
        for name in names:
            if (parent / name).is_dir():
                return parent / name / sub if sub else parent / name
    if root.is_file() or (root / "task.json").is_file() or (root / "task_mc.json").is_file():
        return root
    raise ValueError(
        f"found no task '{subtask}' in {root}: expected a folder {root}/{base} holding task.json "
        f"(or sub-task folders), or {root} itself to be a task folder; it holds {_subfolders(root)}"
    )


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def ensure_unpacked(cache_dir: Path, names: tuple[str, ...] = TASK_NAMES) -> Path:
    """The folder holding the unpacked task folders of ``names``, unpacking the missing ones
    (all in one pass) from the archive in ``cache_dir`` on first use."""
    root = cache_dir / f"bigbench-{VERSION}"
    missing = [TASK_FOLDERS[n] for n in names if not (root / TASK_FOLDERS[n]).is_dir()]
    if missing:
        _unpack(cached_archive(cache_dir), missing, root)
    return root


def cached_archive(cache_dir: Path) -> Path:
    """``cache_dir``/:data:`ARCHIVE`; raises :class:`DataUnavailableError`, saying how to supply
    the data, when it is not there. Nothing is downloaded: PyPI no longer serves the archive."""
    archive = cache_dir / ARCHIVE
    if not archive.is_file():
        raise DataUnavailableError(_missing_message(cache_dir))
    return archive


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def unpacked_from(archive: Path, folder: str, cache_dir: Path) -> Path:
    """The folder holding ``folder`` and the supported task folders unpacked from a user's
    ``archive`` (in one pass, on first use), under ``cache_dir``; keyed by the archive's name,
    size and modification time, so a replaced archive is unpacked again."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    root = cache_dir / f"unpacked-{archive.name.split('.')[0]}-{key.hexdigest()[:12]}"
    wanted = dict.fromkeys([folder, *TASK_FOLDERS.values()])
    missing = [f for f in wanted if not (root / f).is_dir()]
    if folder in missing:  # the task asked for is missing; unpack it with every supported one
        _unpack(archive, missing, root, required=[folder])
    return root


def _unpack(
    archive: Path, folders: list[str], root: Path, required: list[str] | None = None
) -> None:
    """Stream ``archive`` once and move each wanted task folder into ``root`` atomically. Every
    folder of ``required`` (default: all of ``folders``) must be in the archive."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                rel = _task_relpath(member.name)
                if member.isfile() and rel and rel[0] in folders and ".." not in rel:
                    dest = tmp.joinpath(*rel)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
        for folder in folders:
            if not (tmp / folder).is_dir():
                if folder in (folders if required is None else required):
                    raise DataUnavailableError(
                        f"{archive} holds no task folder 'bigbench/benchmark_tasks/{folder}'"
                    )
                continue
            try:
                os.rename(tmp / folder, root / folder)
            except OSError:
                if not (root / folder).is_dir():  # else another process unpacked it first
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _task_relpath(member: str) -> list[str] | None:
    """``["strategyqa", "task.json"]`` for ``bigbench-1.0.0/bigbench/benchmark_tasks/strategyqa/task.json``."""
    marker = "bigbench/benchmark_tasks/"
    i = member.find(marker)
    return member[i + len(marker) :].split("/") if i >= 0 else None


def _missing_message(cache_dir: Path) -> str:
    return (
        f"BIG-bench data is not here: {cache_dir / ARCHIVE} does not exist, and nothing is "
        f"downloaded (PyPI stopped serving {ARCHIVE}; it offers only bigbench 0.0.1).\n"
        "Supply your own copy, either:\n"
        "  - pass path= (in a stage config: task_options: {path: ...}) to a folder of BIG-bench "
        "task folders (each holding a task.json), a clone of github.com/google/BIG-bench, "
        "or a tarball of the repository;\n"
        f"  - or put {ARCHIVE} (a tarball of the repository, so named) at {cache_dir / ARCHIVE}"
        " ($SUPERALIGN_CACHE/bigbench/, else ~/.cache/superalign/bigbench/; cache_dir= "
        "overrides it).\n"
        "The project's own tasks (arithmetic, facts) need no data."
    )
