"""Stage ``weak_to_strong``: weak supervisors, strong students on their labels, gold ceilings, PGR.

The protocol of Burns et al. (2023), "Weak-to-strong generalization", on binary classification:
for every dataset and seed, draw disjoint train halves A and B and a held-out test set, then

1. **weak**: each weak model is trained on A with gold labels, then labels B (its soft
   predictions, P(class 1)) and is scored on test;
2. **weak-to-strong**: each stronger model (a student) is trained on B with those weak labels,
   once with plain cross-entropy (``xent``) and once with the auxiliary confidence loss
   (``conf``, :func:`~superalign.generalize.classifiers.confidence_loss`), and scored on test;
3. **ceiling**: each stronger model is trained on B with gold labels and scored on test.

``models`` is a ladder, weakest first; every pair (models[i], models[j]) with i < j is a
(weak, strong) pair. PGR = (weak-to-strong - weak) / (ceiling - weak) of the accuracies
averaged over seeds, from :func:`~superalign.generalize.pgr.gap_recovered`: its interval
resamples seeds and then test items within each seed, and it is reported only where the gap
(ceiling - weak) is resolved, its interval excluding 0 and the gap exceeding one test item
(1 / n_test); elsewhere PGR is null and ``pgr_reason`` says why.

Settings:

- ``verifiable``: "is this arithmetic solution correct?" Texts are a problem of the arithmetic
  task and either its gold solution (label 1) or a solution with exactly one error (label 0;
  :func:`corrupt`), half and half. Train halves come from the task's train split, test from its
  test split. The models are pretrained arithmetic LMs (``pretrain`` run folders) used as frozen
  verifiers: a linear head on how likely the LM finds the solution. (The from-scratch sizes
  tiny/small/base are accepted too, but stay at chance on this task within minutes of CPU.)
- ``bigbench``: BIG-bench tasks with binary reference labels (vitaminc, strategyqa,
  fact_checker, misconceptions). Default ladder: bag-of-words logistic regression < MiniLM
  with a linear head. Needs your copy of BIG-bench (``task_options: {path: ...}`` or the
  cached archive; nothing is downloaded, see docs/tasks/bigbench.md).
- **any binary task family** (``world``, ``facts``, ``jsonl``, ...): ``setting`` names the
  family and ``datasets`` its sub-tasks (``setting=world datasets=[cities]``; a family without
  sub-tasks, such as ``jsonl`` with ``task_options: {path: rows.jsonl}``, runs once under its own
  name). A task with true/false statements (a ``statements`` method: world, facts) gives those,
  unless ``task_options`` names a ``variant``. Every example must carry a boolean or 0/1
  ``meta["label"]``; a task whose examples do not is refused with a sentence.
  Default ladder: bag of words < MiniLM < SmolLM2.

In the BIG-bench and task settings, text = the example's ``meta["text"]`` (a world statement or
a jsonl row's text) or else its prompt, label = ``meta["label"]``; A and B are drawn from the
train split and split between them by group (``meta["group"]`` or ``meta["entity"]``: a city's
true and false statements stay in one half), test from the test split; each part is balanced
between the labels.

Every trained model is trained and evaluated inside the run; nothing is cached across runs, so
the run folder's key (the whole config: datasets, seeds, models, sample counts, and the content
fingerprint of every LM given by path) determines every model in it. Each finished job is
checkpointed, so a killed run resumes after its last job.

Metrics (``metrics.jsonl``, one line per trained model; ``step`` counts jobs):

- ``eval/accuracy``: accuracy on the held-out test set;
- ``eval/agreement_with_weak``: (students) share of test examples where the student's
  prediction equals its weak supervisor's;
- ``weak/label_accuracy``: (weak models) accuracy of the weak labels on B against gold;
- ``loss/train_first``, ``loss/train_final``: mean training loss of the first and last epoch;
- ``job``: which model this was, e.g. ``arithmetic-d1 seed=0 w2s lm-tiny-400->lm-tiny-600
  conf``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from superalign.config import set_threads
from superalign.generalize.classifiers import (
    KINDS,
    POOLINGS,
    Classifier,
    Resources,
    TrainSettings,
    build_classifier,
    kind_of,
)
from superalign.generalize.pgr import gap_recovered, mean_ci
from superalign.runs import Run, atomic_write_json, atomic_write_text, read_json
from superalign.tasks import TASKS, get_task
from superalign.tasks.arithmetic import corrupt

DEFAULT_DATASETS = {
    "verifiable": ["arithmetic-d1"],
    "bigbench": ["vitaminc", "strategyqa"],
    "world": ["cities"],
}
"""Datasets when ``datasets`` is empty; any other family: its own name (no sub-task)."""
DEFAULT_MODELS = {"bigbench": ["bow", "minilm"]}
"""Ladders when ``models`` is empty; any task family but bigbench: bow < minilm < smollm2."""
TASK_LADDER = ["bow", "minilm", "smollm2"]
BIGBENCH_BINARY = ("vitaminc", "strategyqa", "fact_checker", "misconceptions")
"""BIG-bench tasks whose examples carry a binary ``meta["label"]``."""
LOSSES = ("xent", "conf")


@dataclass
class WeakToStrongConfig:
    """Weak-to-strong generalization: weak labels, strong students, gold ceilings, PGR."""

    setting: str = "verifiable"
    """``verifiable``: "is this arithmetic solution correct?"; ``bigbench``: BIG-bench binary
    tasks with reference labels; or any task family with binary examples (``world``,
    ``facts``, ``jsonl``, ...)."""
    datasets: list[str] = field(default_factory=list)
    """verifiable: ``arithmetic-d{k}`` (k: the task's difficulty level); bigbench: task names
    among vitaminc, strategyqa, fact_checker, misconceptions; a task family: its sub-tasks
    (``world``: cities, capitals, continents, currencies, hypernyms). Empty: the setting's
    default (``[arithmetic-d1]``; ``[vitaminc, strategyqa]``; ``[cities]``; for a family
    without sub-tasks, its own name)."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the setting's task family: bigbench ``{path: ~/BIG-bench}`` (your copy),
    jsonl ``{path: rows.jsonl}`` (required), world ``{n_entities: 300}``, ... Unused by
    verifiable."""
    models: list[str] = field(default_factory=list)
    """Classifier ladder, weakest first: each pair (i < j) is a (weak, strong) pair. Each entry is
    a kind (bow, tiny, small, base, minilm, smollm2, gemma; bow only first; also
    smollm2-135m-instruct, gemma3-270m) or the path of a pretrained causal LM (a ``pretrain``
    run folder), used as a frozen verifier with a linear head on its log-probs of the
    solution. Empty: ``[bow, minilm]`` for bigbench, ``[bow, minilm, smollm2]`` for a task
    family; verifiable needs LMs."""
    n_train_weak: int = 2000
    """Size of train half A (the weak models' gold training data). Capped by the data."""
    n_train_strong: int = 2000
    """Size of train half B (labelled by the weak models; the students' and ceilings' data)."""
    n_test: int = 1000
    """Held-out test examples (test split) every model is scored on."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One full experiment per seed (data draw, initialisation, batch order); PGR intervals
    resample seeds."""
    epochs: int = 3
    """Passes over the training half (neural classifiers)."""
    lr: float = 1e-3
    """AdamW learning rate of the from-scratch sizes (and of the head of a fine-tuned MiniLM)."""
    head_lr: float = 1e-3
    """Learning rate of heads on frozen (standardised) features: minilm, smollm2, gemma, LM
    verifiers. Adam moves every weight about this much per step, so few features (the LM
    verifiers' 3) want more (1e-2) than many (MiniLM's 384)."""
    head_hidden: int = 0
    """Hidden width of the head on frozen features (0: linear; e.g. 64: a small GELU MLP)."""
    lm_layer: float = 0.5
    """smollm2, gemma: which residual stream is read, as a fraction of the LM's depth (0: the
    embeddings, 1: the last block; 0.5 is layer 15 of SmolLM2's 30, 9 of Gemma-3-270M's 18)."""
    pooling: Literal["last", "mean"] = "last"
    """smollm2, gemma: the residual stream at the ``last`` token or its ``mean`` over tokens."""
    encoder_lr: float = 5e-5
    """Learning rate of fine-tuned pretrained layers (``encoder_layers`` > 0)."""
    batch_size: int = 32
    """Examples per optimizer step (the confidence loss hardens predictions per batch)."""
    aux_coef: float = 0.5
    """Final weight alpha of the confidence term in the ``conf`` loss."""
    warmup_frac: float = 0.2
    """Share of training steps over which alpha rises linearly from 0 to ``aux_coef``."""
    weak_labels: Literal["soft", "hard"] = "soft"
    """Students learn the weak model's probabilities (``soft``, as Burns et al.) or its 0/1
    predictions (``hard``)."""
    encoder_layers: int = 0
    """Top MiniLM layers fine-tuned with ``encoder_lr`` (0: frozen encoder, linear probe)."""
    max_length: int = 128
    """Texts are cut to their last ``max_length`` tokens."""
    vocab_size: int = 512
    """BPE vocabulary of the from-scratch sizes' tokenizer (trained on each dataset's train
    texts)."""
    bow_c: float = 1.0
    """Inverse L2 strength of the bag-of-words logistic regression."""
    n_boot: int = 2000
    """Bootstrap resamples for the intervals."""
    threads: int = 0
    """torch CPU threads (0: all cores)."""

    def __post_init__(self) -> None:
        from superalign.config import ConfigError, check_at_least

        if self.setting not in ("verifiable", "bigbench", *TASKS):
            raise ConfigError(
                f"setting must be verifiable, bigbench or a task family ({', '.join(TASKS)}), "
                f"not {self.setting!r}"
            )
        if self.setting == "arithmetic":
            raise ConfigError(
                "arithmetic examples are not binary: setting=verifiable asks whether an "
                "arithmetic solution is correct"
            )
        self.datasets = list(self.datasets) or DEFAULT_DATASETS.get(self.setting, [self.setting])
        self.models = [kind_of(m) for m in self.models]
        if not self.models and self.setting == "verifiable":
            raise ConfigError(
                "the verifiable setting needs models: pretrained arithmetic LMs (pretrain run "
                "folders), weakest first, as pipelines/w2s.yaml builds them"
            )
        self.models = list(self.models) or list(DEFAULT_MODELS.get(self.setting, TASK_LADDER))
        for d in self.datasets:
            if self.setting == "verifiable" and not d.startswith("arithmetic-d"):
                raise ConfigError(
                    f"verifiable datasets look like arithmetic-d2 (a difficulty level), not {d!r}"
                )
            if self.setting == "bigbench" and d not in BIGBENCH_BINARY:
                raise ConfigError(
                    f"bigbench dataset {d!r} has no binary labels; choose from "
                    f"{', '.join(BIGBENCH_BINARY)}"
                )
        lms = [m for m in self.models if m not in KINDS]
        bad = [m for m in lms if "/" not in m and not Path(m).expanduser().exists()]
        if bad:
            raise ConfigError(
                f"unknown models {bad}: give kinds ({', '.join(KINDS)}) or paths of pretrained LMs"
            )
        if lms and self.setting != "verifiable":
            raise ConfigError(f"LM verifiers {lms} score arithmetic solutions: setting=verifiable")
        # a path that does not exist yet (a pipeline being checked) fails when the stage runs
        kinds = [m for m in self.models if m in KINDS]
        if len(self.models) < 2 or len(set(kinds)) != len(kinds):
            raise ConfigError(
                f"models must list at least two different classifiers, weakest first: {self.models}"
            )
        if "bow" in self.models[1:]:
            raise ConfigError("bow can only be the weakest model (first in models)")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        check_at_least(self, 1, "n_train_weak", "n_train_strong", "n_test", "epochs", "batch_size")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 (the confidence loss uses batches)")
        for name in ("lr", "head_lr", "encoder_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in (0, 1), not {getattr(self, name)}")
        if not 0 <= self.aux_coef <= 1 or not 0 <= self.warmup_frac <= 1:
            raise ConfigError("aux_coef and warmup_frac must lie in [0, 1]")
        if not 0 <= self.encoder_layers <= 6:
            raise ConfigError(
                f"encoder_layers must be in 0..6 (MiniLM has 6), not {self.encoder_layers}"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if not 0 <= self.lm_layer <= 1 or self.head_hidden < 0:
            raise ConfigError(
                f"lm_layer must lie in [0, 1] (a fraction of the depth), not {self.lm_layer}, "
                f"and head_hidden >= 0, not {self.head_hidden}"
            )
        if self.threads < 0 or self.n_boot < 1:
            raise ConfigError("threads must be >= 0 and n_boot >= 1")

    def labels(self) -> dict[str, str]:
        """Short names of ``models`` for jobs, tables and plots: a kind is its own name; an LM
        path is ``lm-<size>-<steps>`` (from its pretrain summary), or its folder name when that
        repeats."""
        out = {m: m if m in KINDS else _lm_label(m) for m in self.models}
        repeated = {v for v in out.values() if list(out.values()).count(v) > 1}
        return {m: Path(m).name if v in repeated else v for m, v in out.items()}

    def pairs(self) -> list[tuple[str, str]]:
        """(weak, strong) pairs: every model with every stronger one."""
        return list(itertools.combinations(self.models, 2))


def _lm_label(path: str) -> str:
    """``lm-<size>-<steps>`` for a pretrain run folder, else the folder's name."""
    summary = Path(path).expanduser() / "summary.json"
    info = read_json(summary) if summary.is_file() else {}
    if "size" not in info:
        return Path(path).name
    return f"lm-{info['size']}" + (f"-{info['steps']}" if "steps" in info else "")


# ---- data ------------------------------------------------------------------------------------


@dataclass
class Split:
    """Texts with gold labels (1: positive / correct, 0: negative / wrong)."""

    texts: list[str]
    labels: np.ndarray


@dataclass
class W2SData:
    """Disjoint train halves and the held-out test set of one dataset and seed."""

    weak_train: Split
    """A: the weak models' gold training data."""
    strong_train: Split
    """B: labelled by weak models; trains students (weak labels) and ceilings (gold)."""
    test: Split


def verification_split(split: str, n: int, difficulty: int, seed: int) -> Split:
    """``n`` problems of ``split`` with the gold solution (label 1) or a corrupted one (label 0),
    exactly half each (one more correct when n is odd), in random order."""
    task = get_task("arithmetic")
    examples = task.examples(split, n, difficulty, seed=seed)
    rng = random.Random(f"w2s:verify:{split}:{difficulty}:{seed}")
    labels = [int(i < (n + 1) // 2) for i in range(n)]
    rng.shuffle(labels)
    texts = [
        ex.prompt + (ex.solution if y else corrupt(ex, rng)) for ex, y in zip(examples, labels)
    ]
    return Split(texts, np.array(labels))


def group_of(example: Any) -> str:
    """What keeps examples together in one part: ``meta["group"]`` (jsonl), ``meta["entity"]``
    (world: a city's true and false statements), else the prompt."""
    return str(example.meta.get("group") or example.meta.get("entity") or example.prompt)


def grouped_parts(examples: list[Any], sizes: list[int], rng: random.Random) -> list[list[Any]]:
    """Disjoint parts of ``examples`` by group (:func:`group_of`): groups are shuffled and
    dealt to the parts in proportion to ``sizes``, then each part is balanced between the labels
    and cut to its size (:func:`balanced_parts`)."""
    groups = list(dict.fromkeys(group_of(ex) for ex in examples))
    rng.shuffle(groups)
    bounds = np.cumsum([0, *sizes]) / sum(sizes) * len(groups)
    where = {g: int(np.searchsorted(bounds, i, side="right")) - 1 for i, g in enumerate(groups)}
    return [
        balanced_parts([ex for ex in examples if where[group_of(ex)] == k], [n], rng)[0]
        for k, n in enumerate(sizes)
    ]


def label_of(example: Any) -> bool | None:
    """``meta["label"]`` as a bool (True / False / 1 / 0), or None when it is anything else."""
    label = example.meta.get("label")
    return bool(label) if label in (True, False) else None


def balanced_parts(examples: list[Any], sizes: list[int], rng: random.Random) -> list[list[Any]]:
    """Disjoint parts of the labelled ``examples``, each with half of each label and at most its
    size (less when a label runs out), shuffled."""
    by_label = [[ex for ex in examples if label_of(ex) is y] for y in (True, False)]
    for group in by_label:
        rng.shuffle(group)
    parts = []
    for n in sizes:
        k = min(n // 2, *(len(g) for g in by_label))
        part = [ex for g in by_label for ex in g[:k]]
        by_label = [g[k:] for g in by_label]
        rng.shuffle(part)
        parts.append(part)
    return parts


def _split(examples: list[Any]) -> Split:
    return Split(
        [ex.meta.get("text") or ex.prompt for ex in examples],
        np.array([int(ex.meta["label"]) for ex in examples]),
    )


def task_spec(cfg: WeakToStrongConfig, dataset: str) -> str:
    """``get_task`` spec of ``dataset``: ``family:dataset``, or just the family when the dataset
    is the family's own name."""
    return cfg.setting if dataset == cfg.setting else f"{cfg.setting}:{dataset}"


def binary_examples(
    task: Any, spec: str, split: str, n: int, seed: int, statements: bool = True
) -> list[Any]:
    """The labelled examples of ``split``: all of them where the task lists them
    (``all_examples``), else a draw of ``2 n`` (distinct texts; twice ``n`` so that a draw
    that repeats entities still covers the split), of its true/false ``statements`` where it
    has them and ``statements`` is True, else of its ``examples``. Raises ValueError, saying
    why, when an example has no boolean or 0/1 ``meta["label"]``."""
    if hasattr(task, "all_examples"):
        examples = task.all_examples(split)
    else:
        if statements and hasattr(task, "statements"):
            drawn = task.statements(split, 2 * n, seed, difficulty=None)
        else:
            drawn = task.examples(split, 2 * n, None, seed=seed)
        examples = list({ex.meta.get("text") or ex.prompt: ex for ex in drawn}.values())
    bad = [ex for ex in examples if label_of(ex) is None]
    if bad:
        raise ValueError(
            f"weak_to_strong needs a binary task, but {len(bad)} of {len(examples)} {split} "
            f"examples of {spec} carry no true/false meta['label'] (e.g. {bad[0].prompt!r}); "
            "use a task of true/false statements (world or facts with variant=statements, "
            "a jsonl file of {text, label} rows)"
        )
    return examples


def load_data(cfg: WeakToStrongConfig, dataset: str, seed: int) -> W2SData:
    """Halves A, B (disjoint, from the train split) and test of ``dataset`` for ``seed``."""
    na, nb = cfg.n_train_weak, cfg.n_train_strong
    if cfg.setting == "verifiable":
        level = int(dataset.removeprefix("arithmetic-d"))
        train = verification_split("train", na + nb, level, seed)
        test = verification_split("test", cfg.n_test, level, seed)
        return W2SData(
            Split(train.texts[:na], train.labels[:na]),
            Split(train.texts[na:], train.labels[na:]),
            test,
        )
    spec = task_spec(cfg, dataset)
    task = get_task(spec, **cfg.task_options)
    statements = "variant" not in cfg.task_options  # a variant the user names is used as is
    rng = random.Random(f"w2s:{cfg.setting}:{dataset}:{seed}")
    train = binary_examples(task, spec, "train", na + nb, seed, statements)
    a, b = grouped_parts(train, [na, nb], rng)
    (test,) = balanced_parts(
        binary_examples(task, spec, "test", cfg.n_test, seed, statements), [cfg.n_test], rng
    )
    if not (a and b and test):
        raise ValueError(
            f"{spec} has too few examples of both labels for halves A and B and a test set "
            f"({len(a)}, {len(b)}, {len(test)} after balancing); add examples"
        )
    return W2SData(_split(a), _split(b), _split(test))


# ---- the experiment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One model to train: a weak supervisor, a student or a ceiling."""

    dataset: str
    seed: int
    role: Literal["weak", "w2s", "ceiling"]
    model: str
    """The model's entry in ``models`` (a kind or an LM path)."""
    weak: str | None = None
    """The student's supervisor (role w2s)."""
    loss: str = "xent"
    name: str = ""
    """Readable and unique in a run, e.g. ``strategyqa seed=0 w2s bow->minilm conf``."""


def plan(cfg: WeakToStrongConfig, dataset: str, seed: int) -> list[Job]:
    """The jobs of one dataset and seed, each weak model before its students."""
    lab = cfg.labels()
    head = f"{dataset} seed={seed}"
    jobs = [Job(dataset, seed, "weak", m, name=f"{head} weak {lab[m]}") for m in cfg.models[:-1]]
    jobs += [
        Job(dataset, seed, "ceiling", m, name=f"{head} ceiling {lab[m]}") for m in cfg.models[1:]
    ]
    jobs += [
        Job(dataset, seed, "w2s", s, w, loss, f"{head} w2s {lab[w]}->{lab[s]} {loss}")
        for w, s in cfg.pairs()
        for loss in LOSSES
    ]
    return jobs


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(2)[np.asarray(labels, dtype=int)]


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(1) == labels).mean())


def run(cfg: WeakToStrongConfig, run: Run) -> dict[str, Any]:
    """Train every weak model, student and ceiling; write the tables and the plot."""
    missing = [m for m in cfg.models if m not in KINDS and not Path(m).expanduser().exists()]
    if missing:
        raise FileNotFoundError(f"models {missing} do not exist: give pretrained LM folders")
    if len(set(cfg.models)) != len(cfg.models):  # paths are compared here, once they exist
        raise ValueError(f"models lists the same LM twice: {cfg.models}")
    set_threads(cfg.threads)
    state = run.load_checkpoint() or {"records": [], "weak_probs": {}}
    records: list[dict[str, Any]] = state["records"]
    weak_probs: dict[str, dict[str, list]] = state["weak_probs"]
    done = {r["job"] for r in records}
    res = Resources(cfg.max_length, cfg.lm_layer, cfg.pooling)
    sizes: dict[str, dict[str, int]] = {}
    for dataset in cfg.datasets:
        for seed in cfg.seeds:
            data = load_data(cfg, dataset, seed)
            sizes[dataset] = {
                "n_train_weak": len(data.weak_train.texts),
                "n_train_strong": len(data.strong_train.texts),
                "n_test": len(data.test.texts),
            }
            todo = [j for j in plan(cfg, dataset, seed) if j.name not in done]
            tokenizer = _tokenizer(cfg, data) if todo and _needs_tokenizer(cfg) else None
            for job in todo:
                rec = _train_job(cfg, job, data, res, tokenizer, weak_probs)
                records.append(rec)
                run.log(len(records), _metrics(rec))
                run.save_checkpoint({"records": records, "weak_probs": weak_probs}, len(records))
    atomic_write_text(run.path("results.jsonl"), "".join(json_line(r) for r in records))
    table = pgr_table(cfg, records)
    atomic_write_json(run.path("pgr_table.json"), table)
    atomic_write_text(run.path("pgr_table.md"), markdown_table(table))
    plot_accuracy(table, run.path("accuracy.png"))
    return summarize(cfg, table, sizes)


def _needs_tokenizer(cfg: WeakToStrongConfig) -> bool:
    return any(m in ("tiny", "small", "base") for m in cfg.models)


def _tokenizer(cfg: WeakToStrongConfig, data: W2SData) -> Any:
    """The from-scratch sizes' BPE tokenizer, trained on the two train halves' texts."""
    from superalign.models.tokenizer import train_tokenizer

    return train_tokenizer(data.weak_train.texts + data.strong_train.texts, cfg.vocab_size)


def _train_job(
    cfg: WeakToStrongConfig,
    job: Job,
    data: W2SData,
    res: Resources,
    tokenizer: Any,
    weak_probs: dict[str, dict[str, list]],
) -> dict[str, Any]:
    """Train one model, score it on test; a weak model also stores its labels of B."""
    settings = TrainSettings(
        epochs=cfg.epochs,
        lr=cfg.lr,
        head_lr=cfg.head_lr,
        encoder_lr=cfg.encoder_lr,
        batch_size=cfg.batch_size,
        aux_coef=cfg.aux_coef,
        warmup_frac=cfg.warmup_frac,
        seed=job.seed,
        max_length=cfg.max_length,
        head_hidden=cfg.head_hidden,
    )
    clf: Classifier = build_classifier(
        job.model, settings, res, tokenizer, cfg.encoder_layers, cfg.bow_c
    )
    a, b, test = data.weak_train, data.strong_train, data.test
    rec: dict[str, Any] = {
        "job": job.name,
        "dataset": job.dataset,
        "seed": job.seed,
        "role": job.role,
        "model": job.model,
        "weak": job.weak,
        "loss": job.loss,
    }
    t0 = time.time()
    if job.role == "weak":
        losses = clf.fit(a.texts, one_hot(a.labels), "xent")
        labels_b = clf.predict_proba(b.texts)
        probs = clf.predict_proba(test.texts)
        weak_probs[_weak_key(job.dataset, job.seed, job.model)] = {
            "strong_train": labels_b.tolist(),
            "test": probs.tolist(),
        }
        rec["label_accuracy"] = accuracy(labels_b, b.labels)
    elif job.role == "ceiling":
        losses = clf.fit(b.texts, one_hot(b.labels), "xent")
        probs = clf.predict_proba(test.texts)
    else:
        weak = weak_probs[_weak_key(job.dataset, job.seed, job.weak)]
        targets = np.asarray(weak["strong_train"])
        if cfg.weak_labels == "hard":
            targets = one_hot(targets.argmax(1))
        losses = clf.fit(b.texts, targets, job.loss)
        probs = clf.predict_proba(test.texts)
        rec["agreement_with_weak"] = float(
            (probs.argmax(1) == np.asarray(weak["test"]).argmax(1)).mean()
        )
    correct = np.asarray(probs).argmax(1) == test.labels
    rec.update(
        accuracy=float(correct.mean()),
        correct=correct.astype(int).tolist(),
        loss_first=losses[0],
        loss_final=losses[-1],
        seconds=round(time.time() - t0, 2),
    )
    return rec


def _weak_key(dataset: str, seed: int, model: str) -> str:
    return f"{dataset}|{seed}|{model}"


def _metrics(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"job": rec["job"], "eval/accuracy": rec["accuracy"]}
    if "agreement_with_weak" in rec:
        out["eval/agreement_with_weak"] = rec["agreement_with_weak"]
    if "label_accuracy" in rec:
        out["weak/label_accuracy"] = rec["label_accuracy"]
    out["loss/train_first"], out["loss/train_final"] = rec["loss_first"], rec["loss_final"]
    return out


def json_line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True) + "\n"


# ---- tables and the plot ------------------------------------------------------------------------


def pgr_table(cfg: WeakToStrongConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset, (weak, strong) pair and loss: mean test accuracies over seeds, the
    gap (ceiling - weak) and PGR, each with its interval (seeds, then test items, resampled;
    :func:`~superalign.generalize.pgr.gap_recovered`). PGR is None where the gap is not
    resolved, with the reason in ``pgr_reason``."""
    correct = {
        (r["dataset"], r["seed"], r["role"], r["model"], r["weak"], r["loss"]): r["correct"]
        for r in records
    }
    rows, lab = [], cfg.labels()
    for dataset in cfg.datasets:
        for w, s in cfg.pairs():
            # [seeds, test items]: 1 where the model's prediction is right
            weak = np.array([correct[dataset, k, "weak", w, None, "xent"] for k in cfg.seeds])
            ceil = np.array([correct[dataset, k, "ceiling", s, None, "xent"] for k in cfg.seeds])
            for loss in LOSSES:
                w2s = np.array([correct[dataset, k, "w2s", s, w, loss] for k in cfg.seeds])
                row: dict[str, Any] = {
                    "dataset": dataset,
                    "weak": lab[w],
                    "strong": lab[s],
                    "loss": loss,
                }
                for name, values in (("weak_acc", weak), ("w2s_acc", w2s), ("ceiling_acc", ceil)):
                    est = mean_ci(values, cfg.n_boot)
                    row.update({name: est.value, f"{name}_low": est.low, f"{name}_high": est.high})
                g = gap_recovered(weak, w2s, ceil, cfg.n_boot)
                row.update(gap=g.gap.value, gap_low=g.gap.low, gap_high=g.gap.high)
                row.update(pgr=g.value, pgr_low=g.low, pgr_high=g.high, pgr_reason=g.reason)
                row.update(
                    n_test=g.n,
                    n_seeds=len(cfg.seeds),
                    per_seed={
                        "weak": weak.mean(1).tolist(),
                        "w2s": w2s.mean(1).tolist(),
                        "ceiling": ceil.mean(1).tolist(),
                    },
                )
                rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The PGR table as Markdown; where PGR is not reported, the reason in its place."""
    lines = [
        "| dataset | weak | strong | loss | weak acc | w2s acc | ceiling acc | gap [95% CI] "
        "| PGR [95% CI] |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        value = (
            f"{r['pgr']:.2f} [{r['pgr_low']:.2f}, {r['pgr_high']:.2f}]"
            if r["pgr"] is not None
            else f"not reported: {r['pgr_reason']}"
        )
        lines.append(
            f"| {r['dataset']} | {r['weak']} | {r['strong']} | {r['loss']} | {r['weak_acc']:.3f} "
            f"| {r['w2s_acc']:.3f} | {r['ceiling_acc']:.3f} "
            f"| {r['gap']:+.3f} [{r['gap_low']:+.3f}, {r['gap_high']:+.3f}] | {value} |"
        )
    n = sorted({r["n_test"] for r in rows})
    seeds = sorted({r["n_seeds"] for r in rows})
    lines.append(
        f"\nn_test = {', '.join(map(str, n))} per seed; seeds: {', '.join(map(str, seeds))}. "
        "PGR is reported only where the gap's interval excludes 0 and the gap exceeds 1/n_test."
    )
    return "\n".join(lines) + "\n"


def plot_accuracy(rows: list[dict[str, Any]], path: Any) -> None:
    """Grouped bars per dataset: for each (weak, strong) pair the weak supervisor, the student
    with each loss and the strong ceiling, with 95% bootstrap intervals over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    n_pairs = len(rows) // (len(datasets) * len(LOSSES))
    width = len(datasets) * (1.5 + 1.6 * n_pairs)
    fig, axes = plt.subplots(1, len(datasets), figsize=(width, 3.6), squeeze=False)
    bars = [
        ("weak", "weak_acc", "xent"),
        ("w2s (xent)", "w2s_acc", "xent"),
        ("w2s (conf)", "w2s_acc", "conf"),
        ("ceiling", "ceiling_acc", "xent"),
    ]
    for ax, dataset in zip(axes[0], datasets):
        by = {(r["weak"], r["strong"], r["loss"]): r for r in rows if r["dataset"] == dataset}
        pairs = list(dict.fromkeys((w, s) for w, s, _ in by))
        x = np.arange(len(pairs))
        for i, (label, key, loss) in enumerate(bars):
            rs = [by[w, s, loss] for w, s in pairs]
            mean = np.array([r[key] for r in rs])
            err = np.array(
                [[m - r[f"{key}_low"], r[f"{key}_high"] - m] for m, r in zip(mean, rs)]
            ).T
            ax.bar(x + (i - 1.5) * 0.2, mean, 0.2, yerr=err, capsize=2, label=label)
        ax.set_xticks(x, [f"{w}\u2192{s}" for w, s in pairs], fontsize=8)
        ax.set_ylim(0.4, 1.0)
        ax.set_title(dataset)
        ax.set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def summarize(
    cfg: WeakToStrongConfig, rows: list[dict[str, Any]], sizes: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """``summary.json``: the PGR table (without per-seed values), data sizes, and per loss the
    mean PGR over the rows where it is reported (``pgr_mean/{loss}``, with ``_n_rows`` of
    them); None, with ``pgr_mean/{loss}_reason``, where no row's gap is resolved."""
    compact = [{k: v for k, v in r.items() if k != "per_seed"} for r in rows]
    out: dict[str, Any] = {
        "setting": cfg.setting,
        "datasets": cfg.datasets,
        "models": cfg.labels(),
        "seeds": cfg.seeds,
        "data_sizes": sizes,
        "table": compact,
    }
    for loss in LOSSES:
        of_loss = [r for r in rows if r["loss"] == loss]
        values = [r["pgr"] for r in of_loss if r["pgr"] is not None]
        out[f"pgr_mean/{loss}"] = float(np.mean(values)) if values else None
        out[f"pgr_mean/{loss}_n_rows"] = len(values)
        if not values:
            out[f"pgr_mean/{loss}_reason"] = "no row's gap is resolved: " + "; ".join(
                f"{r['dataset']} {r['weak']}->{r['strong']}: {r['pgr_reason']}" for r in of_loss
            )
    out["files"] = ["results.jsonl", "pgr_table.json", "pgr_table.md", "accuracy.png"]
    return out
