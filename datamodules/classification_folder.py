"""Image classification from any class-per-folder tree (an ImageNet-style layout), with optional class and split lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torchvision.datasets as tvd
from torch.utils.data import Dataset

from mnm.datamodules.classification import ClassificationDataModule
from mnm.datamodules.errors import DataError


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
