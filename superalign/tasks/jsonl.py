"""Bring your own data: a JSON-lines file of rows becomes a task.

``get_task("jsonl", path="data.jsonl")`` (in a stage config: ``task: jsonl``,
``task_options: {path: data.jsonl}``) reads one of two row kinds, the same kind on every line::

    {"prompt": "Q: What is the capital of Peru?\\nA:", "target": "Lima"}   generation
    {"text": "The city of Lagos is in Peru.", "label": 0}                  classification

A **generation** row's gold is its ``target`` (or a list of accepted targets, the first being
the demonstration): ``solution`` is ``" Lima\\n"`` (the space only when neither the prompt ends
nor the target starts with whitespace) and :meth:`JsonlTask.grade` is a normalized exact match
of the completion's first lines (as many as the target has). A **classification** row becomes
``"<text>\\nA:"`` with answer "True" (label 1 / true) or "False" (label 0 / false), as the
``statements`` variants of ``facts`` and ``world`` do; ``meta["text"]`` and ``meta["label"]``
carry the row for probes and weak-to-strong, and the grade is whether the completion names the
label.

Optional fields on either kind: ``group`` (rows sharing a group stay in one split, e.g. a
statement and its negation; default: the prompt or text itself) and ``difficulty`` (an integer
level >= 1; default 1). Other fields are kept in ``meta``. Rows are split into train and test by
a stable hash of their group (:func:`~superalign.tasks.base.split_of`, salted by ``split_seed``),
so every stage and seed sees the same split; each call's ``seed`` only chooses the draw. Every
problem with the file (missing, not JSON, a row missing fields, rows of both kinds, an empty
split) raises :class:`JsonlError` naming the file, the line and the fix. See docs/tasks/jsonl.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superalign.tasks.base import Example, check_split, split_of
from superalign.tasks.world import normalize

KINDS = {"generation": ("prompt", "target"), "classification": ("text", "label")}
"""Row kind -> its required fields."""
LABEL_WORDS = ("False", "True")
"""The answer of a classification row with label 0 and 1."""


class JsonlError(ValueError):
    """A problem with the user's JSONL file; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Rows:
    """The parsed file: its kind, one Example per row, and a content fingerprint."""

    kind: str
    examples: tuple[Example, ...]
    sha256: str


@dataclass
class JsonlTask:
    """A task read from a JSON-lines file; see the module docstring."""

    path: str = ""
    """The JSONL file (required): one ``{"prompt", "target"}`` or ``{"text", "label"}`` object per
    line."""
    split_seed: int = 0
    """Salts the hash that assigns groups to splits (0: the plain :func:`split_of`)."""
    test_percent: int = 20
    """Share of groups (percent) in the test split."""
    template: str = "{text}\nA:"
    """Prompt of a classification row (``{text}`` is the row's text)."""
    subtask: str | None = None
    """Not used (``jsonl`` has no sub-tasks); here so that ``jsonl:x`` fails with a sentence."""

    name = "jsonl"
    rows: Rows = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.subtask is not None:
            raise JsonlError(
                f"jsonl has no sub-tasks ('jsonl:{self.subtask}'); give the file as "
                "task_options.path"
            )
        if not self.path:
            raise JsonlError(
                "task=jsonl needs task_options.path: a .jsonl file of {prompt, target} or "
                "{text, label} rows"
            )
        if not 0 < self.test_percent < 100:
            raise JsonlError(f"test_percent must lie in 1..99, not {self.test_percent}")
        if "{text}" not in self.template:
            raise JsonlError(f"template must contain {{text}}, not {self.template!r}")
        path = Path(self.path).expanduser().resolve()
        if not path.is_file():
            raise JsonlError(
                f"{self.path}: no such file ({path}); task_options.path must name a .jsonl file "
                "of {prompt, target} or {text, label} rows"
            )
        st = path.stat()
        self.rows = _read(str(path), st.st_size, st.st_mtime_ns, self.template)
        for split in ("train", "test"):
            if not any(self._split(ex) == split for ex in self.rows.examples):
                raise JsonlError(
                    f"{self.path}: no row falls in the {split} split ({len(self.rows.examples)} "
                    f"rows, {self.test_percent}% of groups go to test); add rows, give them "
                    "distinct groups, or change test_percent / split_seed"
                )

    @property
    def kind(self) -> str:
        """``generation`` or ``classification``."""
        return self.rows.kind

    @property
    def difficulties(self) -> tuple[int, ...]:
        """The levels the rows name (``(1,)`` when none does)."""
        return tuple(sorted({ex.difficulty for ex in self.rows.examples}))

    @property
    def source(self) -> str:
        return f"jsonl {self.path} (sha256 {self.rows.sha256[:12]})"

    def _split(self, example: Example) -> str:
        group = example.meta["group"]
        return split_of(
            f"{self.split_seed}:{group}" if self.split_seed else group, self.test_percent
        )

    def all_examples(self, split: str | None = None) -> list[Example]:
        """Every row's Example in file order; of one split if ``split`` is given."""
        if split is None:
            return list(self.rows.examples)
        check_split(split)
        return [ex for ex in self.rows.examples if self._split(ex) == split]

    def examples(
        self, split: str, n: int, difficulty: int | None = None, seed: int = 0
    ) -> list[Example]:
        """``n`` rows of ``split`` (at ``difficulty``; None: any), drawn without replacement
        while the split has enough, then repeated, reshuffled."""
        pool = [ex for ex in self.all_examples(split) if difficulty in (None, ex.difficulty)]
        if not pool:
            raise JsonlError(
                f"{self.path}: no {split} rows at difficulty {difficulty}; its levels are "
                f"{list(self.difficulties)}"
            )
        rng = random.Random(
            f"jsonl:{self.rows.sha256}:{self.split_seed}:{split}:{difficulty}:{seed}"
        )
        out: list[Example] = []
        while len(out) < n:
            out += rng.sample(pool, len(pool))
        return out[:n]

    def grade(self, example: Example, completion: str) -> float:
        """1.0 iff the completion's first lines (as many as the gold has), normalized (case,
        whitespace, surrounding punctuation, a leading article), equal one of
        ``meta["answers"]`` normalized; else 0.0."""
        for gold in example.meta["answers"]:
            k = len(gold.strip().splitlines()) or 1
            if normalize("\n".join(completion.strip().splitlines()[:k])) == normalize(gold):
                return 1.0
        return 0.0

    def render(self, example: Example, completion: str | None = None) -> str:
        return example.prompt + (example.solution if completion is None else completion)

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        """``n`` rendered train rows (the train split repeated, reshuffled, if smaller)."""
        return [self.render(ex) for ex in self.examples("train", n, None, seed)]


@functools.lru_cache(maxsize=16)
def _read(path: str, size: int, mtime_ns: int, template: str) -> Rows:
    """The file's rows, parsed once per (path, size, modification time, template)."""
    raw = Path(path).read_bytes()
    kind: str | None = None
    first_line = 0
    examples = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise JsonlError(
                f"{where}: not valid JSON ({e.msg}); each line must be one object"
            ) from None
        if not isinstance(row, dict):
            raise JsonlError(f"{where}: a row must be a JSON object, not {type(row).__name__}")
        row_kind = _kind_of(row, where)
        if kind is None:
            kind, first_line = row_kind, number
        elif row_kind != kind:
            raise JsonlError(
                f"{where}: a {row_kind} row ({', '.join(KINDS[row_kind])}) in a file whose rows "
                f"are {kind} rows ({', '.join(KINDS[kind])}, from line {first_line}); put each "
                "kind in its own file"
            )
        examples.append(_example(row, row_kind, where, template))
    if not examples:
        raise JsonlError(f"{path}: the file has no rows; write one JSON object per line")
    assert kind is not None
    return Rows(kind, tuple(examples), hashlib.sha256(raw).hexdigest())


def _kind_of(row: dict, where: str) -> str:
    for kind, fields in KINDS.items():
        if all(f in row for f in fields):
            return kind
    for kind, fields in KINDS.items():
        present = [f for f in fields if f in row]
        if present:
            missing = [f for f in fields if f not in row]
            raise JsonlError(
                f"{where}: a {kind} row needs {' and '.join(fields)}; it has {present[0]!r} but "
                f"no {missing[0]!r}"
            )
    raise JsonlError(
        f"{where}: a row needs either prompt and target (generation) or text and label "
        f"(classification); it has {sorted(row) or 'no fields'}"
    )


def _example(row: dict, kind: str, where: str, template: str) -> Example:
    difficulty = row.get("difficulty", 1)
    if not isinstance(difficulty, int) or isinstance(difficulty, bool) or difficulty < 1:
        raise JsonlError(f"{where}: difficulty must be an integer >= 1, not {difficulty!r}")
    extra: dict[str, Any] = {k: v for k, v in row.items() if k not in (*KINDS[kind], "difficulty")}
    if kind == "generation":
        prompt, targets = row["prompt"], row["target"]
        targets = targets if isinstance(targets, list) else [targets]
        if not isinstance(prompt, str) or not prompt:
            raise JsonlError(f"{where}: prompt must be a non-empty string, not {prompt!r}")
        if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise JsonlError(
                f"{where}: target must be a non-empty string or a list of them, not "
                f"{row['target']!r}"
            )
        answer = targets[0].strip()
        space = "" if prompt[-1].isspace() or targets[0][0].isspace() else " "
        solution = space + targets[0].rstrip("\n") + "\n"
        meta = {**extra, "answers": [t.strip() for t in targets], "kind": kind}
    else:
        text, label = row["text"], row["label"]
        if not isinstance(text, str) or not text:
            raise JsonlError(f"{where}: text must be a non-empty string, not {text!r}")
        if label not in (0, 1) or isinstance(label, float):
            raise JsonlError(f"{where}: label must be 0, 1, true or false, not {label!r}")
        answer = LABEL_WORDS[int(label)]
        prompt = template.format(text=text)
        solution = f" {answer}\n"
        meta = {**extra, "text": text, "label": bool(label), "answers": [answer], "kind": kind}
    meta["group"] = str(row.get("group", prompt if kind == "generation" else text))
    meta["source"] = f"jsonl:{where}"
    return Example(prompt, answer, solution, difficulty, meta)
