"""InfoNCE with in-batch negatives (used by ``crsd`` and by ``latent`` with distance=infonce)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lrkd.losses.compose import zero_with_grad


def info_nce(anchors: Tensor, positives: Tensor, temperature: float = 0.05, mask: Tensor | None = None,
             symmetric: bool = False) -> Tensor:
    """InfoNCE: row i's positive is ``positives[i]``; the other rows' positives are its negatives.

    anchors, positives: [B, D]; mask: [B] bool (all rows when ``None``): a masked-out row is dropped
    both as an anchor and as a candidate. With S = normalize(a) · normalize(p)ᵀ / τ ([n, n] over the
    n valid rows) the loss is the mean over rows of CE(S_i, i) = -log softmax(S_i)_i (nats).
    symmetric: also the positives -> anchors direction (CE on Sᵀ), averaged with the first.
    Returns a scalar; 0 with a grad path when no row is valid (one valid row gives exactly 0).
    """
    if anchors.dim() != 2 or anchors.shape != positives.shape:
        raise ValueError(f"info_nce expects anchors and positives [B, D] of one shape, got "
                         f"{tuple(anchors.shape)} and {tuple(positives.shape)}")
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    a, p = anchors, positives
    if mask is not None:
        mask = mask.to(device=anchors.device, dtype=torch.bool)
        a, p = a[mask], p[mask]
    if a.shape[0] == 0:
        return zero_with_grad(anchors, positives)
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(p.float(), dim=-1).T / temperature
    target = torch.arange(sim.shape[0], device=sim.device)
    loss = F.cross_entropy(sim, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(sim.T, target))
    return loss
