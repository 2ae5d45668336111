"""Unlabelled images from any folder, for the proxy (self-supervised) stages."""

from pathlib import Path

import numpy as np

from mnm.datamodules.base import SegmentationDataModule
from mnm.datamodules.datasets import SampleRecord
from mnm.datamodules.errors import DataError
from mnm.datamodules.readers import IMAGE_EXTENSIONS, list_images
from mnm.datamodules.transforms import JointTransform, build_eval_transform, build_train_transform


class ImageFolderDataModule(SegmentationDataModule):
    """Every image under ``root`` (recursive); batches hold ``image`` and ``name`` only.

    Training: scale the short side up if the image is smaller than
    ``crop_size``, random crop, optional flip and colour jitter. Validation:
    the same scale-up and a centre crop. ``val_fraction`` of the sorted file
    list (at least one image, evenly spaced, independent of ``seed``) is held
    out for validation. ``name`` is the path relative to ``root`` without its
    extension (the file stem for a flat folder).
    """

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.05,
        batch_size: int = 32,
        val_batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        crop_size: tuple[int, int] | None = (224, 224),
        hflip: bool = True,
        color_jitter: bool = False,
        skip_bad: bool = False,
        seed: int = 0,
        predict_dir: str | None = None,
        max_samples: int | None = None,
    ) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
        super().__init__(
            root=root,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            crop_size=crop_size,
            scale_range=(1.0, 1.0),
            hflip=hflip,
            color_jitter=color_jitter,
            skip_bad=skip_bad,
            seed=seed,
            predict_dir=predict_dir,
            max_samples=max_samples,
        )
        self.val_fraction = val_fraction
        self._files: list[Path] | None = None

    def list_samples(self, split: str) -> list[SampleRecord]:
        if self._files is None:
            self._files = list_images(self.root)
        files = self._files
        if len(files) < 2:
            raise DataError(
                f"{self.root}: found {len(files)} image(s) ({', '.join(IMAGE_EXTENSIONS)}); "
                "need at least 2 to hold out a validation image"
            )
        num_val = max(1, round(len(files) * self.val_fraction))
        held_out = set(np.linspace(0, len(files) - 1, num_val).round().astype(int).tolist())
        want_val = split == self.val_split
        return [
            SampleRecord(path, None, path.relative_to(self.root).with_suffix("").as_posix())
            for i, path in enumerate(files)
            if (i in held_out) == want_val
        ]

    def train_transform(self) -> JointTransform:
        return build_train_transform(
            crop_size=self.crop_size,
            hflip=self.hflip,
            color_jitter=self.color_jitter,
            seed=self.seed,
            cover=True,
        )

    def eval_transform(self) -> JointTransform:
        return build_eval_transform(center_crop=self.crop_size, seed=self.seed)
