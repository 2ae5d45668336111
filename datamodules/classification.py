"""Image classification data: torchvision's datasets read from local folders (never downloaded),
any class-per-folder tree, and a synthetic set.

Batches are dicts: ``image`` float32 ``B×3×H×W`` RGB in [0, 1] (normalisation is the backbone's job,
as for segmentation), ``label`` int64 ``B`` and ``name`` (the sample's index in its split, as str).
The recipe of the fine-tuning literature is the default: random-resized crops of 224 px and flips for
training, a resize of the short side to 256 and a centre crop of 224 for evaluation (albumentations).
Training batches come from the same resumable, rank-sharded sampler as the segmentation data
(:mod:`mnm.datamodules.sampling`): the augmentation of each sample is keyed by its sampler key, so a
resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mnm.datamodules.errors import DataError
from mnm.datamodules.label_subset import stratified_labeled
from mnm.datamodules.sampling import resumable_loader
from mnm.datamodules.transforms import JointTransform

__all__ = ["ClassificationDataModule", "ClassifiedImages", "collate_classified"]

#: data modules that lived here before the split; saved configs may name them as ``mnm.datamodules.classification.X``
_MOVED = {
    "DTDDataModule": "classification_torchvision", "OxfordIIITPetDataModule": "classification_torchvision",
    "Flowers102DataModule": "classification_torchvision", "FGVCAircraftDataModule": "classification_torchvision",
    "Caltech101DataModule": "classification_torchvision", "ImageFolderClassificationDataModule": "classification_folder",
    "SyntheticClassificationDataModule": "classification_synthetic", "SyntheticShapes": "classification_synthetic",
}


def __getattr__(name: str) -> Any:
    """The moved data modules, from their new modules (imported on use: they import this one)."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"mnm.datamodules.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_STAGE_ROLES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class ClassifiedImages(Dataset):
    """``(image, label)`` samples of a base dataset (PIL or array images) through a seeded transform.

    Indices are sampler keys ``epoch * len + index`` (:mod:`mnm.datamodules.sampling`); with
    ``key_seed`` set, each item's augmentation is seeded from ``(key_seed, key)`` alone.
    """

    def __init__(self, base: Dataset, indices: Sequence[int], transform: JointTransform) -> None:
        self.base, self.indices, self.transform = base, list(indices), transform
        self.key_seed: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def set_seed(self, seed: int) -> None:
        """Reseed the augmentation (see :func:`mnm.datamodules.base.seed_worker`)."""
        self.transform.set_seed(seed)

    def __getitem__(self, key: int) -> dict[str, Any]:
        index = self.indices[int(key) % len(self.indices)]
        if self.key_seed is not None:
            self.transform.set_seed(int(np.random.SeedSequence([self.key_seed, int(key)]).generate_state(1)[0]))
        image, label = self.base[index]
        if not isinstance(image, np.ndarray):
            image = np.asarray(image.convert("RGB"))
        image, _ = self.transform(image)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), "label": int(label),
                "name": str(index)}


def collate_classified(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: ``image`` float32 in [0, 1], ``label`` int64, ``name`` list of str."""
    images = torch.stack([item["image"] for item in items]).float().div_(255.0)
    labels = torch.tensor([item["label"] for item in items], dtype=torch.int64)
    return {"image": images, "label": labels, "name": [item["name"] for item in items]}


class ClassificationDataModule(L.LightningDataModule):
    """Shared base: splits, the standard augmentation, label fractions and seeded, resumable loaders.

    A subclass sets ``NUM_CLASSES`` (or ``self.num_classes`` in ``__init__``, so that the CLI can
    link it to the model), ``SPLITS``, ``LAYOUT`` (what ``root`` must hold, for error messages) and
    implements :meth:`load_split` (a class with an empty ``LAYOUT`` reads no folder).

    Args:
        root: the folder that holds the dataset (nothing is downloaded).
        train_split, val_split, test_split: the dataset's split names for training, validation
            (a pipeline's ``evaluate: val``) and testing.
        batch_size, val_batch_size: images per batch.
        num_workers, pin_memory: DataLoader settings.
        crop_size: side of the training crops and of the evaluation centre crop (224).
        resize_size: the short side images are resized to before the evaluation centre crop (256).
        crop_scale: area range of the random-resized crops (Inception-style: 0.08-1).
        hflip: random horizontal flips in training.
        seed: seed of the shuffling and augmentation.
        max_samples: keep only the first N samples of every split (smoke tests).
        labeled_fraction: keep a class-stratified share of the training split (at least one per class).
        split_seed: seed of that subset (default: ``seed``).
    """

    NUM_CLASSES = 0
    SPLITS: tuple[str, ...] = ()
    LAYOUT = ""

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = "test",
        batch_size: int = 64,
        val_batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        crop_size: int = 224,
        resize_size: int = 256,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: bool = True,
        seed: int = 0,
        max_samples: int | None = None,
        labeled_fraction: float = 1.0,
        split_seed: int | None = None,
    ) -> None:
        super().__init__()
        for setting, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size),
                               ("crop_size", crop_size), ("resize_size", resize_size)):  # fmt: skip
            if value < 1:
                raise DataError(f"data.{setting} must be >= 1, got {value}")
        if resize_size < crop_size:
            raise DataError(f"data.resize_size ({resize_size}) must be >= data.crop_size ({crop_size})")
        if not 0.0 < labeled_fraction <= 1.0:
            raise DataError(f"data.labeled_fraction must be in (0, 1], got {labeled_fraction}")
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise DataError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
        for setting, split in (("train_split", train_split), ("val_split", val_split), ("test_split", test_split)):
            if split is not None and self.SPLITS and split not in self.SPLITS:
                raise DataError(f"data.{setting} of {type(self).__name__} must be one of {list(self.SPLITS)}, "
                                f"got {split!r}")
        self.root = Path(root).expanduser()
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.crop_size, self.resize_size, self.crop_scale = crop_size, resize_size, tuple(crop_scale)
        self.hflip, self.seed, self.max_samples = hflip, seed, max_samples
        self.labeled_fraction = labeled_fraction
        self.split_seed = seed if split_seed is None else split_seed
        self.num_classes = self.NUM_CLASSES
        self.datasets: dict[str, ClassifiedImages] = {}

    # ------------------------------------------------------------------ hooks for subclasses
    def load_split(self, split: str) -> tuple[Dataset, list[int]]:
        """The dataset of ``split`` (items ``(image, label)``) and its labels in order."""
        raise NotImplementedError

    def check_source(self) -> None:
        """Raise :class:`DataError` unless the training split can be read (checked before a pipeline starts)."""
        self._load(self.splits["train"])

    def train_transform(self) -> JointTransform:
        """Random-resized crop and horizontal flip."""
        ops: list[A.BasicTransform] = [
            A.RandomResizedCrop(size=(self.crop_size, self.crop_size), scale=self.crop_scale,
                                interpolation=cv2.INTER_LINEAR)
        ]
        if self.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        return JointTransform(ops, seed=self.seed)

    def eval_transform(self) -> JointTransform:
        """Short side to ``resize_size``, then a centre crop of ``crop_size``."""
        ops = [A.SmallestMaxSize(max_size=self.resize_size, interpolation=cv2.INTER_LINEAR),
               A.CenterCrop(height=self.crop_size, width=self.crop_size)]
        return JointTransform(ops, seed=self.seed)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Build (once) the datasets the stage needs; raises :class:`DataError`."""
        roles = _STAGE_ROLES.get(stage or "fit")
        if roles is None:
            raise DataError(f"unknown stage {stage!r}; expected one of {sorted(_STAGE_ROLES)}")
        for role in roles:
            if role not in self.datasets:
                self.datasets[role] = self._build(role)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    # ------------------------------------------------------------------ internals
    def _load(self, split: str) -> tuple[Dataset, list[int]]:
        problem = "the folder does not exist"
        if self.root.is_dir() or not self.LAYOUT:
            try:
                return self.load_split(split)
            except RuntimeError:  # torchvision's "Dataset not found or corrupted"
                problem = "torchvision found no complete copy of it"
            except FileNotFoundError as err:
                problem = str(err)
        name = type(self).__name__.removesuffix("DataModule")
        raise DataError(f"{self.root}: no {name} data (data.root: {problem}); expected {self.LAYOUT}; "
                        "nothing is downloaded")

    def _build(self, role: str) -> ClassifiedImages:
        split = self.splits[role]
        if split is None:
            raise DataError(f"data.{role}_split is not set; cannot build the {role} loader")
        base, labels = self._load(split)
        indices = list(range(len(labels)))
        if role == "train" and self.labeled_fraction < 1.0:
            indices = stratified_labeled(labels, self.labeled_fraction, self.split_seed)
        if self.max_samples is not None:
            indices = indices[: self.max_samples]
        if not indices:
            raise DataError(f"{self.root}: split {split!r} is empty")
        bad = sorted({labels[i] for i in indices if not 0 <= labels[i] < self.num_classes})
        if bad:
            raise DataError(f"{self.root}: split {split!r} has labels {bad[:5]} outside 0..{self.num_classes - 1}")
        transform = self.train_transform() if role == "train" else self.eval_transform()
        return ClassifiedImages(base, indices, transform)

    def _loader(self, role: str, batch_size: int, shuffle: bool) -> DataLoader:
        if role not in self.datasets:
            self.datasets[role] = self._build(role)
        return resumable_loader(
            self.datasets[role], batch_size, shuffle=shuffle, seed=self.seed, trainer=self.trainer,
            num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=collate_classified,
        )


# --------------------------------------------------------------------------- torchvision's datasets


# --------------------------------------------------------------------------- any class-per-folder tree


# --------------------------------------------------------------------------- synthetic


