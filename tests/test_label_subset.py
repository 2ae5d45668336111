"""Label fractions: a seeded, class-covering subset of the train split; the unlabelled remainder."""

from pathlib import Path

import lightning as L
import pytest

from mnm.datamodules import CamVidDataModule, DataError, SyntheticDataModule
from mnm.datamodules.label_subset import choose_labeled, classes_present

EIGHTH = 1 / 8


def camvid(root: Path, **kw) -> CamVidDataModule:
    dm = CamVidDataModule(root=str(root), crop_size=(90, 120), batch_size=4, **kw)
    dm.setup("fit")
    return dm


def names(dm: CamVidDataModule, role: str) -> list[str]:
    return [r.name for r in dm.datasets[role].records]


@pytest.fixture(scope="module")
def eighth(camvid_root: Path) -> CamVidDataModule:
    return camvid(camvid_root, labeled_fraction=EIGHTH, seed=0)


def test_fraction_is_a_subset_of_train_with_every_class(eighth: CamVidDataModule, camvid_root: Path) -> None:
    full = CamVidDataModule(root=str(camvid_root)).list_samples("train")
    labeled = eighth.datasets["train"].records
    assert len(labeled) == round(367 / 8) == 46
    assert {r.name for r in labeled} <= {r.name for r in full}
    assert set().union(*classes_present(labeled)) == set().union(*classes_present(full)) == set(range(11))


def test_same_fraction_and_seed_give_the_same_ids(eighth: CamVidDataModule, camvid_root: Path) -> None:
    assert names(camvid(camvid_root, labeled_fraction=EIGHTH, seed=0), "train") == names(eighth, "train")
    other = camvid(camvid_root, labeled_fraction=EIGHTH, seed=0, split_seed=1)
    assert names(other, "train") != names(eighth, "train")


def test_unlabeled_remainder_is_disjoint_complementary_and_maskless(eighth: CamVidDataModule) -> None:
    batch = next(iter(eighth.unlabeled_dataloader()))
    assert "mask" not in batch and batch["image"].shape == (4, 3, 90, 120)
    labeled, unlabeled = set(names(eighth, "train")), set(names(eighth, "unlabeled"))
    assert not labeled & unlabeled
    assert len(labeled | unlabeled) == 367
    assert "mask" in next(iter(eighth.train_dataloader()))


def test_lists_written_to_the_trainer_dir_and_read_back(tmp_path: Path, camvid_root: Path) -> None:
    dm = CamVidDataModule(root=str(camvid_root), labeled_fraction=0.25, seed=3)
    dm.trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    dm.setup("fit")
    labeled = (tmp_path / "labeled.txt").read_text().split()
    unlabeled = (tmp_path / "unlabeled.txt").read_text().split()
    assert labeled == names(dm, "train") and len(labeled) + len(unlabeled) == 367
    again = camvid(camvid_root, labeled_list=str(tmp_path / "labeled.txt"))
    assert names(again, "train") == labeled


def test_train_on_unlabeled_trains_on_the_remainder_without_masks(tmp_path: Path) -> None:
    dm = SyntheticDataModule(
        root=str(tmp_path / "s"), num_train=12, num_val=2, image_size=(32, 32), crop_size=(32, 32),
        batch_size=2, labeled_fraction=0.5, train_on="unlabeled",
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "mask" not in batch
    assert set(batch["name"]) <= set(names(dm, "unlabeled"))
    assert len(dm.datasets["unlabeled"]) == 6


def test_full_labels_have_no_remainder(tmp_path: Path) -> None:
    dm = SyntheticDataModule(root=str(tmp_path / "s"), num_train=4, num_val=2, image_size=(32, 32))
    dm.setup("fit")
    assert dm.label_split is None
    with pytest.raises(DataError, match="no unlabelled remainder"):
        dm.unlabeled_dataloader()


def test_bad_labeled_list_names_the_file(tmp_path: Path, camvid_root: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=f"^{missing}: labeled_list does not exist"):
        camvid(camvid_root, labeled_list=str(missing))
    bad = tmp_path / "bad.txt"
    bad.write_text("0001TP_006690\nnot_a_sample\n")
    with pytest.raises(DataError, match=f"^{bad}:2: sample id 'not_a_sample' is not in the train split"):
        camvid(camvid_root, labeled_list=str(bad))
    with pytest.raises(DataError, match="not both"):
        CamVidDataModule(root=str(camvid_root), labeled_list=str(bad), labeled_fraction=0.5)
    with pytest.raises(DataError, match=r"labeled_fraction must be in \(0, 1\], got 0"):
        CamVidDataModule(root=str(camvid_root), labeled_fraction=0)


def test_cover_takes_the_only_sample_of_a_rare_class() -> None:
    presence = [frozenset({0})] * 9 + [frozenset({0, 1})]
    for seed in range(5):
        assert 9 in choose_labeled(presence, 0.1, seed)
    assert len(choose_labeled(presence, 0.5, 0)) == 5


def test_a_fraction_too_small_for_the_cover_is_refused() -> None:
    presence = [frozenset({c}) for c in range(4)] * 3
    with pytest.raises(DataError, match="keeps 2 of 12 train samples, but covering all 4 classes"):
        choose_labeled(presence, 1 / 6, 0)


def test_mix_match_and_segment_stages_share_the_subset(tmp_path: Path) -> None:
    from mnm.runs.stage_cli import build_stage

    data = {"class_path": "mnm.datamodules.SyntheticDataModule",
            "init_args": {"root": str(tmp_path / "s"), "num_train": 8, "num_val": 2, "image_size": [64, 64],
                          "crop_size": [64, 64], "batch_size": 2, "labeled_fraction": 0.5, "seed": 4}}  # fmt: skip
    trainer = {"fast_dev_run": 1, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False}  # fmt: skip
    lists = {}
    for stage, model in (("mix-match", {"patches_per_image": 2, "patch_size_range": [16, 32],
                                        "patch_out_size": 64}), ("segment", {})):  # fmt: skip
        out = tmp_path / stage
        cli = build_stage(stage, {"model": model, "data": data, "trainer": {**trainer, "default_root_dir": str(out)}})
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        lists[stage] = (out / "labeled.txt").read_text()
        assert len(lists[stage].split()) == 4
    assert lists["mix-match"] == lists["segment"]


def test_a_count_drawn_from_a_pool_of_the_split(tmp_path: Path) -> None:
    from mnm.datamodules.label_subset import split_labeled

    dm = SyntheticDataModule(root=str(tmp_path / "s"), num_train=12, num_val=2, image_size=[64, 64],
                             crop_size=[64, 64])  # fmt: skip
    dm.setup("fit")
    records = dm.list_samples("train")
    pool = frozenset(r.name for r in records[:8])
    split = split_labeled(records, count=5, pool=pool, seed=1)
    assert len(split.labeled) == 5 and {r.name for r in split.labeled} <= pool
    assert len(split.unlabeled) == 7 and all(r.label is None for r in split.unlabeled)
    assert [r.name for r in split_labeled(records, count=5, pool=pool, seed=1).labeled] == [r.name for r in split.labeled]
    whole_pool = split_labeled(records, pool=pool)
    assert {r.name for r in whole_pool.labeled} == pool
    with pytest.raises(DataError, match=r"labeled_count 9 must be in \[1, 8\]"):
        split_labeled(records, count=9, pool=pool)


def test_labeled_count_on_camvid_and_conflicting_settings(camvid_root: Path) -> None:
    assert len(names(camvid(camvid_root, labeled_count=23), "train")) == 23
    with pytest.raises(DataError, match="labeled_count or labeled_fraction/labeled_list, not both"):
        CamVidDataModule(root=str(camvid_root), labeled_fraction=0.5, labeled_count=10)


def test_unimatch_style_split_files_are_read(tmp_path: Path, camvid_root: Path) -> None:
    listed = tmp_path / "labeled.txt"
    listed.write_text("train/0001TP_006690.png trainannot/0001TP_006690.png\ntrain/0016E5_05310.png x/y.png\n")
    assert names(camvid(camvid_root, labeled_list=str(listed)), "train") == ["0001TP_006690", "0016E5_05310"]
    listed.write_text("train/0001TP_006690.png trainannot/0001TP_006690.png\ntrain/nope.png x/nope.png\n")
    with pytest.raises(DataError, match=rf"^{listed}:2: sample id 'nope.png' is not in the train split"):
        camvid(camvid_root, labeled_list=str(listed))
