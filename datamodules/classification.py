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
import torchvision.datasets as tvd
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from mnm.datamodules.errors import DataError
from mnm.datamodules.label_subset import stratified_labeled
from mnm.datamodules.sampling import resumable_loader
from mnm.datamodules.synthetic import (
    COLOUR_RANGE,
    random_colour,
    render_background,
    render_texture,
    shape_mask,
)
from mnm.datamodules.transforms import JointTransform

__all__ = [
    "Caltech101DataModule",
    "ClassificationDataModule",
    "DTDDataModule",
    "FGVCAircraftDataModule",
    "Flowers102DataModule",
    "ImageFolderClassificationDataModule",
    "OxfordIIITPetDataModule",
    "SyntheticClassificationDataModule",
]

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
class _TorchvisionDataModule(ClassificationDataModule):
    """A torchvision dataset class read with ``download=False``; ``trainval`` joins ``train`` and ``val``
    where torchvision has no such split."""

    DATASET: type[Dataset]
    #: split -> torchvision splits joined for it
    JOINED: dict[str, tuple[str, ...]] = {}

    def load_split(self, split: str) -> tuple[Dataset, list[int]]:
        parts = [self.DATASET(str(self.root), split=s, download=False) for s in self.JOINED.get(split, (split,))]
        labels = [int(label) for part in parts for label in part._labels]
        return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), labels


class DTDDataModule(_TorchvisionDataModule):
    """Describable Textures (47 classes), partition 1 of the official splits (40 images per class each)."""

    NUM_CLASSES, DATASET = 47, tvd.DTD
    SPLITS, JOINED = ("train", "val", "trainval", "test"), {"trainval": ("train", "val")}
    LAYOUT = "<root>/dtd/dtd/images/<class>/*.jpg and <root>/dtd/dtd/labels/{train,val,test}1.txt"


class OxfordIIITPetDataModule(_TorchvisionDataModule):
    """Oxford-IIIT Pet (37 breeds): the official ``trainval`` / ``test`` lists."""

    NUM_CLASSES, DATASET = 37, tvd.OxfordIIITPet
    SPLITS = ("trainval", "test")
    LAYOUT = ("<root>/oxford-iiit-pet/images/*.jpg and <root>/oxford-iiit-pet/annotations/"
              "{trainval,test}.txt")

    def __init__(self, root: str, train_split: str = "trainval", val_split: str = "test", **kwargs: Any) -> None:
        super().__init__(root, train_split=train_split, val_split=val_split, **kwargs)


class Flowers102DataModule(_TorchvisionDataModule):
    """Oxford 102 Flowers: the official train / val / test ids of ``setid.mat`` (10 + 10 per class, rest test)."""

    NUM_CLASSES, DATASET = 102, tvd.Flowers102
    SPLITS, JOINED = ("train", "val", "trainval", "test"), {"trainval": ("train", "val")}
    LAYOUT = "<root>/flowers-102/jpg/image_*.jpg, <root>/flowers-102/imagelabels.mat and setid.mat"


class FGVCAircraftDataModule(_TorchvisionDataModule):
    """FGVC-Aircraft 2013b, 100 variants, the official train / val / trainval / test lists."""

    NUM_CLASSES, DATASET = 100, tvd.FGVCAircraft
    SPLITS = ("train", "val", "trainval", "test")
    LAYOUT = "<root>/fgvc-aircraft-2013b/data/images/*.jpg and <root>/fgvc-aircraft-2013b/data/images_variant_*.txt"


class Caltech101DataModule(ClassificationDataModule):
    """Caltech-101 (101 classes, no background class). It has no official split: as in the fine-tuning
    literature (Kornblith et al., 2019), ``train`` is ``train_per_class`` random images of each class
    (drawn with ``partition_seed``, fixed whatever the run's seed) and ``test`` the rest."""

    NUM_CLASSES = 101
    SPLITS = ("train", "test")
    LAYOUT = "<root>/caltech101/101_ObjectCategories/<class>/image_*.jpg"

    def __init__(self, root: str, train_split: str = "train", val_split: str = "test", test_split: str | None = "test",
                 train_per_class: int = 30, partition_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(root, train_split=train_split, val_split=val_split, test_split=test_split, **kwargs)
        self.train_per_class, self.partition_seed = train_per_class, partition_seed

    def load_split(self, split: str) -> tuple[Dataset, list[int]]:
        if not (self.root / "caltech101" / "101_ObjectCategories").is_dir():  # torchvision would create folders
            raise FileNotFoundError("no caltech101/101_ObjectCategories folder")
        base = tvd.Caltech101(str(self.root), target_type="category", download=False)
        generator = torch.Generator().manual_seed(self.partition_seed)
        labels = torch.as_tensor(base.y)
        train = []
        for cls in range(self.NUM_CLASSES):
            members = torch.nonzero(labels == cls).flatten()
            train += members[torch.randperm(len(members), generator=generator)[: self.train_per_class]].tolist()
        chosen = set(train)
        indices = sorted(chosen) if split == "train" else [i for i in range(len(labels)) if i not in chosen]
        return torch.utils.data.Subset(base, indices), [int(base.y[i]) for i in indices]


# --------------------------------------------------------------------------- any class-per-folder tree
class _ListedImageFolder(tvd.ImageFolder):
    """torchvision's ImageFolder restricted to (and ordered by) a given class list."""

    def __init__(self, root: str, classes: list[str]) -> None:
        self._classes = classes
        super().__init__(root)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        missing = [c for c in self._classes if not (Path(directory) / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"class folders {missing[:5]} missing under {directory}")
        return self._classes, {c: i for i, c in enumerate(self._classes)}


class ImageFolderClassificationDataModule(ClassificationDataModule):
    """``<root>/<split>/<class>/*.jpg`` (torchvision's ImageFolder), e.g. an ImageNet subset.

    ``classes``: a file listing the class folders to use, one per line (e.g. 20 ImageNet wnids);
    other folders are ignored and the line order gives the label ids. Without it, every folder of
    the training split is a class (sorted). ``num_classes``, when given, is checked against the
    classes found (and lets a config name the class count before the data is there).
    """

    LAYOUT = "<root>/<split>/<class>/<image> (e.g. <root>/train/n01440764/*.JPEG)"

    def __init__(self, root: str, classes: str | None = None, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.classes_file = Path(classes).expanduser() if classes else None
        self.class_names = self._class_names()
        self.num_classes = num_classes if num_classes is not None else len(self.class_names)

    def _class_names(self) -> list[str]:
        if self.classes_file is None:
            train = self.root / self.splits["train"]
            return sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        if not self.classes_file.is_file():
            raise DataError(f"{self.classes_file}: class list (data.classes) not found")
        names = [line.strip() for line in self.classes_file.read_text().splitlines() if line.strip()]
        if not names or len(set(names)) != len(names):
            raise DataError(f"{self.classes_file}: the class list is empty or repeats a class")
        return names

    def load_split(self, split: str) -> tuple[Dataset, list[int]]:
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"no {split} folder")
        names = self.class_names or self._class_names()
        if len(names) != self.num_classes:
            raise FileNotFoundError(f"{len(names)} class folders for data.num_classes = {self.num_classes}")
        dataset = _ListedImageFolder(str(folder), names)
        return dataset, list(dataset.targets)


# --------------------------------------------------------------------------- synthetic
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
