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
from mnm.datamodules.transforms import JointTransform, StrongView
from mnm.methods.semi_supervised import cutmix_box

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
    ``input_size`` (``(H, W)`` after the transform, before batch padding), and, when
    ``mark_padding``, ``padding`` (uint8 ``H×W``, 1 where the transform padded an unlabelled image). With
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
        mark_padding: bool = False,
    ) -> None:
        self.records = list(records)
        self.mark_padding = mark_padding
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
        marks = mask is None and self.mark_padding
        if marks:  # an all-zero mask goes through the transform: its padding comes out as the ignore value
            mask = np.zeros(size, dtype=np.uint8)
        image, mask = self.transform(image, mask)
        item: dict[str, Any] = {"image": _to_tensor(image).permute(2, 0, 1), "name": record.name}
        if marks:
            item["padding"] = _to_tensor((mask == IGNORE_INDEX).astype(np.uint8))
        elif mask is not None:
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


#: the per-pixel maps a batch may carry, and the value that fills a padded pixel
_MAP_FILL = {"mask": IGNORE_INDEX, "padding": 1, "box1": 0, "box2": 0}
#: the image views a batch may carry
_IMAGE_KEYS = ("image", "image_s1", "image_s2")


def pad_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items, padding to the largest ``H×W`` in the batch (image 0, mask 255).

    Returns ``image`` float32 ``B×3×H×W`` in [0, 1], ``mask`` int64 ``B×H×W``
    (if labelled), ``name`` list[str], and ``size`` / ``input_size`` int64 ``B×2`` (if present).
    The views and maps of semi-supervised items (:class:`SemiDataset`) are stacked alike:
    ``image_s1``/``image_s2`` as images, ``padding`` (padded with 1) and ``box1``/``box2`` (with 0) as bool.
    Built with numpy (single-threaded): torch's intra-op threads only add
    contention for this much work, badly so on a busy machine.
    """
    height = max(item["image"].shape[1] for item in items)
    width = max(item["image"].shape[2] for item in items)
    batch: dict[str, Any] = {"name": [item["name"] for item in items]}
    for key in (k for k in _IMAGE_KEYS if k in items[0]):
        images = np.zeros((len(items), 3, height, width), dtype=np.float32)
        for i, item in enumerate(items):
            _, h, w = item[key].shape
            images[i, :, :h, :w] = item[key].numpy()
        images /= np.float32(255.0)
        batch[key] = torch.from_numpy(images)
    for key in (k for k in _MAP_FILL if k in items[0]):
        maps = np.full((len(items), height, width), _MAP_FILL[key], dtype=np.int64)
        for i, item in enumerate(items):
            h, w = item[key].shape
            maps[i, :h, :w] = item[key].numpy()
        batch[key] = torch.from_numpy(maps) if key == "mask" else torch.from_numpy(maps.astype(bool))
    for key in ("size", "input_size"):
        if key in items[0]:
            batch[key] = torch.tensor([list(item[key]) for item in items], dtype=torch.int64)
    return batch


class SemiDataset(Dataset):
    """Pairs of a labelled and an unlabelled sample for semi-supervised training, addressed by
    ``(labelled key, unlabelled key)`` (see :class:`mnm.datamodules.sampling.PairedSampler`).

    The unlabelled item carries its weak view (``image``, the train transform), two strong views of it
    (``image_s1``, ``image_s2``: :class:`~mnm.datamodules.transforms.StrongView`), a CutMix box for each
    (``box1``, ``box2``: :func:`mnm.methods.semi_supervised.cutmix_box`, with probability ``cutmix_p``) and ``padding``.
    The strong views and boxes are seeded from ``(key_seed, unlabelled key)``, as the weak views are.
    """

    def __init__(
        self, labeled: SegmentationDataset, unlabeled: SegmentationDataset, cutmix_p: float = 0.5
    ) -> None:
        self.labeled, self.unlabeled = labeled, unlabeled
        self.cutmix_p = cutmix_p
        self.strong = StrongView()
        self.key_seed = 0

    def __len__(self) -> int:
        return len(self.unlabeled)

    def set_seed(self, seed: int) -> None:
        """Reseed both datasets' augmentation (see :func:`mnm.datamodules.base.seed_worker`)."""
        self.labeled.set_seed(seed)
        self.unlabeled.set_seed(seed + 1)

    def __getitem__(self, keys: tuple[int, int]) -> dict[str, Any]:
        labeled_key, unlabeled_key = keys
        item = self.unlabeled[unlabeled_key]
        seeds = np.random.SeedSequence([self.key_seed, int(unlabeled_key), 2]).generate_state(4)
        weak = item["image"].permute(1, 2, 0).numpy()
        for view, (view_seed, box_seed) in enumerate(zip(seeds[:2], seeds[2:], strict=True), start=1):
            strong = self.strong(np.ascontiguousarray(weak), int(view_seed))
            item[f"image_s{view}"] = _to_tensor(strong).permute(2, 0, 1)
            generator = torch.Generator().manual_seed(int(box_seed))
            item[f"box{view}"] = cutmix_box(*weak.shape[:2], generator, p=self.cutmix_p)
        return {"labeled": self.labeled[labeled_key], "unlabeled": item}


def semi_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"labeled": batch, "unlabeled": batch}`` of :class:`SemiDataset` items (each by :func:`pad_collate`)."""
    return {role: pad_collate([item[role] for item in items]) for role in ("labeled", "unlabeled")}
