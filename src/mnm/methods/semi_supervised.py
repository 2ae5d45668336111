"""Semi-supervised segmentation parts (UniMatch-style, Yang et al., CVPR 2023): CutMix boxes, pseudo labels,
the confidence-masked unlabelled loss. Plain torch; the ``semi`` stage composes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PseudoLabels", "cutmix_box", "mix_boxes", "pseudo_labels", "unlabelled_loss"]


def cutmix_box(
    height: int,
    width: int,
    generator: torch.Generator,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> Tensor:
    """A ``H×W`` uint8 mask, 1 inside one random box (with probability ``p``, else all 0).

    The box covers a uniform fraction in ``area`` of the image with a height/width ratio uniform
    in ``aspect`` (UniMatch's 0.02–0.4 and 0.3–1/0.3), clipped to the image, at a uniform position.
    All draws come from ``generator``, so a seeded generator gives the same box.
    """
    u = torch.rand(5, generator=generator).tolist()
    box = torch.zeros(height, width, dtype=torch.uint8)
    if u[0] >= p:
        return box
    size = (area[0] + u[1] * (area[1] - area[0])) * height * width
    ratio = aspect[0] + u[2] * (aspect[1] - aspect[0])
    h = min(height, max(1, int(math.sqrt(size * ratio))))
    w = min(width, max(1, int(math.sqrt(size / ratio))))
    top, left = int(u[3] * (height - h + 1)), int(u[4] * (width - w + 1))
    box[top : top + h, left : left + w] = 1
    return box


def mix_boxes(target: Tensor, source: Tensor, box: Tensor) -> Tensor:
    """``target`` with ``source`` pasted where ``box`` (``B×H×W``) is 1; any leading ``B`` and trailing ``H×W``."""
    inside = box.bool()
    if target.ndim == 4:
        inside = inside[:, None]
    return torch.where(inside, source, target)


@dataclass(frozen=True)
class PseudoLabels:
    """Hard pseudo labels of a batch: ``labels`` (``B×H×W`` long), ``confidence`` (max softmax),
    and ``valid`` (False where the image is padding: those pixels never count)."""

    labels: Tensor
    confidence: Tensor
    valid: Tensor

    def mixed(self, box: Tensor, order: Tensor) -> PseudoLabels:
        """The pseudo labels of a CutMix view: inside ``box``, those of image ``order[i]`` of the batch."""
        return PseudoLabels(
            mix_boxes(self.labels, self.labels[order], box),
            mix_boxes(self.confidence, self.confidence[order], box),
            mix_boxes(self.valid, self.valid[order], box),
        )

    def with_ignore(self, threshold: float, ignore_index: int) -> Tensor:
        """The labels with ``ignore_index`` where the confidence is below ``threshold`` or on padding."""
        keep = (self.confidence >= threshold) & self.valid
        return torch.where(keep, self.labels, torch.full_like(self.labels, ignore_index))


def pseudo_labels(logits: Tensor, valid: Tensor | None = None) -> PseudoLabels:
    """Pseudo labels (argmax) and confidences (max softmax) of ``B×C×H×W`` logits, without gradient."""
    confidence, labels = logits.detach().softmax(1).max(1)
    if valid is None:
        valid = torch.ones_like(labels, dtype=torch.bool)
    return PseudoLabels(labels, confidence, valid.bool())


def unlabelled_loss(logits: Tensor, target: PseudoLabels, threshold: float) -> Tensor:
    """UniMatch's unlabelled loss: pixel cross-entropy against the pseudo labels, counted where the
    confidence reaches ``threshold``, divided by the number of valid (not padding) pixels."""
    per_pixel = F.cross_entropy(logits, target.labels, reduction="none")
    keep = (target.confidence >= threshold) & target.valid
    return (per_pixel * keep).sum() / target.valid.sum().clamp_min(1)
