"""Map-style datasets over listed samples, and the padding collate that builds batches.

Items carry uint8 tensors (cheap to pass between worker processes);
:func:`pad_collate` turns them into the batch format of ``docs/CONTRACTS.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mnm.datamodules.errors import DataError
from mnm.datamodules.readers import IGNORE_INDEX, LabelMapping, read_label, read_rgb
from mnm.datamodules.transforms import JointTransform

logger = logging.getLogger("mnm.datamodules")


@dataclass(frozen=True)
class SampleRecord:
    """One listed sample: image, optional label and how to decode it, name, and where it was listed."""

    image: Path
    label: Path | None
    name: str
    mapping: LabelMapping | None = None
    source: str = ""


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(array, requirements="W"))


class SegmentationDataset(Dataset):
    """Reads one record per item, applies the joint transform and returns uint8 tensors.

    Items: ``image`` uint8 ``3×H×W``, ``mask`` uint8 ``H×W`` (labelled records
    only), ``name``, and, when ``with_size``, ``size`` (original ``(H, W)``) and
    ``input_size`` (``(H, W)`` after the transform, before batch padding). With
    ``skip_bad`` a sample that fails to read is logged once, flagged (in shared
    memory, so DataLoader workers see it too) and replaced by the next good one.

    Indices may also be sampler *keys* ``epoch * len + index`` (see
    :mod:`mnm.datamodules.sampling`): they address sample ``key % len``, and when
    ``key_seed`` is set each item's augmentation is seeded from ``(key_seed, key)``
    alone, so the data is the same whatever the worker count or restarts.
    """

    def __init__(
        self,
        records: Sequence[SampleRecord],
        transform: JointTransform,
        *,
        split: str,
        skip_bad: bool = False,
        with_size: bool = False,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.split = split
        self.skip_bad = skip_bad
        self.with_size = with_size
        self.num_skipped_at_setup = 0
        self.key_seed: int | None = None
        self._bad = torch.zeros(len(self.records), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_skipped(self) -> int:
        """Samples skipped so far: at setup (header check) plus at read time."""
        return self.num_skipped_at_setup + int(self._bad.sum())

    def set_seed(self, seed: int) -> None:
        """Reseed the augmentation (see :func:`mnm.datamodules.base.seed_worker`)."""
        self.transform.set_seed(seed)

    def load(self, index: int) -> dict[str, Any]:
        """Read and transform one sample; raises :class:`DataError` on bad data."""
        record = self.records[index]
        image = read_rgb(record.image)
        mask = None
        if record.label is not None:
            mask = read_label(record.label, record.mapping)
            if mask.shape != image.shape[:2]:
                raise DataError(
                    f"{record.label}: label size {mask.shape[0]}x{mask.shape[1]} differs from "
                    f"image size {image.shape[0]}x{image.shape[1]} of {record.image}"
                )
        size = image.shape[:2]
        image, mask = self.transform(image, mask)
        item: dict[str, Any] = {"image": _to_tensor(image).permute(2, 0, 1), "name": record.name}
        if mask is not None:
            item["mask"] = _to_tensor(mask)
        if self.with_size:
            item["size"] = size
            item["input_size"] = image.shape[:2]
        return item

    def __getitem__(self, key: int) -> dict[str, Any]:
        count = len(self.records)
        index = int(key) % count
        if self.key_seed is not None:
            self.transform.set_seed(
                int(np.random.SeedSequence([self.key_seed, int(key)]).generate_state(1)[0])
            )
        for offset in range(count):
            i = (index + offset) % count
            if self._bad[i]:
                continue
            try:
                return self.load(i)
            except DataError as err:
                if not self.skip_bad:
                    raise
                self._mark_bad(i, err)
        raise DataError(f"split '{self.split}': all {count} samples are bad (skip_bad skipped every one)")

    def _mark_bad(self, index: int, err: DataError) -> None:
        if self._bad[index]:
            return
        self._bad[index] = 1
        logger.warning(
            "skip_bad: skipping bad sample in split '%s': %s (%d skipped in this split so far)",
            self.split,
            err,
            self.num_skipped,
        )


def pad_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items, padding to the largest ``H×W`` in the batch (image 0, mask 255).

    Returns ``image`` float32 ``B×3×H×W`` in [0, 1], ``mask`` int64 ``B×H×W``
    (if labelled), ``name`` list[str], and ``size`` / ``input_size`` int64 ``B×2`` (if present).
    Built with numpy (single-threaded): torch's intra-op threads only add
    contention for this much work, badly so on a busy machine.
    """
    height = max(item["image"].shape[1] for item in items)
    width = max(item["image"].shape[2] for item in items)
    images = np.zeros((len(items), 3, height, width), dtype=np.float32)
    for i, item in enumerate(items):
        _, h, w = item["image"].shape
        images[i, :, :h, :w] = item["image"].numpy()
    images /= np.float32(255.0)
    batch: dict[str, Any] = {"image": torch.from_numpy(images), "name": [item["name"] for item in items]}
    if "mask" in items[0]:
        masks = np.full((len(items), height, width), IGNORE_INDEX, dtype=np.int64)
        for i, item in enumerate(items):
            h, w = item["mask"].shape
            masks[i, :h, :w] = item["mask"].numpy()
        batch["mask"] = torch.from_numpy(masks)
    for key in ("size", "input_size"):
        if key in items[0]:
            batch[key] = torch.tensor([list(item[key]) for item in items], dtype=torch.int64)
    return batch
