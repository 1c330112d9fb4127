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
  fact_checker, misconceptions); text = the example's prompt, label = ``meta["label"]``, each
  part balanced between the labels. Default ladder: bag-of-words logistic regression < MiniLM
  with a linear head. Needs your copy of BIG-bench (``task_options: {path: ...}`` or the
  cached archive; nothing is downloaded, see docs/tasks/bigbench.md).

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
    Classifier,
    Resources,
    TrainSettings,
    build_classifier,
)
from superalign.generalize.pgr import gap_recovered, mean_ci
from superalign.runs import Run, atomic_write_json, atomic_write_text, read_json
from superalign.tasks import get_task
from superalign.tasks.arithmetic import corrupt

DEFAULT_DATASETS = {"verifiable": ["arithmetic-d1"], "bigbench": ["vitaminc", "strategyqa"]}
DEFAULT_MODELS = {"bigbench": ["bow", "minilm"]}
BIGBENCH_BINARY = ("vitaminc", "strategyqa", "fact_checker", "misconceptions")
"""BIG-bench tasks whose examples carry a binary ``meta["label"]``."""
LOSSES = ("xent", "conf")


@dataclass
class WeakToStrongConfig:
    """Weak-to-strong generalization: weak labels, strong students, gold ceilings, PGR."""

    setting: Literal["verifiable", "bigbench"] = "verifiable"
    """``verifiable``: "is this arithmetic solution correct?"; ``bigbench``: BIG-bench binary
    tasks with reference labels."""
    datasets: list[str] = field(default_factory=list)
    """verifiable: ``arithmetic-d{k}`` (k: the task's difficulty level); bigbench: task names
    among vitaminc, strategyqa, fact_checker, misconceptions. Empty: the setting's default
    (``[arithmetic-d1]``; ``[vitaminc, strategyqa]``)."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """bigbench: options of :class:`~superalign.tasks.bigbench.BigBenchTask`, e.g. ``{path:
    ~/BIG-bench}`` (your copy: a folder of task folders, a clone or a tarball). Unused by
    verifiable."""
    models: list[str] = field(default_factory=list)
    """Classifier ladder, weakest first: each pair (i < j) is a (weak, strong) pair. Each entry is
    a kind (bow, tiny, small, base, minilm, smollm2; bow only first) or the path of a pretrained
    causal LM (a ``pretrain`` run folder), used as a frozen verifier with a linear head on its
    log-probs of the solution. Empty: ``[bow, minilm]`` for bigbench; verifiable needs LMs."""
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
    """Learning rate of linear heads on frozen (standardised) features: minilm, smollm2, LM
    verifiers. Adam moves every weight about this much per step, so few features (the LM
    verifiers' 3) want more (1e-2) than many (MiniLM's 384)."""
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

        self.datasets = list(self.datasets) or list(DEFAULT_DATASETS[self.setting])
        if not self.models and self.setting == "verifiable":
            raise ConfigError(
                "the verifiable setting needs models: pretrained arithmetic LMs (pretrain run "
                "folders), weakest first, as pipelines/w2s.yaml builds them"
            )
        self.models = list(self.models) or list(DEFAULT_MODELS[self.setting])
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


def balanced_parts(examples: list[Any], sizes: list[int], rng: random.Random) -> list[list[Any]]:
    """Disjoint parts of the labelled ``examples``, each with half of each label and at most its
    size (less when a label runs out), shuffled."""
    by_label = [[ex for ex in examples if ex.meta.get("label") is y] for y in (True, False)]
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
        [ex.prompt for ex in examples], np.array([int(ex.meta["label"]) for ex in examples])
    )


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
    task = get_task(f"bigbench:{dataset}", **cfg.task_options)
    rng = random.Random(f"w2s:bigbench:{dataset}:{seed}")
    a, b = balanced_parts(task.all_examples("train"), [na, nb], rng)
    (test,) = balanced_parts(task.all_examples("test"), [cfg.n_test], rng)
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
    res = Resources(cfg.max_length)
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
