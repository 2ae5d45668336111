"""Bad data stops with one clear DataError naming the file; ``skip_bad`` skips, logs once and counts."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import blocks_label, random_image, save_gray_png, save_image, save_palette_png, write_voc
from PIL import Image

from mnm.datamodules import (
    CamVidDataModule,
    CityscapesDataModule,
    DataError,
    ImageFolderDataModule,
    SegmentationDataModule,
    VOCDataModule,
)

SHAPE = (24, 32)
TRAIN = ["2007_000001", "2007_000002", "2007_000003", "2007_000004", "2007_000005", "2007_000006"]


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return write_voc(
        tmp_path / "VOC2012", {"train": TRAIN, "val": ["2007_000007", "2007_000008"]}, shape=SHAPE
    )


def setup_error(dm: SegmentationDataModule, stage: str = "fit") -> str:
    with pytest.raises(DataError) as info:
        dm.setup(stage)
    return str(info.value)


def read_error(dm: SegmentationDataModule) -> str:
    dm.setup("fit")
    dataset = dm.datasets["train"]
    with pytest.raises(DataError) as info:
        for i in range(len(dataset)):
            dataset[i]
    return str(info.value)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    message = setup_error(VOCDataModule(root=str(root)))
    assert str(root) in message and "does not exist" in message and "data.root" in message


def test_missing_split_list(voc: Path) -> None:
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    message = setup_error(VOCDataModule(root=str(voc)))
    assert "val.txt" in message and "not found" in message


def test_missing_listed_image(voc: Path) -> None:
    (voc / "JPEGImages" / "2007_000002.jpg").unlink()
    message = setup_error(VOCDataModule(root=str(voc)))
    assert "2007_000002.jpg" in message and "image does not exist" in message and "train.txt:2" in message


def test_missing_listed_label(voc: Path) -> None:
    (voc / "SegmentationClass" / "2007_000007.png").unlink()
    message = setup_error(VOCDataModule(root=str(voc)))
    assert "2007_000007.png" in message and "label does not exist" in message and "val.txt:1" in message


def test_unreadable_image(voc: Path) -> None:
    (voc / "JPEGImages" / "2007_000003.jpg").write_bytes(b"this is not a JPEG file")
    message = setup_error(VOCDataModule(root=str(voc)))
    assert "2007_000003.jpg" in message and "unreadable image" in message


def test_truncated_image_fails_at_read_time(voc: Path) -> None:
    truncate(voc / "JPEGImages" / "2007_000004.jpg")
    message = read_error(VOCDataModule(root=str(voc)))  # the header is intact: setup passes
    assert "2007_000004.jpg" in message and "truncated" in message


def test_label_size_differs_from_image(voc: Path) -> None:
    save_palette_png(voc / "SegmentationClass" / "2007_000005.png", blocks_label((20, 32), [0, 1]))
    message = setup_error(VOCDataModule(root=str(voc)))
    assert "2007_000005.png" in message and "label size 20x32 differs from image size 24x32" in message


def test_label_values_outside_the_classes(voc: Path) -> None:
    save_gray_png(voc / "SegmentationClass" / "2007_000006.png", blocks_label(SHAPE, [0, 30, 21]))
    message = read_error(VOCDataModule(root=str(voc)))
    assert "2007_000006.png" in message and "[21, 30]" in message and "0..20 or 255" in message


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_label_file_is_an_error(voc: Path, mode: str) -> None:
    colour = Image.fromarray(random_image(SHAPE)).convert(mode)
    colour.save(voc / "SegmentationClass" / "2007_000001.png")
    message = setup_error(VOCDataModule(root=str(voc)))
    assert "2007_000001.png" in message and f"mode-{mode}" in message and "index map" in message


def test_empty_split(voc: Path) -> None:
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    message = setup_error(VOCDataModule(root=str(voc)))
    assert "val.txt" in message and "split 'val' is empty" in message


def test_unset_test_split_and_predict_dir(voc: Path) -> None:
    dm = VOCDataModule(root=str(voc))
    assert "test_split is not set" in setup_error(dm, "test")
    assert "predict_dir is not set" in setup_error(dm, "predict")


def test_bad_settings_fail_at_init(voc: Path) -> None:
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        VOCDataModule(root=str(voc), batch_size=0)
    with pytest.raises(DataError, match="crop_size"):
        VOCDataModule(root=str(voc), crop_size=(0, 10))


def test_cityscapes_missing_split_and_label(tmp_path: Path) -> None:
    message = setup_error(CityscapesDataModule(root=str(tmp_path)))
    assert str(tmp_path / "leftImg8bit" / "train") in message and "does not exist" in message
    for split in ("train", "val"):
        save_image(
            tmp_path / "leftImg8bit" / split / "ulm" / "ulm_000000_000019_leftImg8bit.png",
            random_image(SHAPE),
        )
    message = setup_error(CityscapesDataModule(root=str(tmp_path)))
    assert "ulm_000000_000019_gtFine_labelIds.png" in message and "label does not exist" in message


def test_camvid_missing_list(tmp_path: Path) -> None:
    message = setup_error(CamVidDataModule(root=str(tmp_path)))
    assert str(tmp_path / "train.txt") in message and "does not exist" in message


def test_image_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    message = setup_error(ImageFolderDataModule(root=str(tmp_path)))
    assert str(tmp_path) in message and "found 0 image(s)" in message


def _break_four(voc: Path) -> set[str]:
    """Two samples bad at setup (missing image, RGB label), two only at read time (values, truncation)."""
    (voc / "JPEGImages" / "2007_000002.jpg").unlink()
    Image.fromarray(random_image(SHAPE)).save(voc / "SegmentationClass" / "2007_000003.png")
    save_gray_png(voc / "SegmentationClass" / "2007_000004.png", np.full(SHAPE, 40, np.uint8))
    truncate(voc / "JPEGImages" / "2007_000005.jpg")
    return {"2007_000002", "2007_000003", "2007_000004", "2007_000005"}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_bad_skips_logs_each_once_and_counts(
    voc: Path, caplog: pytest.LogCaptureFixture, num_workers: int
) -> None:
    bad = _break_four(voc)
    assert "2007_000002.jpg" in setup_error(VOCDataModule(root=str(voc)))  # default: stop
    dm = VOCDataModule(
        root=str(voc), skip_bad=True, batch_size=1, num_workers=num_workers, crop_size=(16, 16)
    )
    with caplog.at_level(logging.WARNING, logger="mnm.datamodules"):
        dm.setup("fit")
        assert dm.num_skipped == 2
        assert "skipped 2 of 6 samples" in caplog.text
        seen: set[str] = set()
        loader = dm.train_dataloader()
        for _ in range(3):  # several epochs: read-time bad samples are still logged once
            for batch in loader:
                seen.update(batch["name"])
    assert seen == set(TRAIN) - bad
    assert dm.num_skipped == 4  # read-time skips in worker processes are counted too
    if num_workers:
        return  # worker processes log to their own handlers, which caplog does not see
    for name in ("2007_000002.jpg", "2007_000003.png", "2007_000004.png", "2007_000005.jpg"):
        assert caplog.text.count(name) == 1, name


@pytest.mark.slow
def test_worker_errors_reach_the_cli_as_one_line(voc: Path, tmp_path: Path) -> None:
    """A truncated image read in a DataLoader worker gives the same one-line error as with 0 workers."""
    truncate(voc / "JPEGImages" / "2007_000004.jpg")
    args = ["segment", "fit", "--data", "mnm.datamodules.VOCDataModule", f"--data.root={voc}",
            "--data.num_workers=2", "--data.batch_size=6", "--data.crop_size=[64, 64]", "--model.backbone=alexnet",
            "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path / 'out'}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "mnm", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("mnm: error: ") and "2007_000004.jpg: unreadable or truncated image" in last[0]
    assert "DataLoader worker" not in proc.stderr and "Traceback" not in proc.stderr
