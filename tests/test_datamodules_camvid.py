"""CamVidDataModule on the real copy at ../shared/data/camvid (fails, never skips, when it is missing).

``camvid_root`` (tests/conftest.py) is ``Path(__file__).resolve().parents[2] / "shared/data/camvid"``.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnm.datamodules import CamVidDataModule
from mnm.datamodules.readers import read_label


@pytest.fixture(scope="module")
def camvid(camvid_root: Path) -> CamVidDataModule:
    dm = CamVidDataModule(root=str(camvid_root), crop_size=(180, 240), batch_size=4, val_batch_size=2)
    dm.setup("fit")
    return dm


def test_split_sizes_and_metadata(camvid: CamVidDataModule) -> None:
    assert len(camvid.datasets["train"]) == 367
    assert len(camvid.datasets["val"]) == 101
    assert camvid.num_classes == 11 and camvid.ignore_index == 255
    assert len(camvid.class_names) == len(camvid.palette) == 11
    assert camvid.class_names[0] == "sky" and camvid.palette[3] == (128, 64, 128)
    assert camvid.num_skipped == 0


def test_label_ids_and_void_mapping(camvid: CamVidDataModule) -> None:
    records = camvid.datasets["train"].records + camvid.datasets["val"].records
    seen: set[int] = set()
    void_checked = False
    for record in records:
        mask = read_label(record.label, record.mapping)
        seen.update(np.unique(mask).tolist())
        if not void_checked:
            raw = np.asarray(Image.open(record.label))
            if (raw == 11).any():
                assert (mask[raw == 11] == 255).all()
                assert np.array_equal(mask[raw < 11], raw[raw < 11])
                void_checked = True
    assert void_checked, "no void (11) pixels found in CamVid labels"
    assert seen <= set(range(11)) | {255}
    assert 255 in seen and seen >= set(range(11))


def test_train_batch_shapes_and_dtypes(camvid: CamVidDataModule) -> None:
    batch = next(iter(camvid.train_dataloader()))
    assert batch["image"].shape == (4, 3, 180, 240) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["mask"].shape == (4, 180, 240) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= set(range(11)) | {255}
    assert len(batch["name"]) == 4 and all(isinstance(n, str) for n in batch["name"])


def test_val_batch_is_full_resolution(camvid: CamVidDataModule) -> None:
    batch = next(iter(camvid.val_dataloader()))
    assert batch["image"].shape == (2, 3, 360, 480)
    assert batch["mask"].shape == (2, 360, 480) and batch["mask"].dtype == torch.int64
    assert batch["name"] == [r.name for r in camvid.datasets["val"].records[:2]]


def test_list_paths_resolve_against_root(camvid: CamVidDataModule, camvid_root: Path) -> None:
    assert (camvid_root / "train.txt").read_text().startswith("/SegNet/CamVid/train/0001TP_006690.png")
    first = camvid.datasets["train"].records[0]
    assert first.image == camvid_root / "train" / "0001TP_006690.png"
    assert first.label == camvid_root / "trainannot" / "0001TP_006690.png"
    assert first.name == "0001TP_006690"
