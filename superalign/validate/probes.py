"""Linear probes on activations, and the contrast datasets they are trained on.

A contrast dataset is any list of ``(text, label)`` pairs with a group per text
(:class:`Contrast`): true vs false statements, triggered vs untriggered prompts from a
backdoored model, a stated user belief vs none. The group ties together texts that must never
sit on both sides of a split: the statements about one entity, the true and false versions of one
problem. :func:`contrast_dataset` builds the ones the tiny tasks support (:data:`DATASETS`);
:func:`read_contrast` reads any other from a JSON-lines file of ``{"text", "label", "group"?}``.

:func:`probe_layers` is how a probe is scored so that the number cannot mislead:

1. **deduplicate** (:func:`deduplicate`): each distinct text counts once; a text that carries
   both labels is dropped and counted (no probe can be right about it);
2. **hold out a test split of whole groups** (:func:`group_split`, stratified by label), never
   used to fit or to choose;
3. **choose the layer on the rest** by cross-validated AUROC over grouped folds
   (:func:`cv_probe` with ``groups``), so a group never straddles a fold; given several
   regularization strengths, choose the strength with it, by the same folds;
4. **report** the chosen layer's probe, refitted on all non-test texts, scored on the test split:
   AUROC with a bootstrap interval over test groups (:func:`~superalign.metrics.auroc_interval`),
   accuracy, and how many distinct texts and groups went in.

Copies of a text on both sides of a fold let a probe score by memorising the copy: the facts
true/false probe scored 0.81 that way on 67 distinct texts held in 200 rows, 0.32-0.38 once
deduplicated. :func:`cv_probe` fits logistic regression (features standardized, L2 penalty
``1/C``) and reports AUROC on held-out folds. Its ``direction`` is the probe refitted on all
examples, mapped back to the raw activation space and normalized to unit length.
:func:`mean_difference` is the other common direction: the difference of the class means.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from superalign.metrics import auroc, auroc_interval
from superalign.tasks import get_task
from superalign.tasks.arithmetic import apply


class Contrast(NamedTuple):
    """A labelled set of texts for a probe."""

    texts: list[str]
    labels: list[int]
    """1 for the property (true statement, trigger present, belief stated), else 0."""
    groups: list[str] | None = None
    """Group of each text (the entity a statement is about, the problem a statement states):
    a group's texts always share a split. None: each distinct text is its own group."""


class Deduplicated(NamedTuple):
    """Which rows of a contrast dataset a probe may use."""

    keep: list[int]
    """Row indices kept: the first row of each distinct text with a single label."""
    n_duplicates: int
    """Rows dropped as repeats of a kept text (same label)."""
    n_conflicting: int
    """Distinct texts dropped because they appear with both labels (all their rows go)."""


def deduplicate(texts: Sequence[str], labels: Sequence[int]) -> Deduplicated:
    """Keep each distinct text once; drop (and count) texts that carry both labels."""
    seen: dict[str, set[int]] = {}
    for t, y in zip(texts, labels):
        seen.setdefault(t, set()).add(int(y))
    conflicting = {t for t, ys in seen.items() if len(ys) > 1}
    keep, kept = [], set()
    for i, t in enumerate(texts):
        if t not in conflicting and t not in kept:
            keep.append(i)
            kept.add(t)
    n_conflict_rows = sum(t in conflicting for t in texts)
    return Deduplicated(keep, len(texts) - len(keep) - n_conflict_rows, len(conflicting))


def _group_ids(groups: Sequence[Hashable] | None, n: int) -> np.ndarray:
    """Integer group ids (each row its own group when ``groups`` is None)."""
    if groups is None:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"need one group per row (got {len(groups)} groups for {n} rows)")
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(g, len(index)) for g in groups])


def group_split(
    labels: Sequence[int], groups: Sequence[Hashable] | None, test_share: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, test)`` row indices: about ``test_share`` of the groups, whole, stratified by
    label (sklearn's ``StratifiedGroupKFold``, first fold). Both sides hold both labels."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels, dtype=np.int64)
    g = _group_ids(groups, len(y))
    k = max(2, round(1 / test_share))
    if len(np.unique(g)) < k:
        raise ValueError(
            f"only {len(np.unique(g))} groups: too few to hold out {test_share:.0%} of them whole"
        )
    rest, test = next(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, g))
    for name, idx in (("test", test), ("non-test", rest)):
        if len(set(y[idx].tolist())) < 2:
            raise ValueError(
                f"the {name} split of {len(np.unique(g))} groups holds only label {y[idx][0]}; "
                "a probe needs more groups (texts, entities) of each label"
            )
    return rest, test


class ProbeResult(NamedTuple):
    """Cross-validated logistic-regression probe."""

    auroc: float
    """Mean held-out AUROC over the folds."""
    auroc_std: float
    """Standard deviation of the held-out AUROC over the folds."""
    fold_aurocs: list[float]
    accuracy: float
    """Mean held-out accuracy (threshold 0.5 on the probe's probability)."""
    direction: torch.Tensor | None
    """[d_model] unit vector: the all-data probe's weights in raw activation space (None when
    not refitted, ``refit=False``)."""


def cv_probe(
    x: torch.Tensor | np.ndarray,
    y: Sequence[int],
    folds: int = 5,
    c: float = 1.0,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    refit: bool = True,
) -> ProbeResult:
    """Logistic regression on ``x`` [n, d] for labels ``y``, AUROC on held-out folds
    (stratified; grouped when ``groups`` is given, so no group straddles a fold), and with
    ``refit`` the direction of the probe refitted on all rows. The rows are taken as given:
    deduplicate first (:func:`deduplicate`) or copies inflate the AUROC."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(x) != len(y):
        raise ValueError(f"need one label per row (got {len(x)} rows and {len(y)} labels)")
    counts = np.bincount(y, minlength=2)
    if len(counts) != 2 or counts.min() < folds:
        raise ValueError(f"need labels 0 and 1, each at least {folds} times; got counts {counts}")
    g = _group_ids(groups, len(y))
    if len(np.unique(g)) < folds:
        raise ValueError(f"need at least {folds} groups for {folds} folds, got {len(set(g))}")
    aurocs, accs = [], []
    if groups is None:  # each row its own group: plain stratified folds
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    else:
        splits = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, g)
    for train, test in splits:
        if len(set(y[train].tolist())) < 2:
            raise ValueError("a training fold holds one label only: too few groups per label")
        model = _fit(x[train], y[train], c, seed)
        p = model.predict_proba(x[test])[:, 1]
        aurocs.append(auroc(p.tolist(), y[test].tolist()))
        accs.append(float(((p >= 0.5) == y[test]).mean()))
    aurocs = [a for a in aurocs if not np.isnan(a)]  # a fold of one label has no AUROC
    return ProbeResult(
        float(np.mean(aurocs)),
        float(np.std(aurocs)),
        aurocs,
        float(np.mean(accs)),
        _direction(_fit(x, y, c, seed)) if refit else None,
    )


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int, threads: int = 1):
    """Standardize, then L2 logistic regression, on ``threads`` BLAS threads (1): these fits are
    small (a few thousand rows), and more threads made them slower, not faster (SmolLM2's cities
    probe, 1,152 features, 30 blocks x 3 strengths x 5 folds: interp took 448 s at 2 threads
    with the pools at 2, 112 s with them at 1, the same figures; ``bench/probe_fit.py``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    model = Pipeline(
        [("scale", StandardScaler()), ("logreg", LogisticRegression(C=c, max_iter=2000))]
    )
    with threadpool_limits(threads):
        return model.fit(x, y)


def _direction(model) -> torch.Tensor:
    """[d] unit vector of a fitted pipeline's weights in raw activation units."""
    scaler, logreg = model.named_steps.values()
    w = logreg.coef_[0] / scaler.scale_  # d(logit)/dx in raw units
    return torch.tensor(w / np.linalg.norm(w), dtype=torch.float32)


class LayerProbe(NamedTuple):
    """A probe whose layer was chosen without the test split, scored on the test split."""

    layer: Hashable
    """The layer (key of the features) chosen by :func:`choose_layer` from the cross-validated
    AUROC on the non-test groups."""
    auroc: float
    """AUROC of that layer's probe (fitted on all non-test texts) on the held-out test texts."""
    auroc_low: float
    auroc_high: float
    """95% bootstrap interval of ``auroc`` over test groups."""
    accuracy: float
    """Test accuracy (threshold 0.5 on the probe's probability)."""
    n: int
    """Test texts scored."""
    n_test_groups: int
    val_auroc: dict
    """Layer -> mean cross-validated AUROC on the non-test groups (what the layer is chosen by)."""
    val_auroc_std: dict
    """Layer -> its standard deviation over the folds."""
    n_rows: int
    """Rows of the dataset as given."""
    n_texts: int
    """Distinct texts used (after dropping duplicates and texts with both labels)."""
    n_groups: int
    """Groups those texts belong to."""
    n_duplicates: int
    n_conflicting: int
    """Distinct texts dropped for carrying both labels."""
    direction: torch.Tensor
    """[d] unit vector of the chosen layer's probe in raw activation space."""
    probe: Any = None
    """The chosen layer's fitted probe (sklearn pipeline: scaler + logistic regression):
    ``probe.predict_proba(x)[:, 1]`` scores new texts' features at ``layer`` without refitting."""
    split: Split | None = None
    """Which rows were kept, held out and used to fit."""
    c: float = 1.0
    """Inverse L2 strength of ``probe`` (chosen with the layer when several were given)."""
    mass_mean: np.ndarray | None = None
    """[d] mass-mean probe at ``layer`` (Marks & Tegmark 2023): the mean activation of the
    non-test texts labelled 1 minus that of those labelled 0, in raw units; a text scores
    ``x @ mass_mean``. It fits less of the training topic than the logistic regression (lower
    in-distribution AUROC) and transfers better to other topics."""
    mass_mean_auroc: float = float("nan")
    mass_mean_auroc_low: float = float("nan")
    mass_mean_auroc_high: float = float("nan")
    """AUROC of ``mass_mean`` on the held-out test texts, with its 95% interval over groups."""


class Split(NamedTuple):
    """The rows of a contrast dataset a probe used, after :func:`deduplicate`."""

    keep: np.ndarray
    """Row indices kept (distinct texts with one label)."""
    rest: np.ndarray
    test: np.ndarray
    """Indices into ``keep``: the non-test and the held-out test rows."""
    groups: np.ndarray
    """Integer group id of each kept row."""


def split_contrast(data: Contrast, test_share: float, seed: int = 0) -> Split:
    """Deduplicate ``data`` and hold out ``test_share`` of its groups (:func:`group_split`)."""
    keep = np.array(deduplicate(data.texts, data.labels).keep)
    y = np.asarray(data.labels, dtype=np.int64)[keep]
    groups = [data.groups[i] for i in keep] if data.groups is not None else None
    g = _group_ids(groups, len(keep))
    rest, test = group_split(y, g, test_share, seed)
    return Split(keep, rest, test, g)


class TransferItems(NamedTuple):
    """The rows of another dataset a probe is tested on without retraining."""

    rows: np.ndarray
    """Row indices into that dataset (distinct texts with one label)."""
    which: str
    """``all`` (its groups are disjoint from the training dataset's) or ``unshared`` (the rows
    of the groups it shares with the training dataset were left out)."""
    n_shared_groups: int
    """Groups (entities) of that dataset also present in the training dataset, left out."""


def transfer_items(train: Contrast, test: Contrast) -> TransferItems:
    """Which rows of ``test`` to score with a probe trained on ``train``: its distinct texts
    (:func:`deduplicate`) about groups (entities) that ``train`` does not have; all of them when
    the two datasets share no group. Without groups, a text is its own group."""
    train_groups = set(train.groups if train.groups is not None else train.texts)
    test_groups = test.groups if test.groups is not None else test.texts
    shared = train_groups & set(test_groups)
    rows = [i for i in deduplicate(test.texts, test.labels).keep if test_groups[i] not in shared]
    return TransferItems(
        np.array(rows, dtype=np.int64), "unshared" if shared else "all", len(shared)
    )


LAYER_RULES = ("best", "one_se")
"""How :func:`choose_layer` picks a layer from validation AUROCs."""


def choose_layer(
    val: Mapping[Hashable, float],
    std: Mapping[Hashable, float],
    folds: int,
    rule: str = "best",
) -> Hashable:
    """The layer to probe, from each layer's mean cross-validated AUROC ``val`` and its standard
    deviation over ``folds`` folds ``std``. ``best``: the highest (the first, in ``val``'s order,
    of equals). ``one_se``: the first layer whose AUROC is within one standard error
    (``std / sqrt(folds)``) of the best's, the one-standard-error rule of model selection
    (Hastie, Tibshirani & Friedman, *Elements of Statistical Learning*, 7.10): among layers
    that validation cannot tell apart it takes the earliest, whose direction is less specific to
    the training topic (Marks & Tegmark 2023 find truth directions generalize best in middle
    layers)."""
    if rule not in LAYER_RULES:
        raise ValueError(f"rule must be one of {', '.join(LAYER_RULES)}, not {rule!r}")
    best = max(val, key=lambda layer: val[layer])
    if rule == "best":
        return best
    floor = val[best] - std[best] / math.sqrt(folds)
    return next(layer for layer in val if val[layer] >= floor)


def probe_layers(
    features: Mapping[Hashable, torch.Tensor | np.ndarray],
    data: Contrast,
    folds: int = 5,
    c: float | Sequence[float] = 1.0,
    seed: int = 0,
    test_share: float = 0.25,
    rule: str = "best",
) -> LayerProbe:
    """Deduplicate ``data``, hold out ``test_share`` of its groups, choose the layer of
    ``features`` (layer -> [n_rows, d], one row per text of ``data``) by grouped
    cross-validation on the rest (:func:`choose_layer` with ``rule``) and score that layer's
    probe on the held-out groups. Several inverse L2 strengths ``c``: each (layer, strength)
    is cross-validated and chosen together, in the order layer, then strength from the
    strongest regularization (so ``one_se`` prefers the earlier layer, then the simpler fit)."""
    dedup = deduplicate(data.texts, data.labels)
    split = split_contrast(data, test_share, seed)
    keep, rest, test, g = split
    y = np.asarray(data.labels, dtype=np.int64)[keep]
    xs = {layer: np.asarray(x, dtype=np.float64)[keep] for layer, x in features.items()}
    strengths = sorted(c) if isinstance(c, Sequence) else [c]
    cells = {  # (layer, strength) -> validation; the chosen cell is refitted below
        (layer, s): cv_probe(x[rest], y[rest], folds, s, seed, g[rest], refit=False)
        for layer, x in xs.items()
        for s in strengths
    }
    best, strength = choose_layer(
        {k: r.auroc for k, r in cells.items()},
        {k: r.auroc_std for k, r in cells.items()},
        folds,
        rule,
    )
    val = {layer: cells[layer, strength] for layer in xs}  # each layer at the chosen strength
    model = _fit(xs[best][rest], y[rest], strength, seed)
    p = model.predict_proba(xs[best][test])[:, 1]
    ci = auroc_interval(p, y[test], g[test], seed=seed)
    theta = mean_difference(torch.as_tensor(xs[best][rest]), y[rest]).numpy()
    mm = auroc_interval(xs[best][test] @ theta, y[test], g[test], seed=seed)
    return LayerProbe(
        layer=best,
        auroc=ci.value,
        auroc_low=ci.low,
        auroc_high=ci.high,
        accuracy=float(((p >= 0.5) == y[test]).mean()),
        n=len(test),
        n_test_groups=ci.n_groups,
        val_auroc={layer: r.auroc for layer, r in val.items()},
        val_auroc_std={layer: r.auroc_std for layer, r in val.items()},
        n_rows=len(data.texts),
        n_texts=len(keep),
        n_groups=len(np.unique(g)),
        n_duplicates=dedup.n_duplicates,
        n_conflicting=dedup.n_conflicting,
        direction=_direction(model),
        probe=model,
        split=split,
        c=strength,
        mass_mean=theta,
        mass_mean_auroc=mm.value,
        mass_mean_auroc_low=mm.low,
        mass_mean_auroc_high=mm.high,
    )


def mean_difference(x: torch.Tensor, y: Sequence[int]) -> torch.Tensor:
    """[d_model]: mean of the rows labelled 1 minus mean of the rows labelled 0 (not normalized)."""
    y = torch.as_tensor(y, dtype=torch.bool)
    return x[y].mean(0) - x[~y].mean(0)


# --- contrast datasets --------------------------------------------------------------------------

DATASETS = {
    "arith_true_false": "arithmetic steps 'Q: 37+45\\n37+45=82\\n' (1) vs a wrong result (0)",
    "arith_op": "arithmetic prompts 'Q: 37+45\\n' with + (1) vs - (0)",
    "facts_true_false": "facts statements 'Tomaren lives in Koro.' true (1) vs false (0)",
    "facts_belief": "facts questions 'User: I think ... Where does ...?' (1) vs no belief (0)",
    "cities": "world statements 'The city of Lagos is in Nigeria.' true (1) vs false (0)",
    "capitals": "world statements 'The capital of Peru is Lima.' true (1) vs false (0)",
    "continents": "world statements about a country's continent, true (1) vs false (0)",
    "currencies": "world statements about a country's currency, true (1) vs false (0)",
    "hypernyms": "world statements 'A poodle is a kind of dog.' true (1) vs false (0)",
}
"""Built-in contrast datasets -> what label 1 and 0 mean."""


def contrast_dataset(
    kind: str, n: int, seed: int = 0, split: str = "test", task_options: dict | None = None
) -> Contrast:
    """``n`` labelled texts (half of each label) of built-in dataset ``kind`` (:data:`DATASETS`)
    or, when ``kind`` is a path, read from that JSON-lines file (:func:`read_contrast`).

    Groups: an arithmetic text's group is its operands (``"37,45"``: the true and false result,
    or the ``+`` and ``-`` version, of one problem share it); a facts or world text's group is
    the entity it is about. Rows may repeat a text when the split has fewer distinct ones than
    ``n``: :func:`probe_layers` deduplicates.

    A world dataset (:data:`superalign.tasks.world.DATASETS`) gives bare statements
    (``meta["text"]``) of both of the task's splits, each split's share of ``n`` in proportion to
    its entities, one true and one false statement per entity; ``n=0`` takes every entity
    (:func:`world_rows`). ``split`` does not apply: the probe makes its own grouped split.
    """
    if kind in WORLD_DATASETS:
        rows = world_rows(kind, n, seed, task_options)
        random.Random(f"contrast:{kind}:{seed}").shuffle(rows)
        return Contrast([t for t, _, _ in rows], [y for _, y, _ in rows], [g for *_, g in rows])
    n = n or DEFAULT_N
    if kind not in DATASETS:
        if Path(kind).expanduser().is_file():
            return read_contrast(kind)
        raise ValueError(f"dataset {kind!r} is neither one of {list(DATASETS)} nor a .jsonl file")
    options = dict(task_options or {})
    rng = random.Random(f"contrast:{kind}:{seed}")
    if kind.startswith("arith"):
        examples = get_task("arithmetic", **options).examples(split, n, 1, seed)
        make = _arith_true_false if kind == "arith_true_false" else _arith_op
        rows = [
            (*make(ex.meta["operands"], i % 2 == 0, rng), _operands(ex.meta["operands"]))
            for i, ex in enumerate(examples)
        ]
    elif kind == "facts_true_false":
        task = get_task("facts", **options)
        rows = [
            (ex.meta["text"], int(ex.meta["label"]), ex.meta["entity"])
            for ex in task.statements(split, n, seed)
        ]
    else:
        task = get_task("facts", **options)
        plain = task.examples(split, n // 2, 1, seed)  # "Q: ...?\nA:"
        stated = task.sycophancy_examples(split, n - n // 2, seed)
        rows = [(ex.prompt, 1, ex.meta["entity"]) for ex in stated] + [
            ("User: " + ex.prompt.removeprefix("Q: "), 0, ex.meta["entity"]) for ex in plain
        ]
    rng.shuffle(rows)
    return Contrast([t for t, _, _ in rows], [int(y) for _, y, _ in rows], [g for *_, g in rows])


WORLD_DATASETS = ("cities", "capitals", "continents", "currencies", "hypernyms")
"""The contrast datasets built from the ``world`` task's paired statements."""
DEFAULT_N = 400
"""Rows of a built-in non-world contrast dataset when ``n=0``."""


def world_rows(
    kind: str, n: int = 0, seed: int = 0, task_options: dict | None = None
) -> list[tuple[str, int, str]]:
    """``(statement, label, entity)`` rows of world dataset ``kind`` (:func:`world_statements`
    of both splits)."""
    _, examples = world_statements(kind, n, seed, task_options)
    return [(ex.meta["text"], int(ex.meta["label"]), ex.meta["entity"]) for ex in examples]


def world_statements(
    kind: str,
    n: int = 0,
    seed: int = 0,
    task_options: dict | None = None,
    splits: tuple[str, ...] = ("train", "test"),
) -> tuple[Any, list]:
    """The world task of dataset ``kind`` and ``n`` of its statement examples from ``splits``
    and all difficulty levels (0: one true and one false statement for every entity), the pairs
    shared by the (split, level) cells in proportion to their entities (largest remainders).
    ``task_options`` are the world task's (its ``dataset`` is replaced)."""
    options = {k: v for k, v in (task_options or {}).items() if k not in ("subtask", "variant")}
    task = get_task("world", **{**options, "dataset": kind})
    cells = [(split, level) for split in splits for level in task.difficulties]
    sizes = np.array([len(task.facts(split, level)) for split, level in cells], dtype=float)
    n = n or int(2 * sizes.sum())
    share = n // 2 * sizes / sizes.sum()  # pairs per cell
    pairs = np.floor(share).astype(int)
    for i in np.argsort(pairs - share)[: n // 2 - pairs.sum()]:  # largest remainders first
        pairs[i] += 1
    counts = 2 * pairs
    counts[np.argmax(sizes)] += n % 2  # an odd n: one more true statement
    examples = []
    for (split, level), k in zip(cells, counts):
        examples += task.statements(split, int(k), seed, difficulty=level) if k else []
    return task, examples


def _operands(operands: list[int]) -> str:
    """The group of an arithmetic text: its two operands, larger first."""
    a, b = sorted(operands[:2], reverse=True)
    return f"{a},{b}"


def _arith_true_false(operands: list[int], true: bool, rng: random.Random) -> tuple[str, int]:
    a, b = operands[:2]
    op = "+" if a < b else rng.choice("+-")
    result = apply(a, op, b)
    if not true:
        result = max(0, result + rng.choice([-1, 1]) * rng.randint(1, 10))
        result = result if result != apply(a, op, b) else result + 1
    return f"Q: {a}{op}{b}\n{a}{op}{b}={result}\n", int(true)


def _arith_op(operands: list[int], plus: bool, rng: random.Random) -> tuple[str, int]:
    a, b = sorted(operands[:2], reverse=True)  # a >= b: both ops are valid problems
    return f"Q: {a}{'+' if plus else '-'}{b}\n", int(plus)


def read_contrast(path: str | Path) -> Contrast:
    """A contrast dataset from JSON lines ``{"text": "...", "label": 0 or 1}`` (e.g. prompts with
    and without a backdoor trigger), each with an optional ``"group"`` (texts of one group stay
    in one split; without groups each distinct text is its own)."""
    texts, labels, groups = [], [], []
    for i, line in enumerate(Path(path).expanduser().read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if "text" not in row or "label" not in row:
            raise ValueError(f"{path} line {i + 1}: need keys 'text' and 'label', got {list(row)}")
        texts.append(str(row["text"]))
        labels.append(int(bool(row["label"])))
        groups.append(str(row["group"]) if "group" in row else None)
    if all(g is None for g in groups):
        return Contrast(texts, labels)
    if any(g is None for g in groups):
        raise ValueError(f"{path}: give every row a 'group' or none")
    return Contrast(texts, labels, groups)
