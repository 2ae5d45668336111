"""Semi-supervised segmentation: CutMix boxes, pseudo labels, class-wise MIM (no class leaks into another's
reconstruction), the paired loader, and the ``semi`` stage with and without MIM."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mnm.datamodules import SyntheticDataModule
from mnm.datamodules.sampling import PairedSampler
from mnm.methods.mim import (
    ReconstructionDecoder,
    aggregation_loss,
    block_mask,
    class_views,
    largest_classes,
    reconstruction_loss,
)
from mnm.methods.semi_supervised import cutmix_box, pseudo_labels, unlabelled_loss
from mnm.runs.stage_cli import build_stage

TRAINER = {"fast_dev_run": 2, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
           "enable_progress_bar": False, "enable_model_summary": False}
MIM = {"mim": True, "mim_block": 16, "mim_max_classes": 2}


@pytest.fixture
def trainer(tmp_path: Path) -> dict:
    """Trainer settings writing into a temporary folder (a fit writes labeled.txt / unlabeled.txt there)."""
    return {**TRAINER, "default_root_dir": str(tmp_path)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return {"class_path": "mnm.datamodules.SyntheticDataModule",
            "init_args": {"root": str(root), "num_train": 10, "num_val": 4, "image_size": [96, 96],
                          "crop_size": [80, 80], "scale_range": [0.6, 1.2], "batch_size": 3, "val_batch_size": 2,
                          "labeled_fraction": 0.4, "train_on": "semi"}}  # fmt: skip


# -- core: CutMix boxes and pseudo labels ---------------------------------------------------------------


def test_cutmix_box_size_shape_and_seed() -> None:
    boxes = [cutmix_box(60, 80, torch.Generator().manual_seed(s), p=1.0) for s in range(200)]
    for box in boxes:
        rows, cols = box.any(1).sum().item(), box.any(0).sum().item()
        assert box.sum() == rows * cols  # one rectangle
        assert 0.02 * 0.8 <= rows * cols / (60 * 80) <= 0.4 + 1e-9
    assert torch.equal(cutmix_box(60, 80, torch.Generator().manual_seed(3), p=1.0), boxes[3])
    assert all(cutmix_box(60, 80, torch.Generator().manual_seed(s), p=0.0).sum() == 0 for s in range(20))
    drawn = sum(bool(cutmix_box(60, 80, torch.Generator().manual_seed(s), p=0.5).any()) for s in range(400))
    assert 160 < drawn < 240


def test_pseudo_labels_are_thresholded_by_confidence() -> None:
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 0, 0, 0] = 10.0  # confident class 0
    logits[0, 2, 0, 1] = 0.5  # unsure class 2
    valid = torch.tensor([[[True, True, False]]])
    target = pseudo_labels(logits, valid)
    assert target.labels.tolist() == [[[0, 2, 0]]]
    assert target.with_ignore(0.95, 255).tolist() == [[[0, 255, 255]]]  # unsure and padding ignored
    assert target.with_ignore(0.0, 255).tolist() == [[[0, 2, 255]]]
    # only confident pixels count, divided by all valid pixels (UniMatch's normalisation)
    student = torch.randn(1, 3, 1, 3, requires_grad=True)
    loss = unlabelled_loss(student, target, 0.95)
    ce = torch.nn.functional.cross_entropy(student, target.labels, reduction="none")
    assert loss.item() == pytest.approx(ce[0, 0, 0].item() / 2)
    loss.backward()
    assert student.grad[0, :, 0, 1].abs().sum() == 0 and student.grad[0, :, 0, 0].abs().sum() > 0


def test_mixed_pseudo_labels_take_the_pasted_image_inside_the_box() -> None:
    logits = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    target = pseudo_labels(logits, torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(1)) > 0.3)
    box = torch.zeros(2, 3, 3, dtype=torch.uint8)
    box[0, :2, :2] = 1
    order = torch.tensor([1, 0])
    mixed = target.mixed(box, order)
    inside = box[0].bool()
    for field in ("labels", "confidence", "valid"):
        ours, theirs, result = getattr(target, field)[0], getattr(target, field)[1], getattr(mixed, field)[0]
        assert torch.equal(result[inside], theirs[inside]) and torch.equal(result[~inside], ours[~inside])
        assert torch.equal(getattr(mixed, field)[1], theirs)  # no box in image 1


# -- core: class-wise MIM -------------------------------------------------------------------------------


def test_block_mask_is_fixed_by_the_step_generator() -> None:
    def mask(seed: int) -> torch.Tensor:
        return block_mask(4, 100, 130, 16, 0.7, torch.Generator().manual_seed(seed))

    assert torch.equal(mask(5), mask(5)) and not torch.equal(mask(5), mask(6))
    m = mask(5)
    assert m.shape == (4, 100, 130) and m.dtype == torch.bool
    assert torch.equal(m[:, ::16, ::16].repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :100, :130], m)
    assert 0.6 < block_mask(8, 256, 256, 8, 0.7, torch.Generator().manual_seed(0)).float().mean() < 0.8


def _two_class_image() -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose left half (class 0) is red-ish and right half (class 1) green-ish noise."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=g) * 0.1
    image[:, 0, :, :16] += 0.8
    image[:, 1, :, 16:] += 0.8
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, :, 16:] = 1
    return image, labels


def test_class_views_never_leak_another_class() -> None:
    image, labels = _two_class_image()
    image.requires_grad_(True)
    mask = block_mask(1, 32, 32, 8, 0.5, torch.Generator().manual_seed(1))
    fill = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    views = class_views(image, labels, mask, [[0, 1]], fill)
    a = views.inputs[views.class_id == 0][0]
    b_pixels = image[0].detach()[:, labels[0] == 1]
    # class A's encoder input holds none of B's pixel values: B's region is all fill colour
    assert torch.equal(a[:, labels[0] == 1], fill[0, :, 0].expand_as(b_pixels))
    assert not torch.isin(a.detach().flatten(), b_pixels.flatten()).any()
    assert views.masked[0].any() and views.visible[0].any()
    assert not (views.masked[0] & (labels[0] == 1)).any()
    # the reconstruction loss of A (encoder, decoder, aggregation) has no gradient from B's pixels
    encoder = torch.nn.Conv2d(3, 8, 3, padding=1)
    decoder = ReconstructionDecoder(8, 1)
    features = encoder(views.inputs[:1])
    loss = reconstruction_loss(decoder(features, (32, 32)), image[views.image_index[:1]], views.masked[:1])
    loss = loss + aggregation_loss(features, views.masked[:1], views.visible[:1])
    loss.backward()
    grad = image.grad[0]
    assert grad[:, labels[0] == 1].abs().sum() == 0
    assert grad[:, labels[0] == 0].abs().sum() > 0


def test_largest_classes_skip_ignore_and_cap() -> None:
    labels = torch.tensor([[[1, 1, 1, 2, 2, 0, 255, 255, 255, 255]], [[255] * 10]])
    assert largest_classes(labels, 255, 2) == [[1, 2], []]
    assert largest_classes(labels, 255, 5) == [[1, 2, 0], []]


def test_each_mim_loss_is_finite_with_gradient_and_zero_without_pixels() -> None:
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    prediction = torch.randn(2, 3, 16, 16, requires_grad=True)
    target = torch.randn(2, 3, 16, 16)
    where = torch.zeros(2, 16, 16, dtype=torch.bool)
    where[:, :8] = True
    for loss in (reconstruction_loss(prediction, target, where), aggregation_loss(features, where, ~where)):
        assert torch.isfinite(loss) and loss > 0
        grads = torch.autograd.grad(loss, [prediction, features], allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    nothing = torch.zeros_like(where)
    assert reconstruction_loss(prediction, target, nothing).item() == 0
    assert aggregation_loss(features, nothing, where).item() == 0
    assert aggregation_loss(features, nothing, where).requires_grad


# -- data: the paired stream ----------------------------------------------------------------------------


def test_paired_sampler_resumes_and_shards() -> None:
    def stream(start_batch: int = 0, rank: int = 0, world: int = 1, epochs: int = 3) -> list:
        sampler = PairedSampler(3, 10, seed=2, rank=rank, world=world, batch_size=2, start_batch=start_batch)
        out = []
        for _ in range(epochs):
            out += list(sampler)
        return out

    full = stream()
    assert len(full) == 3 * 10
    assert stream(start_batch=7, epochs=2)[:10] == full[14:24]  # batch 7 = epoch 1, second batch
    first_epoch = full[:10]
    assert sorted(k % 10 for _, k in first_epoch) == list(range(10))  # every unlabelled image once
    assert [k % 3 for k, _ in first_epoch[:9]].count(first_epoch[0][0] % 3) == 3  # labelled stream cycles
    shards = [stream(rank=r, world=2, epochs=1) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    assert not {k for _, k in shards[0]} & {k for _, k in shards[1]}


def test_semi_loader_batches(data: dict) -> None:
    dm = SyntheticDataModule(**data["init_args"])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    labeled, unlabeled = batch["labeled"], batch["unlabeled"]
    assert labeled["image"].shape == (3, 3, 80, 80) and labeled["mask"].shape == (3, 80, 80)
    assert set(unlabeled) == {"image", "image_s1", "image_s2", "box1", "box2", "padding", "name"}
    assert unlabeled["box1"].dtype == torch.bool and unlabeled["padding"].dtype == torch.bool
    assert unlabeled["padding"].any()  # scale 0.6 of 96 px pads the 80-px crop
    assert not set(labeled["name"]) & set(unlabeled["name"])
    assert not torch.equal(unlabeled["image"], unlabeled["image_s1"])
    again = next(iter(SyntheticDataModule(**data["init_args"]).train_dataloader()))
    for key in ("image", "image_s1", "image_s2", "box1", "box2"):
        assert torch.equal(again["unlabeled"][key], unlabeled[key])


def test_semi_mode_needs_a_label_subset(data: dict) -> None:
    from mnm.datamodules import DataError

    dm = SyntheticDataModule(**{**data["init_args"], "labeled_fraction": 1.0})
    with pytest.raises(DataError, match="no unlabelled remainder"):
        dm.setup("fit")


# -- the stage ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", [{}, MIM], ids=["baseline", "mim"])
def test_semi_stage_fast_dev_run_logs_every_term(model: dict, data: dict, trainer: dict) -> None:
    cli = build_stage("semi", {"model": {"backbone": "alexnet", "threshold": 0.0, **model}, "data": data,
                               "trainer": trainer})  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.callback_metrics
    terms = ["loss", "loss_x", "loss_s1", "loss_s2", "loss_fp", "confident"]
    terms += ["mim_recon", "mim_aggregate", "mim_semantic", "mim_views"] if model else []
    for term in terms:
        assert math.isfinite(float(logged[f"train/{term}"])), term
    assert ("train/mim_recon" in logged) == bool(model)
    if model:
        assert float(logged["train/mim_recon"]) > 0 and float(logged["train/mim_views"]) > 0


def mim_model_and_batch(data: dict, trainer: dict, threshold: float) -> tuple:
    """A semi stage with MIM, its first training batch and the pseudo-labels of its unlabelled images."""
    cli = build_stage("semi", {"model": {"backbone": "alexnet", "threshold": threshold, **MIM}, "data": data,
                               "trainer": trainer})  # fmt: skip
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    return cli.model, batch, pseudo_labels(cli.model(batch["unlabeled"]["image"]), ~batch["unlabeled"]["padding"])


def test_semi_stage_terms_have_gradient(data: dict, trainer: dict) -> None:
    model, batch, target = mim_model_and_batch(data, trainer, threshold=0.0)
    for name in ("mim_recon", "mim_aggregate", "mim_semantic"):
        model.zero_grad()
        terms = model.mim_losses(batch["labeled"], batch["unlabeled"], target)
        assert torch.isfinite(terms[name]), name
        terms[name].backward()
        grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name


def test_mim_without_class_views_still_reaches_every_decoder_parameter(data: dict, trainer: dict) -> None:
    """No (confident) class in a batch: the zero reconstruction loss touches the whole decoder, as DDP needs."""
    model, batch, target = mim_model_and_batch(data, trainer, threshold=1.0)  # no pseudo-label is that confident
    batch["labeled"]["mask"].fill_(255)
    terms = model.mim_losses(batch["labeled"], batch["unlabeled"], target)
    assert float(terms["mim_views"]) == 0 and float(terms["mim_recon"]) == 0
    (terms["mim_recon"] + terms["mim_aggregate"]).backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_semi_stage_refuses_labelled_only_data(data: dict, trainer: dict) -> None:
    plain = {**data, "init_args": {**data["init_args"], "train_on": "labeled"}}
    cli = build_stage("semi", {"model": {"backbone": "alexnet"}, "data": plain, "trainer": trainer})
    with pytest.raises(ValueError, match="train_on: semi"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_semi_stage_evaluates_like_segment(data: dict, trainer: dict) -> None:
    cli = build_stage("semi", {"model": {"backbone": "alexnet"}, "data": data, "trainer": trainer})
    assert cli.model.evaluation_split == "val"
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    result = cli.model.read_evaluation(cli.trainer.callback_metrics, "val")
    assert 0.0 <= result["miou"] <= 1.0 and len(result["per_class_iou"]) == 6


def test_semi_settings_are_checked(data: dict, trainer: dict) -> None:
    for bad, message in (({"threshold": 1.5}, "threshold"), ({"mim": True, "mim_feature_map": 9}, "mim_feature_map"),
                         ({"mim_max_classes": 0}, "mim_max_classes")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            build_stage("semi", {"model": {"backbone": "alexnet", **bad}, "data": data, "trainer": trainer})


def test_block_sizes_mask_the_whole_image_with_ratio_one() -> None:
    mask = block_mask(1, 33, 47, 64, 1.0, torch.Generator().manual_seed(0))
    assert mask.all()
    image = torch.rand(1, 3, 33, 47)
    views = class_views(image, torch.zeros(1, 33, 47, dtype=torch.long), mask, [[0]], torch.zeros(3))
    assert not views.visible.any() and torch.equal(views.inputs, torch.zeros_like(image))


def test_written_split_lists_in_semi_mode(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli = build_stage("semi", {"model": {"backbone": "alexnet", "threshold": 0.0}, "data": data,
                               "trainer": {**TRAINER, "default_root_dir": str(out)}})  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    labeled = (out / "labeled.txt").read_text().split()
    unlabeled = (out / "unlabeled.txt").read_text().split()
    assert len(labeled) == 4 and len(unlabeled) == 6 and not set(labeled) & set(unlabeled)
    assert np.isfinite(float(cli.trainer.callback_metrics["train/loss"]))


@pytest.mark.slow
@pytest.mark.distributed
def test_semi_pipeline_on_two_ddp_cpu_processes(tmp_path: Path) -> None:
    """tiny_semi.yaml (baseline and MIM) on 2 CPU processes (gloo): both stages finish and are evaluated."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "mnm", "pipeline", "run", str(repo / "conf" / "pipelines" / "tiny_semi.yaml"),
           "--out", str(out), "--set", f"data_root={tmp_path / 'data'}", "--set", "steps=3",
           "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp_spawn"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    for name in ("semi", "semi_mim"):
        assert stages[name]["status"] == "finished"
        result = json.loads((out / name / "metrics.json").read_text())["eval"]
        assert 0.0 <= result["miou"] <= 1.0 and len(result["per_class_iou"]) == 6
        assert len((out / name / "labeled.txt").read_text().split()) == 8
    assert "devices: 2" in (out / "semi" / "config.yaml").read_text()


def test_running_stats_frozen_keeps_batch_norm_statistics() -> None:
    from mnm.methods.mim import running_stats_frozen

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    before = net[1].running_mean.clone()
    with running_stats_frozen(net):
        out = net(torch.rand(2, 3, 5, 5) + 3)
    assert torch.equal(net[1].running_mean, before) and net[1].momentum == 0.1
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # still normalised with the batch statistics
    net(torch.rand(2, 3, 5, 5) + 3)
    assert not torch.equal(net[1].running_mean, before)
