"""The 27-class DataModules of unsupervised segmentation: Cityscapes-27 and COCO-Stuff-27."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import random_image, save_gray_png, save_image, write_cityscapes_pair

from mnm.datamodules import Cityscapes27DataModule, CocoStuff27DataModule, DataError

NO_AUGMENT = {"crop_size": None, "scale_range": (1.0, 1.0), "hflip": False, "batch_size": 1}


def _blocks(values: list[list[int]]) -> np.ndarray:
    return np.kron(np.array(values, dtype=np.uint8), np.ones((4, 4), dtype=np.uint8))


def test_cityscapes27_maps_label_ids_7_to_33_and_ignores_void(tmp_path: Path) -> None:
    label_ids = _blocks([[7, 9, 0, 33], [18, 30, 6, 255]])  # road, parking, void / polegroup, trailer, void
    for split in ("train", "val"):
        # a train-id file (19 classes) is present but must not be read
        write_cityscapes_pair(tmp_path, split, "aachen", "aachen_000000_000019", label_ids, np.zeros_like(label_ids))
    dm = Cityscapes27DataModule(root=str(tmp_path), **NO_AUGMENT)
    assert dm.num_classes == 27 and dm.class_names[2] == "parking" and len(dm.palette) == 27
    dm.setup("fit")
    mask = next(iter(dm.val_dataloader()))["mask"][0]
    expected = np.array([[0, 2, 255, 26], [11, 23, 255, 255]])
    assert torch.equal(mask, torch.from_numpy(np.kron(expected, np.ones((4, 4), dtype=np.int64))))


def _write_coco(root: Path, split: str, ids: list[str], fine: np.ndarray) -> None:
    for i, name in enumerate(ids):
        save_image(root / "images" / split / f"{name}.jpg", random_image(fine.shape, seed=i))
        save_gray_png(root / "annotations" / split / f"{name}.png", fine)


def test_cocostuff27_maps_fine_ids_to_coarse_classes(tmp_path: Path) -> None:
    fine = _blocks([[0, 2, 255], [91, 148, 181]])  # person, car / banner, road, wood
    for split in ("train2017", "val2017"):
        _write_coco(tmp_path, split, ["000000000139", "000000000285"], fine)
    for split in ("train2017", "val2017"):  # the list has the same name in every split's curated folder
        (tmp_path / "curated" / split).mkdir(parents=True)
        (tmp_path / "curated" / split / "subset.txt").write_text("000000000285\n")
    dm = CocoStuff27DataModule(root=str(tmp_path), image_list="subset.txt", **NO_AUGMENT)
    assert dm.num_classes == 27 and dm.class_names[9] == "person" and dm.class_names[21] == "ground"
    dm.setup("fit")
    assert [r.name for r in dm.datasets["val"].records] == ["000000000285"]  # the curated list
    mask = next(iter(dm.val_dataloader()))["mask"][0]
    expected = np.array([[9, 11, 255], [17, 21, 24]])  # person, vehicle / textile, ground, solid
    assert torch.equal(mask, torch.from_numpy(np.kron(expected, np.ones((4, 4), dtype=np.int64))))


def test_cocostuff27_missing_split_names_the_folder(tmp_path: Path) -> None:
    dm = CocoStuff27DataModule(root=str(tmp_path), **NO_AUGMENT)
    with pytest.raises(DataError, match="images/train2017"):
        dm.setup("fit")
