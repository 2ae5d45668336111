"""The synthetic VOC-layout generator: deterministic, colour-ambiguous classes, loads through the VOC loader."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnm.commands.data_synth import main
from mnm.datamodules import DataError, SyntheticDataModule, VOCDataModule
from mnm.datamodules.synthetic import MARKER, SYNTHETIC_CLASSES, generate
from mnm.datamodules.voc import voc_colormap

SMALL = {"num_train": 4, "num_val": 2, "image_size": (48, 64)}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_pair(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(root / "JPEGImages" / f"{name}.jpg"), dtype=np.float64)
    return image, np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = tree_bytes(generate(tmp_path / "a", seed=3, **SMALL))
    b = tree_bytes(generate(tmp_path / "b", seed=3, **SMALL))
    c = tree_bytes(generate(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.startswith("JPEGImages/"))


def test_writes_the_exact_voc_layout(tmp_path: Path) -> None:
    root = generate(tmp_path / "VOC2012", seed=0, **SMALL)
    lists = root / "ImageSets" / "Segmentation"
    train = (lists / "train.txt").read_text().split()
    val = (lists / "val.txt").read_text().split()
    assert len(train) == 4 and len(val) == 2 and (lists / "trainval.txt").read_text().split() == train + val
    for name in train + val:
        label_png = Image.open(root / "SegmentationClass" / f"{name}.png")
        assert label_png.mode == "P" and label_png.size == (64, 48)
        palette = label_png.getpalette()
        assert [tuple(palette[3 * i : 3 * i + 3]) for i in (1, 255)] == [
            voc_colormap(256)[i] for i in (1, 255)
        ]
        image = Image.open(root / "JPEGImages" / f"{name}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 48)


def test_thin_ignore_ring_separates_every_region(tmp_path: Path) -> None:
    root = generate(tmp_path / "s", num_train=6, num_val=1, image_size=(64, 64), seed=1)
    for name in (root / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split():
        label = read_pair(root, name)[1]
        assert set(np.unique(label).tolist()) <= set(range(len(SYNTHETIC_CLASSES))) | {255}
        assert (label > 0).any() and (label == 255).any()
        assert (label == 255).mean() < 0.25  # a thin ring, not a blanket
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            touching = (a != 255) & (b != 255)
            assert (a[touching] == b[touching]).all(), "two classes touch without a 255 ring between them"


def test_classes_share_one_colour_distribution(tmp_path: Path) -> None:
    root = generate(tmp_path / "s", num_train=200, num_val=1, image_size=(64, 64), seed=0)
    pixels: dict[int, list[np.ndarray]] = {c: [] for c in range(1, len(SYNTHETIC_CLASSES))}
    for name in (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split():
        image, label = read_pair(root, name)
        for cls, chunks in pixels.items():
            if (label == cls).any():
                chunks.append(image[label == cls])
    means = np.stack([np.concatenate(chunks).mean(0) for chunks in pixels.values()])
    spread = np.stack([np.concatenate(chunks).std(0) for chunks in pixels.values()])
    gap = np.abs(means[:, None] - means[None]).max()
    assert spread.min() > 30.0  # each class spans a wide range of colours ...
    assert gap < 0.4 * spread.min()  # ... and the class means are close together within it
    # Nearest-class-mean on each object's mean colour is near chance (1 / 5).
    features = np.stack([chunk.mean(0) for chunks in pixels.values() for chunk in chunks])
    targets = np.concatenate([np.full(len(chunks), i) for i, chunks in enumerate(pixels.values())])
    predicted = np.argmin(((features[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == targets).mean() < 0.35


def test_other_arguments_on_an_existing_root_are_refused(tmp_path: Path) -> None:
    root = generate(tmp_path / "s", seed=0, **SMALL)
    assert generate(root, seed=0, **SMALL) == root  # same arguments: nothing to do
    with pytest.raises(DataError, match=f"{MARKER}.*seed"):
        generate(root, seed=1, **SMALL)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match="not an mnm synthetic dataset"):
        generate(tmp_path / "user", **SMALL)


def test_cli_main(tmp_path: Path) -> None:
    argv = [
        "--root",
        str(tmp_path / "s"),
        "--num-train",
        "3",
        "--num-val",
        "2",
        "--size",
        "32",
        "48",
        "--seed",
        "7",
    ]
    assert main(argv) == 0
    assert len((tmp_path / "s" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()) == 3
    assert Image.open(tmp_path / "s" / "JPEGImages" / "synth_000000.jpg").size == (48, 32)
    with pytest.raises(DataError, match="not the requested"):
        main([*argv[:-1], "8"])


def test_loads_through_the_voc_loader(tmp_path: Path) -> None:
    root = generate(tmp_path / "s", seed=0, **SMALL)
    voc = VOCDataModule(root=str(root), crop_size=(32, 32), batch_size=2)
    batch = next(iter(voc.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].dtype == torch.int64
    assert len(voc.datasets["val"]) == 2


def test_synthetic_datamodule_generates_on_demand(tmp_path: Path) -> None:
    dm = SyntheticDataModule(root=str(tmp_path / "s"), data_seed=2, crop_size=(32, 32), batch_size=2, **SMALL)
    assert dm.num_classes == len(dm.class_names) == len(dm.palette) == 6 and dm.class_names[4] == "stripes"
    dm.prepare_data()
    assert (tmp_path / "s" / MARKER).is_file()
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (2, 32, 32) and set(batch["mask"].unique().tolist()) <= {
        0,
        1,
        2,
        3,
        4,
        5,
        255,
    }
    other = SyntheticDataModule(root=str(tmp_path / "s"), data_seed=3, **SMALL)
    with pytest.raises(DataError, match="not the requested"):
        other.setup("fit")


@pytest.mark.slow
def test_the_cli_refuses_a_foreign_root_and_leaves_it_untouched(tmp_path: Path) -> None:
    """Through the real ``mnm`` command: a user's folder, a file and another synthetic set are refused."""
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("keep me")
    (tmp_path / "afile").write_text("a file")
    generate(tmp_path / "other", seed=5, **SMALL)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for root, reason in (("user", "not an mnm synthetic dataset"), ("afile", "not an mnm synthetic dataset"),
                         ("other", "not the requested")):
        before = sorted(p.name for p in (tmp_path / root).rglob("*"))
        proc = subprocess.run([sys.executable, "-m", "mnm", "data", "synth", "--root", str(tmp_path / root)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 1 and proc.stderr.startswith(f"mnm: error: {tmp_path / root}") and reason in proc.stderr
        assert sorted(p.name for p in (tmp_path / root).rglob("*")) == before
    assert (tmp_path / "user" / "thesis.tex").read_text() == "keep me"
