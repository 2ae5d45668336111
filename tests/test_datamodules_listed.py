"""ListedSegmentationDataModule: the images/ labels/ split-list layout, on hand-made sets and on MSRC-21."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import blocks_label, random_image, save_gray_png, save_image

from mnm.datamodules import DataError, ListedSegmentationDataModule
from mnm.datamodules.label_subset import classes_present

CLASSES = ["sky", "grass", "cow", "car"]


def write_listed(root: Path, splits: dict[str, list[list[int]]], shape: tuple[int, int] = (24, 32)) -> Path:
    """A data set in the layout: per split, one sample per class list (bands of those classes, void borders)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for split, samples in splits.items():
        names = [f"{split}_{i}" for i in range(len(samples))]
        for i, (name, classes) in enumerate(zip(names, samples, strict=True)):
            save_image(root / "images" / f"{name}.png", random_image(shape, seed=i))
            save_gray_png(root / "labels" / f"{name}.png", blocks_label(shape, classes))
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    train = [[0, 1], [0, 2], [1, 3], [0, 1], [1, 2], [0, 1, 2], [3, 0], [1, 1]]
    return write_listed(tmp_path / "set", {"train": train, "val": [[0, 1, 2, 3]], "test": [[2, 3], [0]]})


def test_reads_the_layout_and_keeps_void(listed: Path) -> None:
    dm = ListedSegmentationDataModule(root=str(listed), crop_size=None, batch_size=2, val_batch_size=1)
    assert dm.num_classes == 4 and dm.class_names == CLASSES and len(dm.palette) == 4
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 1
    mask = next(iter(dm.val_dataloader()))["mask"][0]
    assert mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 1, 2, 3, 255}  # the band borders are void -> ignore index


def test_test_split_for_eval_split_test(listed: Path) -> None:
    dm = ListedSegmentationDataModule(root=str(listed), crop_size=None, test_split="test")
    dm.setup("test")
    assert [b["name"][0] for b in dm.test_dataloader()] == ["test_0", "test_1"]


def test_a_label_outside_the_classes_is_refused_with_the_file_named(listed: Path) -> None:
    bad = np.full((24, 32), 4, dtype=np.uint8)  # class id 4 of 4 classes
    save_gray_png(listed / "labels" / "val_0.png", bad)
    dm = ListedSegmentationDataModule(root=str(listed), crop_size=None)
    dm.setup("validate")
    with pytest.raises(DataError, match=r"labels/val_0\.png: label values \[4\] are not valid class ids"):
        next(iter(dm.val_dataloader()))


@pytest.mark.parametrize(("broken", "message"), [
    ("classes.txt", r"classes\.txt: class list does not exist"),
    ("images/train_3.png", r"images/train_3\.png: image does not exist"),
    ("val.txt", r"val\.txt: split list does not exist"),
])  # fmt: skip
def test_missing_files_are_named(listed: Path, broken: str, message: str) -> None:
    (listed / broken).unlink()
    with pytest.raises(DataError, match=message):
        ListedSegmentationDataModule(root=str(listed), crop_size=None).setup("fit")


def test_class_names_may_come_from_the_config(listed: Path) -> None:
    (listed / "classes.txt").unlink()
    dm = ListedSegmentationDataModule(root=str(listed), class_names=["a", "b", "c", "d"], crop_size=None)
    assert dm.num_classes == 4


def test_msrc_layout_and_fractions_keep_every_class(msrc_root: Path, tmp_path: Path) -> None:
    full = ListedSegmentationDataModule(root=str(msrc_root), crop_size=(96, 96), num_workers=0)
    assert full.num_classes == 21 and full.class_names[:3] == ["building", "grass", "tree"]
    full.setup("fit")
    assert (len(full.datasets["train"]), len(full.datasets["val"])) == (276, 59)
    every_class = set().union(*classes_present(full.datasets["train"].records))
    assert every_class == set(range(21))
    dm = ListedSegmentationDataModule(root=str(msrc_root), crop_size=(96, 96), labeled_fraction=0.125, seed=3)
    dm.setup("fit")
    labelled = dm.label_split.labeled
    assert len(labelled) == round(0.125 * 276)
    assert set().union(*classes_present(labelled)) == every_class
    dm.write_label_split(tmp_path)
    assert len((tmp_path / "labeled.txt").read_text().split()) == len(labelled)
    assert len((tmp_path / "unlabeled.txt").read_text().split()) == 276 - len(labelled)


@pytest.mark.slow
def test_msrc_protocol_evaluates_on_test_of_a_root_that_has_one(tmp_path: Path, repo_root: Path) -> None:
    """`mnm protocol conf/benchmarks/msrc_label_efficient.yaml --set data.root=ROOT --eval-split test`."""
    samples = [[0, 1], [0, 2], [1, 3], [0, 1], [1, 2], [0, 1, 2], [3, 0], [1, 1]]
    root = write_listed(tmp_path / "set", {"train": samples, "val": [[0, 1, 2, 3]], "test": [[2, 3], [0, 1]]},
                        shape=(72, 80))
    out = tmp_path / "out"
    sets = [f"data.root={root}", "data.crop_size=[64,64]", "data.num_workers=0", "ft_steps=2", "ft_drop=1",
            "wandb.enabled=false"]
    cmd = [sys.executable, "-m", "mnm", "protocol", "conf/benchmarks/msrc_label_efficient.yaml", "--out", str(out),
           "--fractions", "1.0", "--seeds", "0", "--arms", "ft_random", "--eval-split", "test",
           *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "protocol.json").read_text())
    assert report["eval_split"] == "test"
    (row,) = report["cells"]["f1-s0"]["arms"].values()
    assert 0.0 <= row["miou"] <= 1.0
    metrics = json.loads((out / "f1-s0" / "ft_random" / "metrics.json").read_text())
    assert metrics["eval"]["split"] == "test"
