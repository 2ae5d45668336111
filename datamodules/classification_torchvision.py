"""Image classification data sets of torchvision (DTD, Oxford-IIIT Pets, Flowers-102, FGVC-Aircraft, Caltech-101), read from local files (``download=False``)."""

from __future__ import annotations

from typing import Any

import torch
import torchvision.datasets as tvd
from torch.utils.data import ConcatDataset, Dataset

from mnm.datamodules.classification import ClassificationDataModule


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
