"""The M&M triplet loss on L2-normalised embeddings."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TripletLoss", "TripletStats", "squared_distance"]


class TripletStats(NamedTuple):
    """Loss and detached diagnostics of one batch of triplets."""

    loss: Tensor  # scalar, differentiable
    active_fraction: Tensor  # share of triplets with a positive hinge
    d_ap: Tensor  # mean anchor-positive distance
    d_an: Tensor  # mean anchor-negative distance


def squared_distance(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise squared Euclidean distance ``‖x − y‖²``."""
    return (x - y).pow(2).sum(dim=-1)


class TripletLoss(nn.Module):
    """``L = mean over triplets of max(D(a, p) − D(a, n) + margin, 0)`` (Zhan et al. 2018).

    ``D`` is the squared Euclidean distance between L2-normalised embeddings, so ``D ∈ [0, 4]``;
    the paper's margin is 2.1. Rows of ``triplets`` whose negative is ``-1`` (no node of another
    class exists) are dropped before averaging; if none remains the loss is ``embeddings.sum() * 0``
    (zero gradient, graph kept) and the statistics are 0.
    """

    def __init__(self, margin: float = 2.1) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: Tensor, triplets: Tensor) -> TripletStats:
        """``embeddings`` B×D, ``triplets`` M×3 rows (anchor, positive, negative) indexing them."""
        triplets = triplets[triplets[:, 2] >= 0]
        if triplets.numel() == 0:
            zero = embeddings.sum() * 0
            stat = zero.detach()
            return TripletStats(zero, stat, stat, stat)
        z = F.normalize(embeddings, dim=1)
        anchor, positive, negative = z[triplets[:, 0]], z[triplets[:, 1]], z[triplets[:, 2]]
        loss = F.triplet_margin_with_distance_loss(
            anchor,
            positive,
            negative,
            distance_function=squared_distance,
            margin=self.margin,
            reduction="mean",
        )
        with torch.no_grad():
            d_ap, d_an = squared_distance(anchor, positive), squared_distance(anchor, negative)
            active = (d_ap - d_an + self.margin > 0).float().mean()
        return TripletStats(loss, active, d_ap.mean(), d_an.mean())

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
