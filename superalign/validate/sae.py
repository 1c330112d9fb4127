"""A compact TopK sparse autoencoder (Gao et al., 2024, "Scaling and evaluating sparse
autoencoders"), trained on captured activations.

For an activation ``x`` [d_in] (divided by a fixed scalar ``scale``, see below)::

    pre = relu(W_enc @ (x - b_dec) + b_enc)        # [n_latents]; b_dec is the pre-encoder bias
    z   = TopK(pre, k)                             # keep the k largest, zero the rest
    x̂   = W_dec @ z + b_dec                        # W_dec's columns (dictionary vectors) unit-norm

The loss is the mean squared error, plus, when ``aux_k > 0``, Gao et al.'s auxiliary loss: the
``aux_k`` largest pre-activations of the *dead* latents (none fired in the last ``dead_tokens``
training tokens) reconstruct the residual ``x - x̂``, weighted by ``aux_coef`` and normalized by the
residual's variance; it gives dead latents a gradient. After every Adam step the dictionary
vectors are renormalized to unit length, and before it the gradient component parallel to them is
removed. ``W_enc`` starts as ``W_dec``'s transpose and ``b_dec`` at the data's mean. Inputs are
divided by ``scale`` = the root mean squared norm of the centered training data over
``sqrt(d_in)`` (recorded in the checkpoint) so the learning rate does not depend on the model's
activation scale; :meth:`TopKSAE.forward` takes and returns raw activations.

Statistics on held-out activations (:func:`sae_stats`):

- **FVU** (fraction of variance unexplained): ``sum ||x - x̂||² / sum ||x - mean(x)||²``; 0 is
  perfect, 1 is no better than predicting the mean;
- **L0**: mean number of nonzero latents per token (at most ``k``);
- **dead fraction**: share of latents that fire (``z > 0``) on none of the held-out tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from superalign.runs import atomic_dir


@dataclass
class SAEConfig:
    """Shape and training of a TopK SAE."""

    n_latents: int = 512
    """Dictionary size."""
    k: int = 16
    """Active latents per token."""
    steps: int = 2000
    """Adam steps."""
    batch_size: int = 256
    """Activations per step."""
    lr: float = 1e-3
    """Adam learning rate (constant)."""
    aux_k: int = 0
    """Dead latents used by the auxiliary loss (0: no auxiliary loss)."""
    aux_coef: float = 1 / 32
    """Weight of the auxiliary loss (Gao et al.'s 1/32)."""
    dead_tokens: int = 10_000
    """A latent that fired on none of the last this many training tokens counts as dead."""
    seed: int = 0
    """Seeds the initialization and the batch order."""


class TopKSAE(nn.Module):
    """The autoencoder; see the module docstring for the equations."""

    def __init__(self, d_in: int, n_latents: int, k: int) -> None:
        super().__init__()
        if not 0 < k <= n_latents:
            raise ValueError(f"k must be in [1, n_latents={n_latents}], not {k}")
        self.d_in, self.n_latents, self.k = d_in, n_latents, k
        w = torch.randn(n_latents, d_in)
        self.W_dec = nn.Parameter(w / w.norm(dim=1, keepdim=True))  # [n_latents, d_in], rows
        self.W_enc = nn.Parameter(self.W_dec.data.T.clone())  # [d_in, n_latents]
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(()))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """[n, n_latents]: ``relu(W_enc (x/scale - b_dec) + b_enc)`` for raw ``x`` [n, d_in]."""
        return F.relu((x / self.scale - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[n, n_latents]: the sparse code (k nonzeros at most per row) of raw ``x`` [n, d_in]."""
        pre = self.pre_acts(x)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[n, d_in]: raw-scale reconstruction of code ``z`` [n, n_latents]."""
        return (z @ self.W_dec + self.b_dec) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of ``W_dec``'s gradient that would change its rows' norms."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec.data).sum(1, keepdim=True)
            self.W_dec.grad -= along * self.W_dec.data


class SAEStats(NamedTuple):
    """Reconstruction and sparsity of an SAE on a set of activations."""

    fvu: float
    """Fraction of variance unexplained."""
    l0: float
    """Mean nonzero latents per token."""
    dead_fraction: float
    """Share of latents that never fire on these activations."""
    mse: float
    """Mean squared error per activation entry (raw units)."""
    fire_counts: torch.Tensor
    """[n_latents] tokens on which each latent fired."""


class TrainedSAE(NamedTuple):
    sae: TopKSAE
    losses: list[float]
    """Reconstruction loss (MSE of scaled activations, per entry) at every step."""


def train_sae(x: torch.Tensor, cfg: SAEConfig) -> TrainedSAE:
    """Train a :class:`TopKSAE` on activations ``x`` [n_tokens, d_in] (see the module docstring)."""
    torch.manual_seed(cfg.seed)
    x = x.float()
    sae = TopKSAE(x.shape[1], cfg.n_latents, cfg.k)
    centered = x - x.mean(0)
    sae.scale.fill_(float(centered.pow(2).sum(1).mean().sqrt() / x.shape[1] ** 0.5) or 1.0)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0) / sae.scale)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    since_fired = torch.zeros(cfg.n_latents, dtype=torch.long)  # tokens since each last fired
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(cfg.steps):
        batch = x[torch.randint(len(x), (cfg.batch_size,), generator=gen)] / sae.scale  # [b, d]
        pre = F.relu((batch - sae.b_dec) @ sae.W_enc + sae.b_enc)  # [b, n_latents]
        top = pre.topk(cfg.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        recon = z @ sae.W_dec + sae.b_dec
        loss = (recon - batch).pow(2).mean()
        fired = (z > 0).any(0)
        since_fired = torch.where(fired, 0, since_fired + cfg.batch_size)
        dead = since_fired >= cfg.dead_tokens
        total = loss
        if cfg.aux_k > 0 and dead.any():
            total = loss + cfg.aux_coef * _aux_loss(pre, dead, batch - recon.detach(), sae, cfg)
        opt.zero_grad()
        total.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
        losses.append(loss.item())
    return TrainedSAE(sae.eval(), losses)


def _aux_loss(
    pre: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor, sae: TopKSAE, cfg: SAEConfig
) -> torch.Tensor:
    """Reconstruct ``residual`` [b, d] from the top ``aux_k`` dead pre-activations."""
    k = min(cfg.aux_k, int(dead.sum()))
    masked = pre.masked_fill(~dead, 0.0)
    top = masked.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    err = (z @ sae.W_dec - residual).pow(2).sum()
    return err / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-8)


@torch.no_grad()
def sae_stats(sae: TopKSAE, x: torch.Tensor, batch_size: int = 4096) -> SAEStats:
    """FVU, L0 and dead fraction of ``sae`` on activations ``x`` [n_tokens, d_in]."""
    x = x.float()
    err, nonzero = 0.0, 0.0
    fires = torch.zeros(sae.n_latents, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        z = sae.encode(chunk)
        err += float((sae.decode(z) - chunk).pow(2).sum())
        active = z > 0
        nonzero += float(active.sum())
        fires += active.sum(0)
    var = float((x - x.mean(0)).pow(2).sum())
    return SAEStats(
        fvu=err / var if var > 0 else float("nan"),
        l0=nonzero / len(x),
        dead_fraction=float((fires == 0).float().mean()),
        mse=err / x.numel(),
        fire_counts=fires,
    )


def save_sae(sae: TopKSAE, folder: str | Path, meta: dict | None = None) -> None:
    """``sae.safetensors`` (weights, ``scale``) and ``cfg.json`` (shape + ``meta``), atomically."""
    with atomic_dir(folder) as tmp:
        save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, tmp / "sae.safetensors")
        cfg = {"d_in": sae.d_in, "n_latents": sae.n_latents, "k": sae.k, **(meta or {})}
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_sae(folder: str | Path) -> TopKSAE:
    """The SAE :func:`save_sae` wrote to ``folder``."""
    folder = Path(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    sae = TopKSAE(cfg["d_in"], cfg["n_latents"], cfg["k"])
    sae.load_state_dict(load_file(str(folder / "sae.safetensors")))
    return sae.eval()
