"""The kNN representation probe: fixed patch sets, scores that see learning, the CLI, the M&M log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mnm.evaluation.knn_probe import (
    ProbeSettings,
    RepresentationProbe,
    collect_patches,
    effective_rank,
    knn_scores,
)
from mnm.methods.losses import TripletLoss
from mnm.methods.match import graph_triplets
from mnm.runs.stage_cli import build_stage

NUM_CLASSES = 4


def toy_samples(num_images: int, seed: int) -> tuple:
    """Images of 4 vertical bands; band ``c`` has a random flat colour (the nuisance) plus class ``c``'s texture."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(16), indexing="ij")
    textures = [(yy // 2 % 2).float(), (xx // 2 % 2).float(), ((yy + xx) // 2 % 2).float(), torch.zeros(32, 16)]
    images, masks = [], []
    for _ in range(num_images):
        image = torch.empty(3, 32, 64)
        for c in range(NUM_CLASSES):
            colour = torch.rand(3, 1, 1, generator=g)
            image[:, :, 16 * c : 16 * (c + 1)] = 0.7 * colour + 0.3 * textures[c]
        images.append(image)
        masks.append(torch.arange(64).div(16, rounding_mode="floor").expand(32, 64).clone())
    return (lambda i: (images[i], masks[i])), num_images


SETTINGS = ProbeSettings(bank_per_class=40, query_per_class=20, patches_per_image=8, size_range=(8, 12), out_size=16)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2), nn.Flatten())


def test_patch_sets_are_fixed_by_seed() -> None:
    samples = toy_samples(12, seed=0)
    a = collect_patches(*samples, NUM_CLASSES, 10, SETTINGS)
    b = collect_patches(*samples, NUM_CLASSES, 10, SETTINGS)
    c = collect_patches(*samples, NUM_CLASSES, 10, ProbeSettings(**{**SETTINGS.__dict__, "seed": 1}))
    assert torch.equal(a.patches, b.patches) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.patches, c.patches)
    assert torch.bincount(a.labels, minlength=NUM_CLASSES).tolist() == [10] * NUM_CLASSES  # capped per class


@pytest.mark.slow
def test_probe_scores_a_trained_embedding_above_its_random_init() -> None:
    probe = RepresentationProbe.from_samples(toy_samples(24, 0), toy_samples(12, 1), NUM_CLASSES, SETTINGS)
    net = tiny_net()
    before = probe.score(net)
    # M&M on the bank's patches: graph triplets + triplet loss, a few SGD steps
    train = collect_patches(*toy_samples(24, 2), NUM_CLASSES, 60, SETTINGS)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    loss_fn, g = TripletLoss(margin=0.5), torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = loss_fn(net(train.patches), graph_triplets(train.labels, generator=g)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = probe.score(net)
    assert after["knn_acc"] > before["knn_acc"] + 0.25, (before, after)
    assert after["knn_acc_balanced"] > before["knn_acc_balanced"] + 0.25


def test_knn_scores_on_a_hand_case() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.2, 1.0], [0.0, 2.0]])
    truth = torch.tensor([0, 1, 0, 0])  # two right (one of each class), two wrong
    scores = knn_scores(bank, labels, queries, truth, k=1)
    assert scores["knn_acc"] == pytest.approx(0.5)
    assert scores["knn_acc_balanced"] == pytest.approx((1 / 3 + 1) / 2)


def test_effective_rank_of_collapsed_and_isotropic_embeddings() -> None:
    g = torch.Generator().manual_seed(0)
    line = torch.randn(500, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.randn(5000, 8, generator=g)) > 7.8


@pytest.mark.slow
def test_mix_match_logs_the_probe_after_validation(tmp_path: Path) -> None:
    data = {"class_path": "mnm.datamodules.SyntheticDataModule",
            "init_args": {"root": str(tmp_path / "synthetic"), "num_train": 8, "num_val": 4, "image_size": [96, 96],
                          "crop_size": [80, 80], "batch_size": 4, "val_batch_size": 2}}
    model = {"backbone": "alexnet", "patches_per_image": 3, "patch_size_range": [16, 40], "patch_out_size": 64}
    trainer = {"fast_dev_run": 1, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False}
    cli = build_stage("mix-match", {"model": model, "data": data, "trainer": trainer})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.callback_metrics
    assert 0.0 <= float(logged["val/knn_acc"]) <= 1.0
    assert 0.0 <= float(logged["val/knn_acc_balanced"]) <= 1.0
    assert float(logged["val/effective_rank"]) >= 1.0
    cli = build_stage("mix-match", {"model": {**model, "knn_probe": False}, "data": data, "trainer": trainer})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "val/knn_acc" not in cli.trainer.callback_metrics


@pytest.mark.slow
def test_probe_cli_on_camvid(camvid_root: Path, repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    ckpt = tmp_path / "alexnet.pth"
    torch.manual_seed(0)
    from mnm.models.backbones import build_backbone

    torch.save(build_backbone("alexnet").state_dict(), ckpt)
    proc = subprocess.run(
        [sys.executable, "-m", "mnm.cli", "probe", str(ckpt), "--backbone", "alexnet", "--random", "alexnet",
         "--root", str(camvid_root), "--json", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == [str(ckpt), "random:alexnet"]
    # the saved state dict is the same random init (seed 0), so it scores exactly the same
    assert results[0]["knn_acc"] == results[1]["knn_acc"]
    assert 0.15 < results[1]["knn_acc"] < 0.7  # 11 classes: above chance, far from solved
    assert "train patches" in proc.stdout


def test_probe_needs_labelled_pixels() -> None:
    empty = (lambda i: (torch.rand(3, 16, 16), torch.full((16, 16), 255))), 2
    with pytest.raises(ValueError, match="no labelled pixels"):
        collect_patches(*empty, NUM_CLASSES, 5, SETTINGS)


def test_probe_reads_the_checkpoints_backbone_options(tmp_path: Path) -> None:
    """A checkpoint of a statistics-only-BN, Caffe-normalised network is rebuilt with those options."""
    from mnm.models.backbones import build_backbone
    from mnm.weights.record import backbone_from_checkpoint

    net = build_backbone("alexnet_caffe", bn_affine=False, input_norm="caffe_bgr")
    path = tmp_path / "stage.ckpt"
    meta = {"name": "alexnet_caffe", "in_chans": 3, "bn_affine": False, "input_norm": "caffe_bgr"}
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "mnm_backbone": meta}, path)
    loaded = backbone_from_checkpoint(str(path), None, None)
    assert loaded.input_norm == "caffe_bgr"
    assert torch.equal(loaded.body[0].weight, net.body[0].weight)


@pytest.mark.slow
def test_probe_cli_checks_every_path_before_cutting_patches(repo_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mnm.cli", "probe", str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt"),
                           "--random", "alexnet"], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "train patches" not in proc.stdout
    assert proc.stderr.startswith(f"mnm: error: checkpoint(s) not found: {tmp_path / 'a.ckpt'}, {tmp_path / 'b.ckpt'};")


def test_probe_cli_keeps_the_other_scores_when_a_checkpoint_is_bad(tmp_path: Path, capsys) -> None:
    from mnm.commands.probe import main

    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"data": {"class_path": "mnm.datamodules.SyntheticDataModule", "init_args": {
        "root": str(tmp_path / "synthetic"), "num_train": 8, "num_val": 4, "image_size": [96, 96]}}}))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "probe.json"
    with pytest.raises(ValueError, match=r"^1 of 2 not scored .*: " + str(bad)):
        main([str(bad), "--random", "alexnet", "--data", str(data), "--patch-size-range", "24", "48",
              "--json", str(out)])
    saved = json.loads(out.read_text())
    assert [r["model"] for r in saved["results"]] == ["random:alexnet"] and saved["failed"][0].startswith(str(bad))
    assert "random:alexnet" in capsys.readouterr().out
