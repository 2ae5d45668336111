"""``mnm data check ROOT --kind K``: every kind on tiny trees written here, and the real CamVid and MSRC-21 roots."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    blocks_label,
    random_image,
    save_gray_png,
    save_image,
    save_palette_png,
    write_cityscapes_pair,
    write_voc,
)

from mnm.cli import main

SHAPE = (24, 32)


def check(capsys: pytest.CaptureFixture[str], root: Path, kind: str, *more: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``mnm data check ROOT --kind KIND``."""
    try:
        main(["data", "check", str(root), "--kind", kind, *more])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usable(capsys: pytest.CaptureFixture[str], root: Path, kind: str) -> str:
    code, out, err = check(capsys, root, kind)
    assert code == 0 and not err and out.rstrip().endswith(f"usable as --kind {kind}") and "problem" not in out, out + err
    return out


def problems(out: str) -> list[str]:
    return [line.split("problem: ", 1)[1] for line in out.splitlines() if line.startswith("  problem: ")]


def assert_unusable(capsys: pytest.CaptureFixture[str], root: Path, kind: str, *more: str) -> list[str]:
    code, out, err = check(capsys, root, kind, *more)
    found = problems(out)
    assert code == 1 and found, out + err
    assert err.startswith("mnm: error: ") and f"not usable as --kind {kind}: {len(found)} problem(s) above" in err
    assert len(err.strip().splitlines()) == 1, err
    return found


def test_voc_usable_then_a_missing_and_an_out_of_range_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    out = assert_usable(capsys, tmp_path, "voc")  # the folder above VOCdevkit is found too
    assert f"the VOC2012 folder is {voc}" in out
    assert "train: 3 samples" in out and "val: 2 samples" in out and "2 image/mask pairs decoded and checked, 0 bad" in out
    (voc / "SegmentationClass" / "2007_000001.png").unlink()
    save_palette_png(voc / "SegmentationClass" / "2007_000004.png", blocks_label(SHAPE, [0, 30]))
    found = assert_unusable(capsys, voc, "voc")
    assert found[0] == (f"split 'train': 1 of 3 masks do not exist, e.g. {voc / 'SegmentationClass' / '2007_000001.png'}")
    assert found[1].startswith(f"{voc / 'SegmentationClass' / '2007_000004.png'}: label values [30] are not valid "
                               "class ids (expected 0..20 or 255)")
    assert found[1].endswith(f"(listed in {voc / 'ImageSets/Segmentation/val.txt'}:1)")
    assert len(found) == 2


def test_voc_aug_needs_its_masks_and_a_train_aug_without_val(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = write_voc(tmp_path / "VOC2012")
    found = assert_unusable(capsys, voc, "voc-aug")
    assert found[0] == f"{voc / 'SegmentationClassAug'}: missing"
    assert found[1].startswith("split 'train_aug': ") and "train_aug.txt: list for split 'train_aug'" in found[1]
    _, _, err = check(capsys, voc, "voc-aug")
    assert "to get it: build it with: mnm data voc-aug DIR" in err
    shutil.copytree(voc / "SegmentationClass", voc / "SegmentationClassAug")
    listed = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    listed.write_text("2007_000001\n2007_000002\n2007_000003\n2007_000004\n")
    found = assert_unusable(capsys, voc, "voc-aug")
    assert found == [f"{listed}: lists 1 val images, e.g. 2007_000004 (val would be scored on training images)"]
    listed.write_text("2007_000001\n2007_000002\n2007_000003\n")
    out = assert_usable(capsys, voc, "voc-aug")
    assert "train_aug has 3 samples; the usual set has 10,582" in out


def test_cityscapes_usable_then_an_image_without_mask_and_a_bad_label_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    label_ids = np.full(SHAPE, 7, np.uint8)
    label_ids[:, :8] = 26
    for split in ("train", "val"):
        write_cityscapes_pair(tmp_path, split, "aachen", f"aachen_000000_00001{int(split == 'val')}", label_ids)
    assert "train: 1 samples" in assert_usable(capsys, tmp_path, "cityscapes")
    save_image(tmp_path / "leftImg8bit" / "train" / "bonn" / "bonn_000000_000019_leftImg8bit.png", random_image(SHAPE))
    bad = label_ids.copy()
    bad[0, 0] = 40
    save_gray_png(tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000011_gtFine_labelIds.png", bad)
    found = assert_unusable(capsys, tmp_path, "cityscapes")
    missing = tmp_path / "gtFine" / "train" / "bonn" / "bonn_000000_000019_gtFine_labelIds.png"
    assert found[0] == f"split 'train': 1 of 2 masks do not exist, e.g. {missing}"
    assert "label values [40] are not valid class ids (expected Cityscapes label ids 0..33 or 255)" in found[1]
    shutil.rmtree(tmp_path / "gtFine")
    assert f"{tmp_path / 'gtFine'}: missing" in assert_unusable(capsys, tmp_path, "cityscapes")


def test_camvid_real_root_is_usable_and_a_tiny_tree_lists_what_it_lacks(
        camvid_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = assert_usable(capsys, camvid_root, "camvid")
    assert "train: 367 samples" in out and "val: 101 samples" in out and "25 image/mask pairs decoded" in out
    for split in ("train", "val"):
        save_image(tmp_path / split / "0001TP_006690.png", random_image(SHAPE))
        (tmp_path / f"{split}.txt").write_text(f"/SegNet/CamVid/{split}/0001TP_006690.png "
                                               f"/SegNet/CamVid/{split}annot/0001TP_006690.png\n")
    save_gray_png(tmp_path / "valannot" / "0001TP_006690.png", np.full((SHAPE[0], SHAPE[1] + 1), 3, np.uint8))
    found = assert_unusable(capsys, tmp_path, "camvid")
    assert found[0] == f"{tmp_path / 'trainannot'}: missing"
    assert found[1] == f"split 'train': 1 of 1 masks do not exist, e.g. {tmp_path / 'trainannot' / '0001TP_006690.png'}"
    assert found[2].startswith(f"{tmp_path / 'valannot' / '0001TP_006690.png'}: label size 24x33 differs from image "
                               "size 24x32")


def test_msrc_real_root_is_usable_and_labels_are_checked_against_classes_txt(
        msrc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = assert_usable(capsys, msrc_root, "msrc")
    assert "train: 276 samples" in out and "val: 59 samples" in out
    for split, name in (("train", "a"), ("val", "b")):
        save_image(tmp_path / "images" / f"{name}.png", random_image(SHAPE))
        save_gray_png(tmp_path / "labels" / f"{name}.png", blocks_label(SHAPE, [0, 1, 2]))
        (tmp_path / f"{split}.txt").write_text(f"{name}\n{name}\n" if split == "val" else f"{name}\n")
    assert assert_unusable(capsys, tmp_path, "msrc") == [
        f"{tmp_path / 'classes.txt'}: missing",
        f"{tmp_path / 'classes.txt'}: class list does not exist (one class name per line, in id order)"]
    (tmp_path / "classes.txt").write_text("sky\ngrass\n")
    found = assert_unusable(capsys, tmp_path, "msrc", "--sample", "0")  # existence only: the label values are not read
    assert found == [f"{tmp_path / 'val.txt'}: 1 names listed more than once, e.g. b"]
    found = assert_unusable(capsys, tmp_path, "msrc")
    assert f"{tmp_path / 'labels' / 'a.png'}: label values [2] are not valid class ids (expected 0..1 or 255)" in found[0]


def test_a_missing_root_is_one_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert assert_unusable(capsys, tmp_path / "nowhere", "voc") == [f"{tmp_path / 'nowhere'}: does not exist or is not a folder"]
