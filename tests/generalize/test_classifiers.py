"""The auxiliary confidence loss against a slow reference, and the classifiers' training."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from superalign.generalize.classifiers import (
    BowClassifier,
    FeatureClassifier,
    TrainSettings,
    aux_weight,
    confidence_loss,
    harden,
    xent_loss,
)


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's and torch's default)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    return v[lo] + (pos - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def _reference_loss(logits: list[list[float]], weak: list[list[float]], alpha: float) -> float:
    """Burns et al.'s loss written out one example at a time."""
    probs = [
        [math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))]
        for a, b in logits
    ]
    prior = sum(w[1] for w in weak) / len(weak)
    threshold = _quantile([p[0] for p in probs], prior)
    total = 0.0
    for (a, b), w, p in zip(logits, weak, probs):
        hard = [1.0, 0.0] if p[0] >= threshold else [0.0, 1.0]
        target = [(1 - alpha) * w[c] + alpha * hard[c] for c in range(2)]
        log_z = math.log(math.exp(a) + math.exp(b))
        total -= target[0] * (a - log_z) + target[1] * (b - log_z)
    return total / len(logits)


def test_confidence_loss_matches_the_reference():
    gen = torch.Generator().manual_seed(0)
    for batch in (2, 7, 32):
        for alpha in (0.0, 0.3, 0.75, 1.0):
            logits = torch.randn(batch, 2, generator=gen) * 2
            p1 = torch.rand(batch, generator=gen)
            weak = torch.stack([1 - p1, p1], 1)
            got = confidence_loss(logits, weak, alpha).item()
            want = _reference_loss(logits.tolist(), weak.tolist(), alpha)
            assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), (batch, alpha)


def test_confidence_loss_reduces_to_cross_entropy_and_pulls_towards_own_predictions():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.2, 0.1]], requires_grad=True)
    weak = torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.5, 0.5], [0.4, 0.6]])
    assert torch.allclose(confidence_loss(logits, weak, 0.0), F.cross_entropy(logits, weak))
    assert torch.allclose(xent_loss(logits, weak), F.cross_entropy(logits, weak))
    # alpha = 1: only the student's hardened predictions count; the gradient makes it more sure
    confidence_loss(logits, weak, 1.0).backward()
    assert logits.grad[0, 0] < 0 and logits.grad[1, 1] < 0


def test_hardening_keeps_the_weak_class_balance():
    probs = torch.linspace(0.05, 0.95, 20)
    probs = torch.stack([1 - probs, probs], 1)  # P(class 1) rises along the batch
    for prior in (0.25, 0.5, 0.8):
        hard = harden(probs, torch.tensor(prior))
        assert abs(hard[:, 1].mean().item() - prior) <= 1 / 20 + 1e-6
        assert hard[-1, 1] == 1 and hard[0, 0] == 1  # the most confident keep their class


def test_aux_weight_warms_up_linearly():
    assert aux_weight(0.0, 0.5, 0.2) == 0.0
    assert math.isclose(aux_weight(0.1, 0.5, 0.2), 0.25)
    assert aux_weight(0.2, 0.5, 0.2) == 0.5 == aux_weight(0.9, 0.5, 0.2)
    assert aux_weight(0.0, 0.5, 0.0) == 0.5


def test_feature_head_learns_a_linear_rule_and_bow_learns_words():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)) * [1.0, 10.0, 0.1] + [0, 5, 0]  # unscaled features
    y = (x[:, 0] + 0.05 * x[:, 1] > 0.25).astype(int)
    feats = {str(i): torch.tensor(v, dtype=torch.float32) for i, v in enumerate(x)}
    clf = FeatureClassifier(
        lambda t: torch.stack([feats[s] for s in t]), TrainSettings(epochs=5, head_lr=1e-2)
    )
    texts = [str(i) for i in range(400)]
    losses = clf.fit(texts[:300], np.eye(2)[y[:300]], "conf")
    assert losses[-1] < losses[0]
    assert (clf.predict_proba(texts[300:]).argmax(1) == y[300:]).mean() > 0.9

    words = ["good fine great", "bad awful poor"]
    texts = [words[i % 2].split()[i % 3] + " thing" for i in range(60)]
    labels = np.array([1 - i % 2 for i in range(60)])
    bow = BowClassifier()
    bow.fit(texts, np.eye(2)[labels], "xent")
    assert (bow.predict_proba(["great thing", "awful thing"]).argmax(1) == [1, 0]).all()
