"""Linear probes on activations, and the contrast datasets they are trained on.

A contrast dataset is any list of ``(text, label)`` pairs (:class:`Contrast`): true vs false
statements, triggered vs untriggered prompts from a backdoored model, a stated user belief vs
none. :func:`contrast_dataset` builds the ones the tiny tasks support (:data:`DATASETS`);
:func:`read_contrast` reads any other from a JSON-lines file of ``{"text": ..., "label": ...}``.

:func:`cv_probe` fits logistic regression (features standardized, L2 penalty ``1/C``) and reports
AUROC on held-out folds of a stratified k-fold split: each example is scored only by the probe
that did not see it. Its ``direction`` is the probe refitted on all examples, mapped back to the
raw activation space and normalized to unit length. :func:`mean_difference` is the other common
direction: the difference of the class means.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from superalign.metrics import auroc
from superalign.tasks import get_task
from superalign.tasks.arithmetic import apply


class Contrast(NamedTuple):
    """A labelled set of texts for a probe."""

    texts: list[str]
    labels: list[int]
    """1 for the property (true statement, trigger present, belief stated), else 0."""


class ProbeResult(NamedTuple):
    """Cross-validated logistic-regression probe."""

    auroc: float
    """Mean held-out AUROC over the folds."""
    auroc_std: float
    """Standard deviation of the held-out AUROC over the folds."""
    fold_aurocs: list[float]
    accuracy: float
    """Mean held-out accuracy (threshold 0.5 on the probe's probability)."""
    direction: torch.Tensor
    """[d_model] unit vector: the all-data probe's weights in raw activation space."""


def cv_probe(
    x: torch.Tensor | np.ndarray,
    y: Sequence[int],
    folds: int = 5,
    c: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """Logistic regression on ``x`` [n, d] for labels ``y``, AUROC on held-out folds."""
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(x) != len(y):
        raise ValueError(f"need one label per row (got {len(x)} rows and {len(y)} labels)")
    counts = np.bincount(y, minlength=2)
    if len(counts) != 2 or counts.min() < folds:
        raise ValueError(f"need labels 0 and 1, each at least {folds} times; got counts {counts}")
    aurocs, accs = [], []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = _fit(x[train], y[train], c, seed)
        p = model.predict_proba(x[test])[:, 1]
        aurocs.append(auroc(p.tolist(), y[test].tolist()))
        accs.append(float(((p >= 0.5) == y[test]).mean()))
    full = _fit(x, y, c, seed)
    scaler, logreg = full.named_steps.values()
    w = logreg.coef_[0] / scaler.scale_  # d(logit)/dx in raw units
    direction = torch.tensor(w / np.linalg.norm(w), dtype=torch.float32)
    return ProbeResult(
        float(np.mean(aurocs)), float(np.std(aurocs)), aurocs, float(np.mean(accs)), direction
    )


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    model = Pipeline(
        [("scale", StandardScaler()), ("logreg", LogisticRegression(C=c, max_iter=2000))]
    )
    return model.fit(x, y)


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
}
"""Built-in contrast datasets -> what label 1 and 0 mean."""


def contrast_dataset(
    kind: str, n: int, seed: int = 0, split: str = "test", task_options: dict | None = None
) -> Contrast:
    """``n`` labelled texts (half of each label) of built-in dataset ``kind`` (:data:`DATASETS`)
    or, when ``kind`` is a path, read from that JSON-lines file (:func:`read_contrast`)."""
    if kind not in DATASETS:
        if Path(kind).expanduser().is_file():
            return read_contrast(kind)
        raise ValueError(f"dataset {kind!r} is neither one of {list(DATASETS)} nor a .jsonl file")
    options = dict(task_options or {})
    rng = random.Random(f"contrast:{kind}:{seed}")
    if kind.startswith("arith"):
        examples = get_task("arithmetic", **options).examples(split, n, 1, seed)
        make = _arith_true_false if kind == "arith_true_false" else _arith_op
        pairs = [make(ex.meta["operands"], i % 2 == 0, rng) for i, ex in enumerate(examples)]
    elif kind == "facts_true_false":
        task = get_task("facts", **options)
        pairs = [(ex.meta["text"], int(ex.meta["label"])) for ex in task.statements(split, n, seed)]
    else:
        task = get_task("facts", **options)
        plain = [ex.prompt for ex in task.examples(split, n // 2, 1, seed)]  # "Q: ...?\nA:"
        stated = [ex.prompt for ex in task.sycophancy_examples(split, n - n // 2, seed)]
        pairs = [(t, 1) for t in stated] + [("User: " + t.removeprefix("Q: "), 0) for t in plain]
    rng.shuffle(pairs)
    return Contrast([t for t, _ in pairs], [int(label) for _, label in pairs])


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
    and without a backdoor trigger)."""
    texts, labels = [], []
    for i, line in enumerate(Path(path).expanduser().read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if "text" not in row or "label" not in row:
            raise ValueError(f"{path} line {i + 1}: need keys 'text' and 'label', got {list(row)}")
        texts.append(str(row["text"]))
        labels.append(int(bool(row["label"])))
    return Contrast(texts, labels)
