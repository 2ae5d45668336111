"""COCO-Stuff 164k with the 27 coarse classes of unsupervised segmentation (IIC, PiCIE, STEGO).

Layout (as PiCIE and STEGO read it): ``<root>/images/<split>/<id>.jpg`` and ``<root>/annotations/<split>/<id>.png``
(the ``stuffthingmaps`` PNGs: fine ids 0..181, 255 unlabelled), splits ``train2017`` and ``val2017``. The fine ids map
to the 27 mid-level categories of the COCO-Stuff label hierarchy: the 12 thing supercategories (0..11) and the 15
stuff ones (12..26), in the order of the fine-to-coarse table used by IIC, PiCIE (``fine_to_coarse_dict.pickle``) and
STEGO (``data.py``, ``Coco.fine_to_coarse``). ``image_list`` names a list of ids (one per line) inside the split
folder, e.g. the curated ``curated/val2017/Coco164kFull_Stuff_Coarse_7.txt`` those papers evaluate on; without it
every image of the split is used.
"""

from pathlib import Path

from mnm.datamodules.base import SegmentationDataModule
from mnm.datamodules.datasets import SampleRecord
from mnm.datamodules.errors import DataError
from mnm.datamodules.readers import LabelMapping

COCOSTUFF27_CLASSES = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor", "person",
    "sports", "vehicle",  # things
    "ceiling", "floor", "food-stuff", "furniture-stuff", "raw material", "textile", "wall", "window", "building",
    "ground", "plant", "sky", "solid", "structural", "water",  # stuff
)  # fmt: skip
# coarse class of each fine id 0..181 (things 0..90, stuff 91..181)
FINE_TO_COARSE = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6,
    10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4,
    17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13,
    22, 26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21,
    25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14,
    18, 18, 18, 18, 18, 18, 18, 26, 26, 19, 19, 24,
)  # fmt: skip
# a distinct colour per coarse class (ours; the dataset defines none for the coarse level)
COCOSTUFF27_PALETTE = tuple(
    ((37 * i + 80) % 256, (97 * i + 40) % 256, (157 * i + 160) % 256) for i in range(len(COCOSTUFF27_CLASSES))
)
FINE_IDS = LabelMapping.from_table(dict(enumerate(FINE_TO_COARSE)), "COCO-Stuff fine ids 0..181 or 255")


class CocoStuff27DataModule(SegmentationDataModule):
    """COCO-Stuff 164k, 27 coarse classes (12 things + 15 stuff); ``train_split``/``val_split`` default to the 2017 folders.

    Args:
        image_list: a file of image ids (one per line), relative to ``<root>/curated/<split>/`` or absolute;
            ``None`` lists every ``*.jpg`` of the split.
        **kwargs: the settings of :class:`SegmentationDataModule`.
    """

    CLASS_NAMES = COCOSTUFF27_CLASSES
    PALETTE = COCOSTUFF27_PALETTE

    def __init__(self, root: str, train_split: str = "train2017", val_split: str = "val2017",
                 image_list: str | None = None, **kwargs) -> None:
        super().__init__(root, train_split=train_split, val_split=val_split, **kwargs)
        self.image_list = image_list

    def build_label_mapping(self) -> LabelMapping:
        return FINE_IDS

    def split_source(self, split: str) -> Path:
        return self.root / "images" / split

    def list_samples(self, split: str) -> list[SampleRecord]:
        image_dir = self.split_source(split)
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image folder for split '{split}' does not exist")

        def from_name(name: str) -> tuple[Path, Path]:
            return image_dir / f"{name}.jpg", self.root / "annotations" / split / f"{name}.png"

        if self.image_list is None:
            return [SampleRecord(*from_name(p.stem), p.stem, self.label_mapping) for p in sorted(image_dir.glob("*.jpg"))]
        listed = Path(self.image_list)
        listed = listed if listed.is_absolute() else self.root / "curated" / split / listed
        return self.records_from_list(listed, from_name)
