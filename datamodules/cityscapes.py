"""Cityscapes fine annotations (``leftImg8bit/`` + ``gtFine/``): 19 train ids, or the 27 classes of unsupervised segmentation."""

from pathlib import Path

from mnm.datamodules.base import SegmentationDataModule
from mnm.datamodules.datasets import SampleRecord
from mnm.datamodules.errors import DataError
from mnm.datamodules.readers import IGNORE_INDEX, LabelMapping

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
# Official label definition: label id -> train id for the 19 evaluated classes.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
NUM_LABEL_IDS = 34  # ids 0..33; everything not in the table is ignored

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"

LABEL_IDS = LabelMapping.from_table(
    {i: LABEL_ID_TO_TRAIN_ID.get(i, IGNORE_INDEX) for i in range(NUM_LABEL_IDS)},
    f"Cityscapes label ids 0..{NUM_LABEL_IDS - 1} or 255",
)


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes; ``root`` holds ``leftImg8bit/<split>/<city>/`` and ``gtFine/<split>/<city>/``.

    Uses ``*_gtFine_labelTrainIds.png`` when present, else maps
    ``*_gtFine_labelIds.png`` to the 19 train ids (all other ids → 255).
    """

    CLASS_NAMES = CITYSCAPES_CLASSES
    PALETTE = CITYSCAPES_PALETTE
    #: read ``*_labelTrainIds.png`` when present (they hold the 19 train ids)
    USE_TRAIN_IDS = True
    #: how ``*_labelIds.png`` values become classes
    LABEL_IDS_MAPPING = LABEL_IDS

    def split_source(self, split: str) -> Path:
        return self.root / "leftImg8bit" / split

    def list_samples(self, split: str) -> list[SampleRecord]:
        image_dir = self.split_source(split)
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image folder for split '{split}' does not exist")
        records = []
        for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            label_dir = self.root / "gtFine" / split / image.parent.name
            train_ids = label_dir / f"{stem}{TRAIN_IDS_SUFFIX}"
            if self.USE_TRAIN_IDS and train_ids.is_file():
                records.append(SampleRecord(image, train_ids, stem, self.label_mapping))
            else:
                records.append(SampleRecord(image, label_dir / f"{stem}{LABEL_IDS_SUFFIX}", stem, self.LABEL_IDS_MAPPING))
        return records


# The 27 classes of the unsupervised-segmentation benchmarks (PiCIE, janghyuncho/PiCIE data/cityscapes_eval_dataset.py;
# STEGO, CityscapesSeg): every label id from 7 (road) to 33 (bicycle), in id order; ids 0-6 (void) are ignored.
CITYSCAPES27_CLASSES = (
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel",
    "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)  # fmt: skip
# the official colours of those label ids (cityscapesScripts labels.py)
CITYSCAPES27_PALETTE = (
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90), (153, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
FIRST_NON_VOID_ID = 7
LABEL_IDS_27 = LabelMapping.from_table(
    {i: i - FIRST_NON_VOID_ID if i >= FIRST_NON_VOID_ID else IGNORE_INDEX for i in range(NUM_LABEL_IDS)},
    f"Cityscapes label ids 0..{NUM_LABEL_IDS - 1} or 255",
)


class Cityscapes27DataModule(CityscapesDataModule):
    """Cityscapes with the 27 classes of unsupervised segmentation (label ids 7..33 -> 0..26, void ids ignored).

    Always reads ``*_gtFine_labelIds.png`` (train-id files hold only 19 classes).
    """

    CLASS_NAMES = CITYSCAPES27_CLASSES
    PALETTE = CITYSCAPES27_PALETTE
    USE_TRAIN_IDS = False
    LABEL_IDS_MAPPING = LABEL_IDS_27
