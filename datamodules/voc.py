"""PASCAL VOC 2012 (``VOCdevkit/VOC2012``), including the SBD-augmented ``train_aug`` split."""

from pathlib import Path

from mnm.datamodules.base import SegmentationDataModule
from mnm.datamodules.datasets import SampleRecord
from mnm.datamodules.errors import DataError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
# under the ``VOC2012`` folder: the split lists, the images, VOC's masks and the SBD-augmented masks
LIST_DIR = "ImageSets/Segmentation"
IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClass"
AUG_LABEL_DIR = "SegmentationClassAug"
AUG_SUFFIX = "_aug"  # a split named ``*_aug`` reads AUG_LABEL_DIR


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The standard VOC colour map: the bits of the index are spread over R, G, B from the top bit down."""
    colours = []
    for index in range(n):
        r = g = b = 0
        bits = index
        for shift in range(7, -1, -1):
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        colours.append((r, g, b))
    return colours


class VOCDataModule(SegmentationDataModule):
    """VOC 2012 segmentation; ``root`` is the ``VOC2012`` folder.

    Splits are ``ImageSets/Segmentation/<split>.txt``. A split whose name ends
    in ``_aug`` (``train_aug``: the 10,582-image SBD-augmented set) reads labels
    from ``SegmentationClassAug/`` and its list may also sit in ``root``. Lists
    hold image ids, or ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` pairs.
    """

    CLASS_NAMES = VOC_CLASSES
    PALETTE = tuple(voc_colormap(len(VOC_CLASSES)))

    @staticmethod
    def _is_aug(split: str) -> bool:
        return split.endswith(AUG_SUFFIX)

    def split_source(self, split: str) -> Path:
        candidates = [self.root / LIST_DIR / f"{split}.txt"]
        if self._is_aug(split):
            candidates.append(self.root / f"{split}.txt")
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = " or ".join(str(c) for c in candidates)
        raise DataError(
            f"{candidates[0]}: list for split '{split}' (data.train_split/val_split) not found at {looked}"
        )

    def list_samples(self, split: str) -> list[SampleRecord]:
        label_dir = self.root / (AUG_LABEL_DIR if self._is_aug(split) else LABEL_DIR)

        def from_name(name: str) -> tuple[Path, Path]:
            return self.root / IMAGE_DIR / f"{name}.jpg", label_dir / f"{name}.png"

        return self.records_from_list(self.split_source(split), from_name)
