"""The M&M triplet loss on L2-normalised embeddings."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["REDUCTIONS", "TripletLoss", "TripletStats", "squared_distance"]


class TripletStats(NamedTuple):
    """Loss and detached diagnostics of one batch of triplets."""

    loss: Tensor  # scalar, differentiable
    active_fraction: Tensor  # share of triplets with a positive hinge
    d_ap: Tensor  # mean anchor-positive distance
    d_an: Tensor  # mean anchor-negative distance


def squared_distance(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise squared Euclidean distance ``‖x − y‖²``."""
    return (x - y).pow(2).sum(dim=-1)


#: how :class:`TripletLoss` normalises the summed hinge over N triplets: ``mean`` divides by N,
#: ``release`` by 2N (the Caffe release's TripletLoss layer: half the gradient of ``mean``)
REDUCTIONS = {"mean": 1.0, "release": 2.0}


class TripletLoss(nn.Module):
    """``L = mean over triplets of max(D(a, p) − D(a, n) + margin, 0)`` (Zhan et al. 2018).

    ``D`` is the squared Euclidean distance between L2-normalised embeddings, so ``D ∈ [0, 4]``;
    the paper's margin is 2.1. Rows of ``triplets`` whose negative is ``-1`` (no node of another
    class exists) are dropped before averaging; if none remains the loss is ``embeddings.sum() * 0``
    (zero gradient, graph kept) and the statistics are 0. ``reduction="release"`` divides the
    summed hinge by 2N instead of N (:data:`REDUCTIONS`).
    """

    def __init__(self, margin: float = 2.1, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {sorted(REDUCTIONS)}")
        self.margin = margin
        self.reduction = reduction

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
        ) / REDUCTIONS[self.reduction]
        with torch.no_grad():
            d_ap, d_an = squared_distance(anchor, positive), squared_distance(anchor, negative)
            active = (d_ap - d_an + self.margin > 0).float().mean()
        return TripletStats(loss, active, d_ap.mean(), d_an.mean())

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction}"
