"""Class-wise masked image modelling (after S4MIM, Li et al., arXiv 2411.08756): block masking, the per-class
split of a masked image, and the reconstruction and feature-aggregation losses. Plain torch.

A batch with (pseudo) labels is cut into *class views*: for each image and each of its largest classes ``c``,
the encoder sees only the visible (not masked) pixels of class ``c``; every other pixel (other classes,
ignored pixels, masked pixels) is replaced by a fill colour, so no class borrows another's context. The
targets are the masked pixels of class ``c``. The paper's exact mask ratio, block size, decoder and weights
are not public: the defaults here are MIC's masking (Hoyer et al., CVPR 2023: 64-px blocks, ratio 0.7) and
SimMIM's linear decoder (Xie et al., CVPR 2022: a 1×1 convolution and a pixel shuffle); the rest is ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ClassViews",
    "ReconstructionDecoder",
    "aggregation_loss",
    "block_mask",
    "class_views",
    "largest_classes",
    "reconstruction_loss",
    "running_stats_frozen",
]


def block_mask(
    batch: int, height: int, width: int, block: int, ratio: float, generator: torch.Generator
) -> Tensor:
    """``B×H×W`` bool, True where masked: each ``block``×``block`` cell is masked with probability ``ratio``.

    The draws come from ``generator`` (on the CPU), so a generator keyed by the training step masks the
    same blocks whenever that step is run.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if block < 1:
        raise ValueError(f"mask block must be >= 1 pixel, got {block}")
    cells = torch.rand(batch, 1, -(-height // block), -(-width // block), generator=generator) < ratio
    return F.interpolate(cells.float(), scale_factor=block, mode="nearest")[:, 0, :height, :width].bool()


def largest_classes(labels: Tensor, ignore_index: int, k: int) -> list[list[int]]:
    """Per image of ``B×H×W`` labels, its ``k`` classes with the most pixels (largest first; ignore excluded)."""
    out = []
    for image_labels in labels:
        values, counts = image_labels[image_labels != ignore_index].unique(return_counts=True)
        order = counts.argsort(descending=True, stable=True)[:k]
        out.append(values[order].tolist())
    return out


@dataclass(frozen=True)
class ClassViews:
    """One row per (image, class): the encoder ``inputs`` (``N×3×H×W``), the source ``image_index`` and
    ``class_id`` (``N``), and the class's ``masked`` and ``visible`` pixels (``N×H×W`` bool)."""

    inputs: Tensor
    image_index: Tensor
    class_id: Tensor
    masked: Tensor
    visible: Tensor

    def __len__(self) -> int:
        return len(self.image_index)


def class_views(image: Tensor, labels: Tensor, mask: Tensor, classes: list[list[int]], fill: Tensor) -> ClassViews:
    """The class views of a batch: ``image`` ``B×3×H×W``, ``labels`` ``B×H×W``, ``mask`` ``B×H×W`` (True =
    masked), ``classes[b]`` the classes of image ``b`` to split out, ``fill`` the colour (1 or 3 values) of
    every pixel the encoder must not see."""
    index = torch.tensor([b for b, cs in enumerate(classes) for _ in cs], dtype=torch.long, device=image.device)
    class_id = torch.tensor([c for cs in classes for c in cs], dtype=torch.long, device=image.device)
    region = labels[index] == class_id[:, None, None]
    masked = region & mask[index]
    visible = region & ~mask[index]
    inputs = torch.where(visible[:, None], image[index], fill.to(image).reshape(1, -1, 1, 1).expand(1, 3, 1, 1))
    return ClassViews(inputs, index, class_id, masked, visible)


def reconstruction_loss(prediction: Tensor, target: Tensor, where: Tensor) -> Tensor:
    """Mean L1 distance of ``N×3×H×W`` prediction and target over the pixels where ``where`` (``N×H×W``) holds;
    zero (with a graph) when there are none."""
    weight = where[:, None].to(prediction.dtype)
    count = weight.sum() * prediction.shape[1]
    return ((prediction - target).abs() * weight).sum() / count.clamp_min(1)


def _region_means(features: Tensor, region: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the mean feature over ``region`` resized to the map (area weights), and its total weight."""
    weight = F.adaptive_avg_pool2d(region[:, None].float(), features.shape[-2:])
    total = weight.sum(dim=(1, 2, 3))
    return (features * weight).sum(dim=(2, 3)) / total.clamp_min(1e-6)[:, None], total


def aggregation_loss(features: Tensor, masked: Tensor, visible: Tensor) -> Tensor:
    """Feature aggregation: ``1 - cos`` between each view's mean feature over its masked pixels and over its
    visible pixels (``N×C×h×w`` features, ``N×H×W`` regions), averaged over the views that have both;
    zero (with a graph) when none has."""
    masked_mean, masked_weight = _region_means(features, masked)
    visible_mean, visible_weight = _region_means(features, visible)
    both = (masked_weight > 0) & (visible_weight > 0)
    if not both.any():
        return features.sum() * 0.0
    return (1 - F.cosine_similarity(masked_mean[both], visible_mean[both], dim=1)).mean()


class ReconstructionDecoder(nn.Module):
    """SimMIM's light decoder: a 1×1 convolution to ``3·s²`` channels and a pixel shuffle by the map's stride
    ``s``, resized (bilinear) to the output size when the input was not a multiple of ``s``."""

    def __init__(self, in_channels: int, stride: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, 3 * stride * stride, kernel_size=1)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, features: Tensor, out_size: tuple[int, int]) -> Tensor:
        pixels = self.shuffle(self.project(features))
        if tuple(pixels.shape[-2:]) != tuple(out_size):
            pixels = F.interpolate(pixels, size=out_size, mode="bilinear", align_corners=False)
        return pixels


@contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Batch norm inside the block normalises with batch statistics as usual but leaves the running
    statistics as they were, so passes over masked and class-split images (mostly fill colour) do not
    shift the statistics the model is evaluated with."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
