"""The linear probe of unsupervised segmentation: a 1×1 convolution on frozen pixel features, scored by mIoU.

The features of the train images are computed once (frozen), a random subset of their labelled
pixels trains a linear classifier with cross-entropy, and the classifier's per-pixel predictions on
the evaluation images (logits resized bilinearly to the mask) are scored without any matching by
:class:`mnm.evaluation.metrics.SegmentationMetrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnm.evaluation.metrics import SegmentationMetrics
from mnm.methods.clustering import flatten_pixels


@torch.no_grad()
def labelled_pixels(
    embed: Callable[[Tensor], Tensor], batches: Iterable[dict[str, Any]], per_image: int, ignore_index: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Up to ``per_image`` random labelled pixels of each image: features ``N×D`` and labels ``N``."""
    feats, labels = [], []
    for batch in batches:
        maps = embed(batch["image"])
        mask = F.interpolate(batch["mask"][:, None].float(), size=maps.shape[-2:], mode="nearest")[:, 0].long()
        for f, m in zip(flatten_pixels(maps).split(mask[0].numel()), mask.flatten(1), strict=True):
            keep = (m != ignore_index).nonzero()[:, 0]
            keep = keep[torch.randperm(len(keep), generator=generator)[:per_image].to(keep.device)]
            feats.append(f[keep].cpu())
            labels.append(m[keep].cpu())
    return torch.cat(feats), torch.cat(labels)


def linear_probe(
    embed: Callable[[Tensor], Tensor],
    train_batches: Iterable[dict[str, Any]],
    eval_batches: Iterable[dict[str, Any]],
    num_classes: int,
    ignore_index: int = 255,
    pixels_per_image: int = 1024,
    epochs: int = 20,
    lr: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a 1×1 conv (a linear layer per pixel) on frozen ``embed`` maps; ``{"miou", "pixel_acc", "per_class_iou"}``.

    ``embed(images) -> B×D×h×w`` is called without gradients; training is full-batch Adam on
    the sampled pixels (features standardised by the train statistics), ``epochs`` passes.
    """
    generator = torch.Generator().manual_seed(seed)
    x, y = labelled_pixels(embed, train_batches, pixels_per_image, ignore_index, generator)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    classifier = nn.Conv2d(x.shape[1], num_classes, 1)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr)
    xs = ((x - mean) / std)[:, :, None, None]
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=generator).split(8192):
            loss = F.cross_entropy(classifier(xs[idx])[:, :, 0, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index)
    with torch.no_grad():
        for batch in eval_batches:
            maps = (embed(batch["image"]) - mean[:, None, None]) / std[:, None, None]
            logits = F.interpolate(classifier(maps), size=batch["mask"].shape[-2:], mode="bilinear")
            metrics.update(logits, batch["mask"])
    return metrics.compute()
