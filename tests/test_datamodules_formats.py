"""VOC, Cityscapes, image-folder and predict loaders on fixtures written in the real on-disk layouts."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from data_fixtures import (
    VOC_PALETTE,
    blocks_label,
    random_image,
    save_gray_png,
    save_image,
    save_palette_png,
    write_cityscapes_pair,
    write_voc,
)
from torch.utils.data import DataLoader

from mnm.datamodules import (
    CityscapesDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    VOCDataModule,
    loader_throughput,
)
from mnm.datamodules.datasets import pad_collate
from mnm.datamodules.sampling import ResumableSampler
from mnm.datamodules.voc import voc_colormap

NO_AUGMENT = {"crop_size": None, "scale_range": (1.0, 1.0), "hflip": False}


def test_voc_colormap_is_the_standard_one() -> None:
    cmap = voc_colormap(256)
    assert cmap[:5] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert cmap[15] == (192, 128, 128) and cmap[20] == (0, 64, 128) and cmap[255] == (224, 224, 192)


def test_metadata_is_available_right_after_init(tmp_path: Path) -> None:
    voc = VOCDataModule(root=str(tmp_path / "not-yet-there"))
    assert voc.num_classes == 21 and voc.ignore_index == 255
    assert voc.class_names[0] == "background" and voc.class_names[15] == "person"
    assert voc.palette == voc_colormap(21) and all(isinstance(c, tuple) for c in voc.palette)
    city = CityscapesDataModule(root=str(tmp_path))
    assert city.num_classes == len(city.class_names) == len(city.palette) == 19
    assert city.class_names[13] == "car" and city.palette[0] == (128, 64, 128)


def test_voc_palette_pngs_decode_to_class_indices(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC2012", shape=(24, 32), classes=[0, 15, 7])
    # The class is the palette index, whatever colours the palette holds.
    inverted = [255 - c for c in VOC_PALETTE]
    save_palette_png(
        root / "SegmentationClass" / "2007_000005.png", blocks_label((24, 32), [0, 15, 7]), inverted
    )
    dm = VOCDataModule(root=str(root), val_batch_size=2)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    expected = torch.from_numpy(blocks_label((24, 32), [0, 15, 7])).long()
    assert batch["name"] == ["2007_000004", "2007_000005"]
    assert batch["image"].shape == (2, 3, 24, 32) and batch["image"].dtype == torch.float32
    assert torch.equal(batch["mask"][0], expected) and torch.equal(batch["mask"][1], expected)


@pytest.mark.parametrize("list_location", ["root", "imagesets"])
def test_train_aug_reads_segmentation_class_aug(tmp_path: Path, list_location: str) -> None:
    root = write_voc(tmp_path / "VOC2012")
    names = ["2008_000010", "2008_000011", "2008_000012"]
    for i, name in enumerate(names):
        save_image(root / "JPEGImages" / f"{name}.jpg", random_image((24, 32), seed=10 + i))
        save_gray_png(
            root / "SegmentationClassAug" / f"{name}.png", blocks_label((24, 32), [3, 9], border=False)
        )
    if list_location == "root":  # the widely distributed DeepLab format: path pairs relative to the VOC root
        text = "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in names)
        (root / "train_aug.txt").write_text(text)
    else:
        (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(names) + "\n")
    dm = VOCDataModule(root=str(root), train_split="train_aug", batch_size=3, **NO_AUGMENT)
    dm.setup("fit")
    records = dm.datasets["train"].records
    assert [r.name for r in records] == names
    assert all(r.label.parent.name == "SegmentationClassAug" for r in records)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["mask"].unique().tolist()) == {3, 9}
    assert len(dm.datasets["val"]) == 2  # val still reads SegmentationClass


def test_cityscapes_label_ids_map_to_train_ids(tmp_path: Path) -> None:
    ids = np.array([[7, 26, 0, 33], [24, 11, 4, 255]], dtype=np.uint8)
    label_ids = np.kron(ids, np.ones((4, 4), dtype=np.uint8))
    for split in ("train", "val"):
        write_cityscapes_pair(tmp_path, split, "aachen", "aachen_000000_000019", label_ids)
    dm = CityscapesDataModule(root=str(tmp_path), **NO_AUGMENT)
    dm.setup("fit")
    mask = next(iter(dm.val_dataloader()))["mask"][0]
    expected = np.array(
        [[0, 13, 255, 18], [11, 2, 255, 255]]
    )  # road, car, unlabeled, bicycle / person, building
    assert torch.equal(mask, torch.from_numpy(np.kron(expected, np.ones((4, 4), dtype=np.int64))))
    assert dm.datasets["train"].records[0].name == "aachen_000000_000019"


def test_cityscapes_prefers_label_train_ids(tmp_path: Path) -> None:
    shape = (8, 16)
    for split in ("train", "val"):
        write_cityscapes_pair(
            tmp_path,
            split,
            "bremen",
            "bremen_000001_000019",
            label_ids=np.full(shape, 7, np.uint8),  # would be road (0)
            train_ids=np.full(shape, 13, np.uint8),  # car: must win
        )
    dm = CityscapesDataModule(root=str(tmp_path), **NO_AUGMENT)
    dm.setup("fit")
    assert dm.datasets["val"].records[0].label.name.endswith("_gtFine_labelTrainIds.png")
    assert next(iter(dm.val_dataloader()))["mask"].unique().tolist() == [13]


def test_train_batch_shapes_with_crop_padding(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC2012", shape=(24, 32))
    dm = VOCDataModule(root=str(root), crop_size=(40, 48), scale_range=(0.5, 1.0), batch_size=2)
    batch = next(iter(dm.train_dataloader()))  # sets itself up when used outside a Trainer
    assert batch["image"].shape == (2, 3, 40, 48) and batch["mask"].shape == (2, 40, 48)
    assert batch["mask"].dtype == torch.int64
    assert (batch["mask"][:, -1, :] == 255).all()  # padded area is ignore
    assert set(batch["mask"].unique().tolist()) <= {0, 7, 15, 255}


def test_crop_padding_takes_the_fill_colour_and_a_random_place(tmp_path: Path) -> None:
    """``pad_fill`` colours the padding (the release: its mean colour); ``pad_position: random`` moves the image."""
    root = write_voc(tmp_path / "VOC2012", shape=(24, 32))
    fill = (123, 117, 104)
    dm = VOCDataModule(root=str(root), crop_size=(40, 48), scale_range=(1.0, 1.0), hflip=False, batch_size=2,
                       pad_fill=fill, pad_position="random")  # fmt: skip
    tops = set()
    for batch in dm.train_dataloader():
        for image, mask in zip(batch["image"], batch["mask"], strict=True):
            padded = (mask == 255).all(1)  # rows of padding (the fixture's 255 borders are columns)
            assert int(padded.sum()) == 40 - 24
            expected = (torch.tensor(fill) / 255)[:, None, None].expand(3, 16, 48)
            torch.testing.assert_close(image[:, padded], expected)
            tops.add(int((~padded).nonzero()[0]))
    assert len(tops) > 1  # the image is not always at the same row
    with pytest.raises(ValueError, match="pad_fill must be three ints in 0..255"):
        VOCDataModule(root=str(root), pad_fill=(0, 0, 300))


def test_max_samples_takes_the_first_n(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC2012")
    dm = VOCDataModule(root=str(root), max_samples=2)
    dm.setup("fit")
    assert [r.name for r in dm.datasets["train"].records] == ["2007_000001", "2007_000002"]
    assert len(dm.datasets["val"]) == 2


def test_val_size_resizes_image_and_mask(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC2012", shape=(24, 32))
    dm = VOCDataModule(root=str(root), val_size=(12, 16), val_batch_size=2)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 12, 16) and batch["mask"].shape == (2, 12, 16)
    assert set(batch["mask"].unique().tolist()) <= {0, 7, 15, 255}  # nearest: no blended ids


def test_pad_collate_pads_image_with_zero_and_mask_with_ignore() -> None:
    items = [
        {
            "image": torch.full((3, 4, 6), 255, dtype=torch.uint8),
            "mask": torch.ones(4, 6, dtype=torch.uint8),
            "name": "a",
        },
        {
            "image": torch.full((3, 5, 3), 255, dtype=torch.uint8),
            "mask": torch.ones(5, 3, dtype=torch.uint8),
            "name": "b",
        },
    ]
    batch = pad_collate(items)
    assert batch["image"].shape == (2, 3, 5, 6) and batch["mask"].shape == (2, 5, 6)
    assert batch["image"][0, :, 4:].eq(0).all() and batch["image"][0, :, :4].eq(1).all()
    assert batch["mask"][1, :, 3:].eq(255).all() and batch["mask"][1, :, :3].eq(1).all()
    assert batch["name"] == ["a", "b"]


def test_predict_loader_yields_image_name_and_original_size(tmp_path: Path) -> None:
    folder = tmp_path / "predict"
    save_image(folder / "a.png", random_image((20, 30))[..., 0])  # grayscale: data always yields RGB
    save_image(folder / "b.jpg", random_image((24, 32)))
    dm = VOCDataModule(root=str(tmp_path / "no-root-needed"), predict_dir=str(folder), val_batch_size=2)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert set(batch) == {"image", "name", "size", "input_size"}
    assert batch["name"] == ["a", "b"] and batch["size"].tolist() == [[20, 30], [24, 32]]
    assert batch["input_size"].tolist() == [[20, 30], [24, 32]]
    assert batch["image"].shape == (2, 3, 24, 32) and batch["image"][0, :, 20:].eq(0).all()
    resized = VOCDataModule(root=str(tmp_path), predict_dir=str(folder), val_batch_size=2, val_size=(16, 16))
    batch = next(iter(resized.predict_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["size"].tolist() == [[20, 30], [24, 32]]
    assert batch["input_size"].tolist() == [[16, 16], [16, 16]]


def test_image_folder_holds_out_val_deterministically(tmp_path: Path) -> None:
    shapes = [(40, 50), (20, 30), (64, 64), (30, 90), (50, 40)] * 2
    for i, shape in enumerate(shapes):
        ext = [".jpg", ".png", ".JPG"][i % 3]
        save_image(tmp_path / f"dir{i % 2}" / "sub" / f"img{i}{ext}", random_image(shape, seed=i))
    (tmp_path / "notes.txt").write_text("not an image")
    dm = ImageFolderDataModule(
        root=str(tmp_path), val_fraction=0.2, crop_size=(32, 32), batch_size=4, val_batch_size=2
    )
    dm.setup("fit")
    train = [r.name for r in dm.datasets["train"].records]
    val = [r.name for r in dm.datasets["val"].records]
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert val[0].startswith("dir0/sub/img")
    other = ImageFolderDataModule(root=str(tmp_path), val_fraction=0.2, seed=5)
    other.setup("fit")
    assert [r.name for r in other.datasets["val"].records] == val
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "name"} and batch["image"].shape == (4, 3, 32, 32)
    assert next(iter(dm.val_dataloader()))["image"].shape == (2, 3, 32, 32)
    assert dm.num_classes == 0


def test_image_folder_holds_out_at_least_one(tmp_path: Path) -> None:
    for i in range(3):
        save_image(tmp_path / f"{i}.png", random_image((16, 16), seed=i))
    dm = ImageFolderDataModule(root=str(tmp_path), crop_size=(8, 8))
    dm.setup("fit")
    assert len(dm.datasets["val"]) == 1 and len(dm.datasets["train"]) == 2


def _first_batch(root: Path, seed: int, num_workers: int = 0) -> dict:
    dm = VOCDataModule(root=str(root), crop_size=(16, 16), batch_size=2, seed=seed, num_workers=num_workers)
    return next(iter(dm.train_dataloader()))


def test_train_batches_are_reproducible_by_seed(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC2012", shape=(48, 64))
    a, b, c = _first_batch(root, 0), _first_batch(root, 0), _first_batch(root, 1)
    assert (
        a["name"] == b["name"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    )
    assert not torch.equal(a["image"], c["image"])
    w1, w2 = _first_batch(root, 0, num_workers=1), _first_batch(root, 0, num_workers=1)
    assert w1["name"] == w2["name"] and torch.equal(w1["image"], w2["image"])


def test_sampler_keys_address_samples_and_seed_their_augmentation(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC2012", shape=(48, 64))
    dm = VOCDataModule(root=str(root), crop_size=(16, 16))
    dm.setup("fit")
    dataset = dm.datasets["train"]
    dataset.key_seed = 11
    assert dataset[4]["name"] == dataset[1]["name"] == "2007_000002"  # key = epoch * len + index
    assert torch.equal(dataset[4]["image"], dataset[4]["image"])  # same key, same augmentation
    keys = [3, 0, 5, 1, 4, 2]
    batches = []
    for workers in (0, 1):  # the worker count does not change the data
        loader = DataLoader(dataset, batch_size=2, sampler=keys, num_workers=workers, collate_fn=pad_collate)
        batches.append(torch.cat([b["image"] for b in loader]))
    assert torch.equal(*batches)


def test_shards_by_rank(tmp_path: Path) -> None:
    root = write_voc(
        tmp_path / "VOC2012", {"train": [f"2007_{i:06d}" for i in range(7)], "val": ["2007_000000"]}
    )
    seen = []
    for rank in (0, 1):
        dm = VOCDataModule(root=str(root), batch_size=1)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, global_step=0, accumulate_grad_batches=1)
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, ResumableSampler) and loader.sampler.rank == rank
        seen.append({name for batch in loader for name in batch["name"]})
    assert len(seen[0] & seen[1]) <= 1  # 7 samples padded to 2 x 4 by repeating one
    assert seen[0] | seen[1] == {f"2007_{i:06d}" for i in range(7)}


def test_cli_signatures_resolve(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SyntheticDataModule, "data")
    cfg = parser.parse_args([f"--data.root={tmp_path}", "--data.batch_size=3", "--data.crop_size=[64, 64]"])
    assert cfg.data.batch_size == 3 and tuple(cfg.data.crop_size) == (64, 64) and cfg.data.num_train == 200
    dm = SyntheticDataModule(**cfg.data)
    assert dm.num_classes == 6 and dm.batch_size == 3


def test_loader_throughput_reports_images_per_second(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOC2012", shape=(24, 32))
    dm = VOCDataModule(root=str(root), crop_size=(16, 16), batch_size=2)
    assert loader_throughput(dm, num_batches=3, warmup=1) > 0
