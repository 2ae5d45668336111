"""Synthetic shapes for classification (3 shapes × 3 textures = 9 classes), rendered on demand: tests and demos without data."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mnm.datamodules.classification import ClassificationDataModule
from mnm.datamodules.errors import DataError
from mnm.datamodules.synthetic import (
    COLOUR_RANGE,
    random_colour,
    render_background,
    render_texture,
    shape_mask,
)

#: class id -> (shape, texture) of the synthetic set: every shape with every texture
SYNTHETIC_SHAPES = tuple((s, t) for s in ("disk", "square", "triangle") for t in ("gradient", "stripes", "checker"))


def render_classified(rng: np.random.Generator, size: int, cls: int) -> np.ndarray:
    """One ``size×size×3`` uint8 image of class ``cls``: its object (random size, place, rotation, colours,
    texture period) over a cluttered background at half contrast, plus a smaller distractor object of a
    random class. Texture periods scale with ``size`` (7-11% of it), so they survive the crops' resizing."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = 0.5 * render_background(rng, size, size) + 0.5 * np.mean(COLOUR_RANGE)
    classes = [int(rng.integers(len(SYNTHETIC_SHAPES))), cls]  # the distractor first, the object on top
    for k, c in enumerate(classes):
        shape, texture = SYNTHETIC_SHAPES[c]
        r = rng.uniform(0.24, 0.36) * size if k else rng.uniform(0.08, 0.12) * size
        cy, cx = rng.uniform(0.8 * r, size - 0.8 * r, size=2)
        dy, dx = yy - cy, xx - cx
        mask = shape_mask(shape, dy, dx, r, rng.uniform(0, 2 * np.pi))
        period = rng.uniform(0.07, 0.11) * size
        fill = render_texture(texture, dy, dx, r, rng.uniform(0, np.pi), period, random_colour(rng), random_colour(rng))
        image[mask] = fill[mask] + rng.normal(0.0, 6.0, size=(int(mask.sum()), 3))
    return np.clip(image, 0, 255).round().astype(np.uint8)


class SyntheticShapes(Dataset):
    """``count`` synthetic images, class ``i % 9`` for image ``i``, rendered on access from ``(seed, offset + i)``."""

    def __init__(self, count: int, size: int, seed: int, offset: int) -> None:
        self.count, self.size, self.seed, self.offset = count, size, seed, offset

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        cls = index % len(SYNTHETIC_SHAPES)
        return render_classified(np.random.default_rng([self.seed, self.offset + index]), self.size, cls), cls


class SyntheticClassificationDataModule(ClassificationDataModule):
    """Nine classes = three shapes × three textures (gradient, stripes, checkerboard), every colour from the
    same distribution, so neither colour nor one cue alone separates them; each image also holds a smaller
    distractor object of a random class. Rendered in memory (nothing is written), deterministic by
    ``data_seed``; ``root`` is unused. Splits: ``train`` (``num_train`` images) and ``val`` = ``test``.
    """

    NUM_CLASSES = len(SYNTHETIC_SHAPES)
    SPLITS = ("train", "val", "test")
    LAYOUT = ""  # reads no folder

    def __init__(self, root: str = "unused", num_train: int = 900, num_val: int = 450, image_size: int = 96,
                 data_seed: int = 0, crop_size: int = 64, resize_size: int = 72,
                 crop_scale: tuple[float, float] = (0.35, 1.0), batch_size: int = 32, val_batch_size: int = 64,
                 **kwargs: Any) -> None:
        if min(num_train, num_val) < 1 or image_size < 16:
            raise DataError(f"synthetic classification data needs num_train, num_val >= 1 and image_size >= 16, "
                            f"got {num_train}, {num_val}, {image_size}")
        super().__init__(root, crop_size=crop_size, resize_size=resize_size, crop_scale=crop_scale,
                         batch_size=batch_size, val_batch_size=val_batch_size, **kwargs)
        self.num_train, self.num_val, self.image_size, self.data_seed = num_train, num_val, image_size, data_seed

    def check_source(self) -> None:
        """Nothing to find: the images are rendered."""

    def load_split(self, split: str) -> tuple[Dataset, list[int]]:
        count, offset = (self.num_train, 0) if split == "train" else (self.num_val, self.num_train)
        dataset = SyntheticShapes(count, self.image_size, self.data_seed, offset)
        return dataset, [i % self.NUM_CLASSES for i in range(count)]
