"""Any segmentation set laid out as ``images/``, ``labels/``, split lists and ``classes.txt`` (MSRC-21 here).

The layout users bring their own data in::

    <root>/images/NAME<image_suffix>    RGB images
    <root>/labels/NAME<label_suffix>    single-channel index maps: class ids 0..C-1, 255 = void
    <root>/train.txt, val.txt[, test.txt]   one NAME per line (or ``image label`` path pairs)
    <root>/classes.txt                  the C class names, one per line, in id order
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnm.datamodules.base import SegmentationDataModule
from mnm.datamodules.datasets import SampleRecord
from mnm.datamodules.errors import DataError
from mnm.datamodules.voc import voc_colormap

CLASSES_FILE = "classes.txt"


def read_class_names(path: Path) -> list[str]:
    """Class names, one per non-blank line, in id order; at most 255 (255 is void)."""
    if not path.is_file():
        raise DataError(f"{path}: class list does not exist (one class name per line, in id order)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: class list is empty")
    if len(names) > 255:
        raise DataError(f"{path}: {len(names)} classes; at most 255 fit an 8-bit label map with 255 = void")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: class names repeated: {', '.join(repeated)}")
    return names


class ListedSegmentationDataModule(SegmentationDataModule):
    """Images and index-map labels in two folders, splits as name lists, classes from ``classes.txt``.

    Args:
        root: the data set folder.
        class_names: the classes in id order; default: read from ``<root>/classes.txt``.
        image_dir, label_dir: the folders of images and labels under ``root``.
        image_suffix, label_suffix: file endings of images and labels (``.png``, ``.jpg``, ...).
        **kwargs: splits, label fractions, crops and loaders of :class:`SegmentationDataModule`.

    Label values must be class ids (``0..C-1``) or 255 (void, ignored); any other value stops
    the run with the label file named. The palette is the VOC colour map.
    """

    def __init__(
        self,
        root: str,
        class_names: list[str] | None = None,
        image_dir: str = "images",
        label_dir: str = "labels",
        image_suffix: str = ".png",
        label_suffix: str = ".png",
        **kwargs: Any,
    ) -> None:
        if not class_names and not Path(root).expanduser().is_dir():  # say so, not that classes.txt is missing
            raise DataError(f"{root}: dataset root (data.root) does not exist or is not a folder")
        names = list(class_names) if class_names else read_class_names(Path(root).expanduser() / CLASSES_FILE)
        self.CLASS_NAMES = tuple(names)
        self.PALETTE = tuple(voc_colormap(len(names)))
        self.image_dir, self.label_dir = image_dir, label_dir
        self.image_suffix, self.label_suffix = image_suffix, label_suffix
        super().__init__(root=root, **kwargs)

    def split_source(self, split: str) -> Path:
        return self.root / f"{split}.txt"

    def list_samples(self, split: str) -> list[SampleRecord]:
        def from_name(name: str) -> tuple[Path, Path]:
            return (self.root / self.image_dir / f"{name}{self.image_suffix}",
                    self.root / self.label_dir / f"{name}{self.label_suffix}")  # fmt: skip

        return self.records_from_list(self.split_source(split), from_name)
