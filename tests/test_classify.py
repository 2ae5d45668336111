"""The classify stage (CE + the M&M triplet term over a batch's images) and the classification data modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnm.cli import main
from mnm.datamodules import DataError
from mnm.datamodules.classification_folder import ImageFolderClassificationDataModule
from mnm.datamodules.classification_synthetic import SyntheticClassificationDataModule
from mnm.datamodules.classification_torchvision import (
    Caltech101DataModule,
    DTDDataModule,
    Flowers102DataModule,
    OxfordIIITPetDataModule,
)
from mnm.datamodules.factory import instantiate_datamodule
from mnm.datamodules.label_subset import stratified_labeled
from mnm.evaluation.metrics import ClassificationMetrics
from mnm.runs.stage_cli import build_stage
from mnm.stages.classify import ClassifyStage

REPO = Path(__file__).resolve().parents[1]
TRAINER = {"fast_dev_run": 2, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
           "enable_progress_bar": False, "enable_model_summary": False}
SYNTHETIC = {"class_path": "mnm.datamodules.SyntheticClassificationDataModule",
             "init_args": {"num_train": 27, "num_val": 18, "image_size": 48, "crop_size": 32, "resize_size": 36,
                           "batch_size": 9, "val_batch_size": 9}}


def test_print_config(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "triplets: graph" in printed and "mm_weight: 1.0" in printed and "backbone: resnet50" in printed


@pytest.mark.parametrize("triplets", ["none", "graph", "random"])
def test_fast_dev_run_logs_both_terms_and_evaluates(triplets: str) -> None:
    cli = build_stage("classify", {"model": {"backbone": "resnet18", "triplets": triplets}, "data": SYNTHETIC,
                                   "trainer": TRAINER})
    assert cli.model.hparams.num_classes == 9  # linked from the data module
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.callback_metrics
    assert {"train/loss", "train/ce", "val/top1", "val/top5", "val/loss"} <= set(logged)
    assert ("train/triplet" in logged) == ("train/active_fraction" in logged) == (triplets != "none")
    if triplets == "none":
        assert float(logged["train/loss"]) == pytest.approx(float(logged["train/ce"]))
    else:  # the last step's loss is CE + λ·triplet (λ = 1)
        total = float(logged["train/ce"]) + float(logged["train/triplet"])
        assert float(logged["train/loss"]) == pytest.approx(total, rel=1e-5)
    evaluation = cli.model.read_evaluation(logged, "val")
    assert set(evaluation) == {"split", "top1", "balanced", "top5", "loss"} and 0.0 <= evaluation["top1"] <= evaluation["top5"]


def _grads(model: ClassifyStage, batch: dict) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.trainer = None
    model.training_step(batch, 0).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_triplet_term_changes_the_backbone_gradient_only(monkeypatch) -> None:
    """λ > 0 adds the triplet gradient to the backbone; the head's gradient is the cross-entropy's alone."""
    dm = SyntheticClassificationDataModule(num_train=18, num_val=9, image_size=48, crop_size=32, resize_size=36,
                                           batch_size=18)
    batch = next(iter(dm.train_dataloader()))
    grads = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = ClassifyStage(backbone="resnet18", num_classes=9, triplets="graph", mm_weight=weight)
        monkeypatch.setattr(model, "log_scalars", lambda *a, **k: None)  # logging needs a trainer; the loss does not
        monkeypatch.setattr(ClassifyStage, "global_step", property(lambda self: 0))
        grads[weight] = _grads(model, batch)
    assert torch.equal(grads[0.0]["head.1.weight"], grads[1.0]["head.1.weight"])
    diff = (grads[0.0]["backbone.layer4.1.conv2.weight"] - grads[1.0]["backbone.layer4.1.conv2.weight"]).abs().max()
    assert diff > 1e-6


def test_top1_and_top5_on_a_hand_made_batch() -> None:
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 0],  # label 0: top-1 hit
        [1.0, 9, 8, 7, 6, 5, 0],  # label 5: 5th highest -> top-5 hit only
        [1.0, 9, 8, 7, 6, 5, 0],  # label 6: lowest -> miss
        [0.0, 1, 2, 3, 4, 5, 9],  # label 2: 5th highest -> top-5 hit only
    ])  # fmt: skip
    metrics = ClassificationMetrics(7)
    metrics.update(logits[:2], torch.tensor([0, 5]))
    metrics.update(logits[2:], torch.tensor([6, 2]))  # accumulated over batches
    # recall per class: 0 -> 1, 5 -> 0, 6 -> 0, 2 -> 0; class 1 was predicted but is absent (recall 0, counted);
    # classes 3, 4 neither present nor predicted (left out)
    assert metrics.compute() == pytest.approx({"top1": 1 / 4, "top5": 3 / 4, "balanced": 1 / 5})


def test_synthetic_set_is_deterministic_and_balanced() -> None:
    a = SyntheticClassificationDataModule(num_train=18, num_val=9, image_size=48, data_seed=3)
    b = SyntheticClassificationDataModule(num_train=18, num_val=9, image_size=48, data_seed=3)
    base_a, labels = a.load_split("train")
    base_b, _ = b.load_split("train")
    assert all(np.array_equal(base_a[i][0], base_b[i][0]) for i in range(18))
    assert np.bincount(labels).tolist() == [2] * 9
    other, _ = SyntheticClassificationDataModule(image_size=48, data_seed=4).load_split("train")
    assert not np.array_equal(other[0][0], base_a[0][0])
    val, _ = a.load_split("val")
    assert not np.array_equal(val[0][0], base_a[0][0])  # val images are not train images


def test_labelled_subset_keeps_every_class() -> None:
    labels = [0] * 10 + [1] * 10 + [2] * 2
    subset = stratified_labeled(labels, 0.1, seed=0)
    assert sorted(labels[i] for i in subset) == [0, 1, 2]
    assert subset == stratified_labeled(labels, 0.1, seed=0) != stratified_labeled(labels, 0.5, seed=0)


@pytest.mark.parametrize(
    ("module", "layout"),
    [(DTDDataModule, "dtd/dtd/images"), (OxfordIIITPetDataModule, "oxford-iiit-pet/annotations"),
     (Flowers102DataModule, "flowers-102/jpg"), (Caltech101DataModule, "caltech101/101_ObjectCategories")],
)
def test_missing_or_wrong_root_names_root_and_layout(tmp_path: Path, module: type, layout: str) -> None:
    missing = tmp_path / "nothere"
    with pytest.raises(DataError, match=rf"{missing}: .*does not exist.*expected .*{layout}") as err:
        module(str(missing)).setup("fit")
    assert "\n" not in str(err.value)
    (tmp_path / "wrong" / "images").mkdir(parents=True)  # some other dataset's folder
    with pytest.raises(DataError, match=rf"{tmp_path / 'wrong'}: no .* data.*expected .*{layout}"):
        module(str(tmp_path / "wrong")).check_source()
    assert not (tmp_path / "wrong" / "caltech101").exists()  # nothing created, nothing downloaded


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)


def test_dtd_layout_is_read_with_the_official_lists(tmp_path: Path) -> None:
    data = tmp_path / "dtd" / "dtd"
    lists = {"train": ["banded/a.jpg", "zigzagged/b.jpg"], "val": ["banded/c.jpg", "zigzagged/d.jpg"],
             "test": ["banded/e.jpg", "zigzagged/f.jpg"]}
    for i, name in enumerate(n for names in lists.values() for n in names):
        _jpeg(data / "images" / name, i)
    for split, names in lists.items():
        (data / "labels").mkdir(exist_ok=True)
        (data / "labels" / f"{split}1.txt").write_text("".join(f"{n}\n" for n in names))
    dm = DTDDataModule(str(tmp_path), train_split="trainval", val_split="test", crop_size=32, resize_size=36,
                       batch_size=2, val_batch_size=2)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 2
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["label"].tolist() == [0, 1]
    assert batch["image"].dtype == torch.float32 and 0.0 <= float(batch["image"].min()) <= 1.0
    with pytest.raises(DataError, match=r"data.train_split of DTDDataModule must be one of"):
        DTDDataModule(str(tmp_path), train_split="training")


def test_image_folder_with_a_class_list(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for i, cls in enumerate(("n01", "n02", "n03")):
            _jpeg(tmp_path / "data" / split / cls / f"{i}.jpg", i)
    (tmp_path / "classes.txt").write_text("n03\nn01\n")
    dm = ImageFolderClassificationDataModule(str(tmp_path / "data"), classes=str(tmp_path / "classes.txt"),
                                             crop_size=32, resize_size=36, batch_size=2, val_batch_size=2)
    assert dm.num_classes == 2
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["label"].tolist() == [1, 0]  # n01 -> 1, n03 -> 0 (the list's order)
    dm = ImageFolderClassificationDataModule(str(tmp_path / "data"), num_classes=20)
    with pytest.raises(DataError, match=r"3 class folders for data.num_classes = 20"):
        dm.setup("fit")


@pytest.mark.slow
def test_benchmark_reports_top1_for_classification(tmp_path: Path) -> None:
    """`mnm benchmark` runs the three arms, evaluates each after fitting and reports top-1 / balanced / top-5."""
    from mnm.experiments.benchmark import load_benchmark, run_benchmark

    sets = ["steps=2", "data.init_args.num_train=18", "data.init_args.num_val=9", "data.init_args.image_size=40",
            "data.init_args.crop_size=32", "data.init_args.resize_size=36", "data.init_args.batch_size=9"]
    pipeline = load_benchmark(REPO / "conf/benchmarks/classify_synthetic.yaml", tmp_path / "run", sets)
    results = run_benchmark(pipeline)
    assert results["metrics"] == {"top1": "top-1", "balanced": "balanced acc.", "top5": "top-5"}
    assert set(results["arms"]) == {"CE only", "CE + M&M graph triplets", "CE + random triplets"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## top-1 per arm" in report and "| top-1 (%) | balanced acc. (%) | top-5 (%) |" in report and "IoU" not in report
    for arm in results["arms"].values():
        assert f"| {100 * arm['top1']:.2f} | {100 * arm['balanced']:.2f} | {100 * arm['top5']:.2f} |" in report
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["ce"]["score"]["metric"] == "top-1"


def test_crops_take_their_majority_class_and_drop_mixed_or_unlabelled_ones() -> None:
    from mnm.datamodules.segmentation_crops import cut_labelled_crops

    mask = np.full((40, 40), 255, dtype=np.int64)
    mask[:, :20] = 1  # left half class 1, right half unlabelled
    mask[:10, :20] = 2  # a band of class 2 on top of it
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    crops = cut_labelled_crops(image, mask, np.random.default_rng(0), 200, (8, 20), 16, 3, 0.75)
    assert crops and all(patch.shape == (16, 16, 3) for patch, _ in crops)
    assert {label for _, label in crops} == {1, 2}
    none_pure = cut_labelled_crops(image, np.where(np.indices((40, 40))[1] % 2 == 0, 0, 1), np.random.default_rng(0),
                                   50, (8, 20), 16, 3, 0.75)  # stripes: every crop is half 0, half 1
    assert none_pure == []


def test_segmentation_crops_fit_the_classify_stage(camvid_root: Path) -> None:
    """CamVid crops through the classify stage: 11 classes linked to the model, the same crops every time."""
    from mnm.datamodules import CamVidDataModule, SegmentationCropsDataModule

    source = {"class_path": "mnm.datamodules.CamVidDataModule",
              "init_args": {"root": str(camvid_root), "val_size": [90, 120], "max_samples": 6, "num_workers": 0}}
    data = {"class_path": "mnm.datamodules.SegmentationCropsDataModule",
            "init_args": {"source": source, "side_range": [24, 56], "crop_size": 28, "resize_size": 32,
                          "batch_size": 8, "val_batch_size": 16}}
    cli = build_stage("classify", {"model": {"backbone": "resnet18", "triplets": "graph"}, "data": data,
                                   "trainer": TRAINER})
    assert cli.model.hparams.num_classes == 11
    instantiate_datamodule(data).check_source()  # as the pipeline runner checks a stage before it starts
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "val/top1" in cli.trainer.callback_metrics
    twice = [SegmentationCropsDataModule(CamVidDataModule(str(camvid_root), val_size=(90, 120), max_samples=6),
                                         side_range=(24, 56)).load_split("val") for _ in range(2)]
    assert twice[0][1] == twice[1][1] and len(twice[0][1]) > 6
    assert np.array_equal(twice[0][0][0][0], twice[1][0][0][0])
