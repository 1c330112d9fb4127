"""CCS: the loss against its definition, a planted truth direction recovered without labels
(up to the sign, which the validation split fixes), and the layer that carries it chosen."""

import numpy as np
import pytest
import torch

from superalign.metrics import auroc
from superalign.validate.ccs import (
    CCSProbe,
    ccs_layers,
    ccs_loss,
    ccs_scores,
    contrast_pair,
    fit_ccs,
    normalize_pairs,
    orient,
)
from superalign.validate.probes import Contrast, split_contrast


def planted_pairs(n=400, d=24, noise=0.5, seed=0):
    """Contrast-pair features in which a direction ``v`` says whether the appended answer is
    right: ``x+`` holds ``+v`` for a true statement and ``-v`` for a false one, ``x-`` the
    opposite; each side also carries a large offset of its own (the answer word) and noise."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    v /= v.norm()
    y = torch.randint(0, 2, (n,), generator=g)
    s = (2 * y - 1).float()[:, None]  # +1 true, -1 false
    x_pos = 3 * s * v + noise * torch.randn(n, d, generator=g) + 5.0
    x_neg = -3 * s * v + noise * torch.randn(n, d, generator=g) - 2.0
    return x_pos, x_neg, y.tolist(), v


def test_ccs_loss_is_consistency_plus_confidence():
    p = torch.tensor([[0.9], [0.5], [0.2]])
    q = torch.tensor([[0.1], [0.5], [0.6]])
    expected = ((0.9 - 0.9) ** 2 + 0.1**2 + 0 + 0.5**2 + (0.2 - 0.4) ** 2 + 0.2**2) / 3
    assert ccs_loss(p, q).item() == pytest.approx(expected)
    assert ccs_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == 0.0  # consistent, sure


def test_contrast_pair_and_normalization():
    assert contrast_pair("Lagos is in Nigeria.") == (
        "True or false: Lagos is in Nigeria.\nA: True",
        "True or false: Lagos is in Nigeria.\nA: False",
    )
    x_pos, x_neg, _, _ = planted_pairs(n=50)
    a, b = normalize_pairs(x_pos, x_neg)
    assert torch.allclose(a.mean(0), torch.zeros(a.shape[1]), atol=1e-5)
    assert torch.allclose(b.std(0), torch.ones(b.shape[1]), atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ccs_recovers_a_planted_direction_without_labels(seed):
    x_pos, x_neg, y, v = planted_pairs(seed=seed)
    xp, xn = normalize_pairs(x_pos, x_neg)
    probe = fit_ccs(xp[:300], xn[:300], restarts=4, steps=300, lr=1e-2, seed=seed)
    cosine = torch.dot(probe.weight / probe.weight.norm(), v).abs().item()
    assert cosine > 0.8 and probe.loss < 0.1
    oriented = orient(probe, xp[200:300], xn[200:300], y[200:300])  # sign from validation rows
    assert auroc(ccs_scores(oriented, xp[300:], xn[300:]), y[300:]) > 0.97  # held-out rows
    flipped = CCSProbe(-oriented.weight, -oriented.bias, oriented.loss)  # the other solution
    assert orient(flipped, xp[200:300], xn[200:300], y[200:300]).sign == -oriented.sign
    assert np.allclose(
        ccs_scores(orient(flipped, xp[200:300], xn[200:300], y[200:300]), xp, xn),
        ccs_scores(oriented, xp, xn),
        atol=1e-5,
    )


def test_ccs_layers_chooses_the_layer_that_carries_truth():
    x_pos, x_neg, y, _ = planted_pairs(n=300, seed=3)
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(300, 24, generator=g), torch.randn(300, 24, generator=g)
    texts = [f"statement {i}" for i in range(300)]
    data = Contrast(texts, y, [f"entity {i // 2}" for i in range(300)])
    split = split_contrast(data, 0.25, seed=0)
    r = ccs_layers(
        {"noise": noise[0], "truth": x_pos},
        {"noise": noise[1], "truth": x_neg},
        y,
        split,
        restarts=3,
        steps=200,
    )
    assert r.layer == "truth" and r.auroc > 0.95 and r.n == len(split.test)
    assert r.auroc_low <= r.auroc <= r.auroc_high
    assert abs(r.val_auroc["noise"] - 0.5) < 0.2
