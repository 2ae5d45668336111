"""The M&M triplet loss on L2-normalised embeddings, and Zhao et al.'s pixel-wise supervised contrastive loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PIXEL_CONTRAST_FORMULAS",
    "REDUCTIONS",
    "TripletLoss",
    "TripletStats",
    "cross_image_pixel_contrastive_loss",
    "pixel_contrast_pairs",
    "pixel_contrast_stats",
    "pixel_contrastive_loss",
    "squared_distance",
    "within_image_pixel_contrastive_loss",
]


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


# -- pixel-wise supervised contrastive loss (Zhao et al., ICCV 2021) --------------------------------
PixelContrastFormula = Literal["code", "paper"]
PIXEL_CONTRAST_FORMULAS = ("code", "paper")


def pixel_contrast_pairs(
    labels1: Tensor, labels2: Tensor | None, ignore_labels: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Positive and negative pair masks (bool ``B×M×M``) of the pixels of one image or of an image pair.

    With ``labels2`` the ``M = N1 + N2`` pixels of both images are compared: positives (equal labels,
    the self-pair included) may lie in either image, negatives only in the anchor's own image. A pair
    touching a label of ``ignore_labels`` is neither.
    """
    labels = labels1 if labels2 is None else torch.cat([labels1, labels2], dim=1)
    valid = ~torch.isin(labels, torch.as_tensor(list(ignore_labels), dtype=labels.dtype, device=labels.device))
    valid_pair = valid[:, :, None] & valid[:, None, :]
    same = labels[:, :, None] == labels[:, None, :]
    positive, negative = same & valid_pair, ~same & valid_pair
    if labels2 is not None:
        image = torch.cat([labels1.new_zeros(labels1.shape[1]), labels2.new_ones(labels2.shape[1])])
        negative &= image[:, None] == image[None, :]
    return positive, negative


def pixel_contrastive_loss(
    features: Tensor, positive: Tensor, negative: Tensor, temperature: float, formula: PixelContrastFormula = "code"
) -> Tensor:
    """The supervised pixel contrastive loss of features ``B×M×D`` over the pair masks of :func:`pixel_contrast_pairs`.

    Logits are ``f_i·f_j / temperature``. For each anchor ``a`` and each positive ``p``:
    ``formula="code"`` (the authors' released code) ``−log(e_ap / (e_ap + Σ_negatives e_an))``;
    ``formula="paper"`` (the paper's equation) ``−log(e_ap / Σ_valid e_ak)``, every valid pair of the
    anchor (positives and negatives) in the denominator. The terms are averaged over the anchor's
    positives, then over the anchors with at least one positive, then over the batch.
    """
    if formula not in PIXEL_CONTRAST_FORMULAS:
        raise ValueError(f"formula must be one of {list(PIXEL_CONTRAST_FORMULAS)}, got {formula!r}")
    with torch.autocast(features.device.type, enabled=False):  # bf16 logits at tau = 0.07 would be off by ~0.06
        features = features.float()
        logits = torch.bmm(features, features.transpose(1, 2)) / temperature
    # sums of exponentials shifted by the row maximum (a constant, no gradient needed), so none overflows;
    # unit-length features keep a row within 2 / temperature of its maximum, so none underflows either
    shift = logits.detach().amax(dim=2, keepdim=True)
    exp_logits = (logits - shift).exp()
    denominator_pairs = negative if formula == "code" else positive | negative
    sums = (exp_logits * denominator_pairs).sum(2, keepdim=True)
    log_sums = sums.clamp_min(torch.finfo(sums.dtype).tiny).log() + shift  # an empty sum is e^-87 ≈ 0
    nll = F.softplus(log_sums - logits) if formula == "code" else log_sums - logits
    num_positives = positive.sum(2)
    per_anchor = (nll * positive).sum(2) / num_positives.clamp_min(1)
    anchors = num_positives > 0
    per_image = (per_anchor * anchors).sum(1) / anchors.sum(1).clamp_min(1)
    return per_image.mean()


def within_image_pixel_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    ignore_labels: Sequence[int],
    temperature: float,
    formula: PixelContrastFormula = "code",
) -> Tensor:
    """Zhao et al.'s within-image loss: the pixels of each image contrasted with each other.

    ``features`` ``B×N×D`` (projected, L2-normalised), ``labels`` ``B×N`` int; returns a scalar.
    Memory: the logits and masks are ``B×N×N`` (float32 and bool, a few of each with their
    gradients): at a 64×64 grid (``N = 4096``) that is 64 MiB per image and float tensor,
    about 0.5 GiB per image in all, so a 1/8 grid of 512-pixel crops needs several GiB at batch 16.
    """
    positive, negative = pixel_contrast_pairs(labels, None, ignore_labels)
    return pixel_contrastive_loss(features, positive, negative, temperature, formula)


def cross_image_pixel_contrastive_loss(
    features1: Tensor,
    features2: Tensor,
    labels1: Tensor,
    labels2: Tensor,
    ignore_labels: Sequence[int],
    temperature: float,
    formula: PixelContrastFormula = "code",
) -> Tensor:
    """Zhao et al.'s cross-image loss: image ``i`` of the first batch paired with image ``i`` of the second.

    The pixels of both images are anchors; positives come from both images, negatives only from
    the anchor's own image. Shapes as in :func:`within_image_pixel_contrastive_loss` for each
    input; the pair has ``2N`` pixels, so the ``B×2N×2N`` tensors take 4 times the memory of the
    within-image loss at the same grid.
    """
    positive, negative = pixel_contrast_pairs(labels1, labels2, ignore_labels)
    return pixel_contrastive_loss(torch.cat([features1, features2], dim=1), positive, negative, temperature, formula)


@torch.no_grad()
def pixel_contrast_stats(labels1: Tensor, labels2: Tensor | None, ignore_labels: Sequence[int]) -> dict[str, Tensor]:
    """``valid_fraction`` (share of pixels not ignored) and ``positives_per_anchor`` (mean over the valid
    anchors, the self-pair counted) of the pairs the loss sees, with ``labels2`` as in cross-image mode.

    Counted per class (``Σ n_c² / Σ n_c`` over the images or image pairs), without the ``M×M`` masks.
    """
    labels = labels1 if labels2 is None else torch.cat([labels1, labels2], dim=1)
    valid = ~torch.isin(labels, torch.as_tensor(list(ignore_labels), dtype=labels.dtype, device=labels.device))
    _, classes = torch.unique(labels, return_inverse=True)
    counts = valid.new_zeros((len(labels), int(classes.max()) + 1), dtype=torch.float).scatter_add_(1, classes, valid.float())
    return {"valid_fraction": valid.float().mean(), "positives_per_anchor": counts.square().sum() / counts.sum().clamp_min(1)}
