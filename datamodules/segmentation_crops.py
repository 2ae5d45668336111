"""Image classification from a segmentation dataset: square crops labelled by their majority class.

The labelled images of a segmentation data module (CamVid, say) are cut into square crops of a seeded
random side, centred on a pixel of a class drawn uniformly from the image's classes; a crop is kept
when one class covers at least ``min_purity`` of its labelled pixels and at least half of its pixels
are labelled, and that class is its label. The crops are cut
once per split from the source's deterministic evaluation view (its ``val_size``), resized to
``resize_size`` and then go through the classification recipe of
:class:`~mnm.datamodules.classification.ClassificationDataModule` (random-resized crops and flips for
training, a centre crop for evaluation). A real-image classification set for the CPU benchmark of
classification fine-tuning, with a skewed class distribution as real data has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from mnm.datamodules.base import SegmentationDataModule
from mnm.datamodules.classification import ClassificationDataModule
from mnm.datamodules.errors import DataError

__all__ = ["SegmentationCropsDataModule", "cut_labelled_crops"]


def cut_labelled_crops(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    count: int,
    side_range: tuple[int, int],
    out_size: int,
    num_classes: int,
    min_purity: float,
) -> list[tuple[np.ndarray, int]]:
    """Up to ``count`` crops of ``image`` (H×W×3 uint8) with their majority class in ``mask`` (H×W).

    Sides are drawn uniformly from ``side_range`` (clipped to the image); each crop is centred on a
    pixel of a class drawn uniformly from the classes in the image (so small classes get crops too),
    shifted to lie inside the image. A crop is dropped when under half of its pixels carry a class in
    ``0..num_classes-1`` or when its largest class covers less than ``min_purity`` of those. Kept crops
    are resized to ``out_size``.
    """
    height, width = mask.shape
    present = [c for c in np.unique(mask) if 0 <= c < num_classes]
    crops: list[tuple[np.ndarray, int]] = []
    for _ in range(count if present else 0):
        side = min(int(rng.integers(side_range[0], side_range[1] + 1)), height, width)
        ys, xs = np.nonzero(mask == present[int(rng.integers(len(present)))])
        pick = int(rng.integers(len(ys)))
        top = int(np.clip(ys[pick] - side // 2, 0, height - side))
        left = int(np.clip(xs[pick] - side // 2, 0, width - side))
        window = mask[top : top + side, left : left + side].ravel()
        labelled = window[(window >= 0) & (window < num_classes)]
        if labelled.size < window.size / 2:
            continue
        counts = np.bincount(labelled, minlength=num_classes)
        label = int(counts.argmax())
        if counts[label] < min_purity * labelled.size:
            continue
        patch = image[top : top + side, left : left + side]
        crops.append((cv2.resize(patch, (out_size, out_size), interpolation=cv2.INTER_AREA), label))
    return crops


class SegmentationCropsDataModule(ClassificationDataModule):
    """Classification crops of a segmentation data module's labelled images (see the module docstring).

    Args:
        source: the segmentation data module whose ``train``/``val``/``test`` splits are cut (its
            ``val_size`` sets the image size the crops are cut from; only its masks' classes are used).
        crops_per_image: crops drawn per image before the purity test.
        side_range: crop sides in pixels of the source's evaluation view.
        min_purity: the share of a crop's labelled pixels its majority class must cover.
        crop_seed: seed of the crop draws (fixed across run seeds: the data stays the same).
        resize_size, crop_size, crop_scale, ...: the classification recipe
            (:class:`~mnm.datamodules.classification.ClassificationDataModule`).
    """

    def __init__(self, source: SegmentationDataModule, crops_per_image: int = 12,
                 side_range: tuple[int, int] = (24, 64), min_purity: float = 0.5, crop_seed: int = 0,
                 crop_size: int = 56, resize_size: int = 64, crop_scale: tuple[float, float] = (0.35, 1.0),
                 batch_size: int = 32, val_batch_size: int = 128, **kwargs: Any) -> None:
        if crops_per_image < 1:
            raise DataError(f"data.crops_per_image must be >= 1, got {crops_per_image}")
        if not 1 <= side_range[0] <= side_range[1]:
            raise DataError(f"data.side_range must satisfy 1 <= low <= high, got {tuple(side_range)}")
        if not 0.0 < min_purity <= 1.0:
            raise DataError(f"data.min_purity must be in (0, 1], got {min_purity}")
        super().__init__(str(source.root), train_split=source.train_split, val_split=source.val_split,
                         test_split=source.test_split, crop_size=crop_size, resize_size=resize_size,
                         crop_scale=crop_scale, batch_size=batch_size, val_batch_size=val_batch_size, **kwargs)
        self.source = source
        self.crops_per_image, self.side_range = crops_per_image, tuple(side_range)
        self.min_purity, self.crop_seed = min_purity, crop_seed
        self.num_classes = source.num_classes
        self.class_names = list(source.CLASS_NAMES)

    def check_source(self) -> None:
        """The source's own check (its folder and split lists)."""
        self.source.check_source()

    def load_split(self, split: str) -> tuple[Sequence[tuple[np.ndarray, int]], list[int]]:
        role = next(role for role, name in self.splits.items() if name == split)
        samples = self.source.eval_dataset(role)
        rng = np.random.default_rng([self.crop_seed, sum(map(ord, split))])
        crops: list[tuple[np.ndarray, int]] = []
        for index in range(len(samples)):
            item = samples[index]
            image = item["image"].permute(1, 2, 0).numpy()
            crops += cut_labelled_crops(image, item["mask"].numpy().astype(np.int64), rng, self.crops_per_image,
                                        self.side_range, self.resize_size, self.num_classes, self.min_purity)
        if not crops:
            raise DataError(f"{self.root}: no crop of split {split!r} passed data.min_purity = {self.min_purity}")
        return crops, [label for _, label in crops]  # a list of (image, label) pairs is the dataset
