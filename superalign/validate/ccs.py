"""Contrast-consistent search (CCS; Burns et al. 2022, "Discovering latent knowledge in language
models without supervision"): a truth direction found without labels.

Each statement ``t`` becomes a **contrast pair**: the same text answered both ways,
``x+ = "True or false: t\\nA: True"`` and ``x- = "... A: False"``; its features are the model's
activations at the last token of each. Each side is normalized on its own over the dataset
(:func:`normalize_pairs`: mean 0, unit variance per dimension), which removes the direction that
only says which answer word was appended. A probe ``p(x) = sigmoid(w . x + b)`` is then fitted to
minimise, over the pairs,

    consistency = (p(x+) - (1 - p(x-)))^2      (the two answers' probabilities sum to 1)
    confidence  = min(p(x+), p(x-))^2          (and one of them is confidently chosen)

(:func:`ccs_loss`), from ``restarts`` random initialisations (AdamW, full batch; all restarts
trained at once), keeping the lowest loss. The score of a statement is
``(p(x+) + 1 - p(x-)) / 2``. No label is used to fit; but the loss is symmetric under
``p -> 1 - p``, so a fitted probe may score truth or falsehood: :func:`orient` fixes the sign on
a labelled **validation** split only (never on the test split), as Burns et al. do.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from superalign.metrics import auroc

TEMPLATE = "True or false: {text}\nA: {answer}"
"""How a statement becomes the two halves of its contrast pair (``answer``: True / False)."""


def contrast_pair(text: str, template: str = TEMPLATE) -> tuple[str, str]:
    """``(x+, x-)``: ``text`` answered "True" and "False" in ``template``."""
    return template.format(text=text, answer="True"), template.format(text=text, answer="False")


def normalize_pairs(
    x_pos: torch.Tensor | np.ndarray, x_neg: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each side standardized over its own rows (mean 0, std 1 per dimension; no labels used)."""

    def norm(x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        return (x - x.mean(0)) / (x.std(0) + 1e-6)

    return norm(x_pos), norm(x_neg)


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """Consistency + confidence, averaged over pairs (dim 0); one value per further column."""
    consistency = (p_pos - (1 - p_neg)) ** 2
    confidence = torch.minimum(p_pos, p_neg) ** 2
    return (consistency + confidence).mean(0)


class CCSProbe(NamedTuple):
    """A fitted CCS probe (on normalized features)."""

    weight: torch.Tensor
    """[d] weights."""
    bias: float
    loss: float
    """Its final CCS loss on the pairs it was fitted to (the lowest of the restarts)."""
    sign: int = 1
    """+1: the score reads truth; -1: it read falsehood and is flipped (:func:`orient`)."""


def fit_ccs(
    x_pos: torch.Tensor,
    x_neg: torch.Tensor,
    restarts: int = 10,
    steps: int = 1000,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
) -> CCSProbe:
    """Minimise :func:`ccs_loss` on normalized pairs ``x_pos``, ``x_neg`` [n, d] from
    ``restarts`` random starts (trained side by side); the lowest final loss wins."""
    gen = torch.Generator().manual_seed(seed)
    d = x_pos.shape[1]
    w = (torch.randn(d, restarts, generator=gen) / d**0.5).requires_grad_()  # [d, restarts]
    b = torch.zeros(restarts, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = ccs_loss(torch.sigmoid(x_pos @ w + b), torch.sigmoid(x_neg @ w + b))  # [restarts]
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        final = ccs_loss(torch.sigmoid(x_pos @ w + b), torch.sigmoid(x_neg @ w + b))
    best = int(final.argmin())
    return CCSProbe(w[:, best].detach().clone(), float(b[best].detach()), float(final[best]))


@torch.no_grad()
def ccs_scores(probe: CCSProbe, x_pos: torch.Tensor, x_neg: torch.Tensor) -> np.ndarray:
    """[n] ``(p(x+) + 1 - p(x-)) / 2`` of each pair, flipped when ``probe.sign`` is -1."""
    p_pos = torch.sigmoid(x_pos @ probe.weight + probe.bias)
    p_neg = torch.sigmoid(x_neg @ probe.weight + probe.bias)
    s = ((p_pos + 1 - p_neg) / 2).numpy().astype(np.float64)
    return s if probe.sign > 0 else 1 - s


def orient(probe: CCSProbe, x_pos: torch.Tensor, x_neg: torch.Tensor, labels) -> CCSProbe:
    """``probe`` with its sign chosen so that its AUROC on these (validation) pairs is >= 0.5."""
    unsigned = probe._replace(sign=1)
    return unsigned._replace(
        sign=1 if auroc(ccs_scores(unsigned, x_pos, x_neg), labels) >= 0.5 else -1
    )


class LayerCCS(NamedTuple):
    """A CCS probe whose layer and sign were chosen on a validation split, scored on the test
    split."""

    layer: object
    """The layer with the best oriented AUROC on the validation groups."""
    auroc: float
    """AUROC of that layer's probe on the held-out test texts."""
    auroc_low: float
    auroc_high: float
    """95% bootstrap interval of ``auroc`` over test groups."""
    n: int
    """Test texts scored."""
    val_auroc: dict
    """Layer -> oriented AUROC on the validation groups (what the layer is chosen by)."""
    probe: CCSProbe
    """The chosen layer's probe, oriented."""


def ccs_layers(
    pos: dict,
    neg: dict,
    labels,
    split,
    test_share: float = 0.25,
    restarts: int = 10,
    steps: int = 1000,
    seed: int = 0,
) -> LayerCCS:
    """CCS on each layer's contrast-pair features ``pos[layer]``, ``neg[layer]`` ([n_rows, d],
    one pair per row of a contrast dataset with ``labels``), using the rows of ``split`` (a
    :class:`~superalign.validate.probes.Split`, the supervised probe's): its non-test groups are
    split again (``test_share`` of them whole) into fit and validation; the probe is fitted on
    the fit pairs without labels, oriented and its layer chosen on validation, and scored on the
    test split. Features are normalized per side over the kept rows (:func:`normalize_pairs`)."""
    from superalign.metrics import auroc_interval
    from superalign.validate.probes import group_split

    keep, rest, test, g = split
    y = np.asarray(labels, dtype=np.int64)[keep]
    fit, val = (rest[i] for i in group_split(y[rest], g[rest], test_share, seed))
    probes, val_auroc = {}, {}
    for layer in pos:
        xp, xn = normalize_pairs(np.asarray(pos[layer])[keep], np.asarray(neg[layer])[keep])
        probe = fit_ccs(xp[fit], xn[fit], restarts, steps, seed=seed)
        probes[layer] = orient(probe, xp[val], xn[val], y[val])
        val_auroc[layer] = auroc(ccs_scores(probes[layer], xp[val], xn[val]), y[val])
    best = max(val_auroc, key=lambda layer: val_auroc[layer])
    xp, xn = normalize_pairs(np.asarray(pos[best])[keep], np.asarray(neg[best])[keep])
    ci = auroc_interval(ccs_scores(probes[best], xp[test], xn[test]), y[test], g[test], seed=seed)
    return LayerCCS(best, ci.value, ci.low, ci.high, len(test), val_auroc, probes[best])
