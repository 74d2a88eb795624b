"""``latent`` (LRKD): pull each perspective's projected latent P_k(z_k) towards the teacher's e_k."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from lrkd.losses.compose import LossInputError, LossTerm, mean_over_rows
from lrkd.losses.infonce import info_nce

DISTANCES = ("mse", "cosine", "infonce")


def latent_alignment(pred: Tensor, target: Tensor, distance: str = "mse", mask: Tensor | None = None,
                     temperature: float = 0.05) -> Tensor:
    """Mean over the K perspectives of a per-perspective alignment loss, masked mean over rows.

    pred: [B, K, D] the student's P_k(z_k); target: [B, K, D] the teacher's e_k; mask: [B] bool.
    distance:
      ``mse``     mean over rows and D of (pred - target)²;
      ``cosine``  mean over rows of 1 - cos(pred, target);
      ``infonce`` ``info_nce(pred[:, k], target[:, k], temperature)`` (in-batch negatives).
    Returns a scalar; 0 with a grad path when no row is valid.
    """
    if distance not in DISTANCES:
        raise ValueError(f"latent_alignment: distance must be one of {DISTANCES}, got {distance!r}")
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(f"latent_alignment expects pred and target [B, K, D] of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.float(), target.float()
    if distance == "infonce":
        per_k = [info_nce(pred[:, k], target[:, k], temperature, mask) for k in range(pred.shape[1])]
        return torch.stack(per_k).mean()
    if distance == "mse":
        per_row_k = (pred - target).pow(2).mean(dim=-1)  # [B, K]
    else:
        per_row_k = 1.0 - F.cosine_similarity(pred, target, dim=-1)  # [B, K]
    return mean_over_rows(per_row_k.mean(dim=-1), mask)  # every row has all K, so mean_k mean_b = mean_b mean_k


class LatentTerm(LossTerm):
    """LRKD alignment of ``out["latent_pred"]`` with ``batch["latent_targets"]`` over annotated rows."""

    needs_annotations = True

    def __init__(self, weight: float = 0.1, distance: str = "mse", temperature: float = 0.05):
        super().__init__(weight)
        if distance not in DISTANCES:
            raise ValueError(f"LatentTerm: distance must be one of {DISTANCES}, got {distance!r}")
        self.distance = distance
        self.temperature = float(temperature)

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        targets = self.batch_annotation(batch, "latent_targets")
        annotated = self.batch_annotation(batch, "annotated")
        if "latent_pred" not in out:
            raise LossInputError(
                f"loss term {self.name!r} needs a latent reasoning extractor: set extractor=mlp|poly|gat "
                f"(the student returned no 'latent_pred'; or switch the term off with "
                f"loss.terms.{self.name}.weight=0)")
        pred = out["latent_pred"]
        return {"loss": latent_alignment(pred, targets, self.distance, annotated.to(torch.bool), self.temperature)}

    def extra_repr(self) -> str:
        return f"weight={self.weight}, distance={self.distance!r}, temperature={self.temperature}"

