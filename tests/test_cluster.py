"""Self-supervised pixel clustering (PiCIE-style with FS^4-style additions): core parts, the stage, the hand-off.

The Hungarian-matched metric is in test_hungarian.py; the stage's plain fast_dev_run is in test_stages.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from data_fixtures import synthetic_data

from mnm.evaluation.linear_probe import linear_probe
from mnm.methods.clustering import (
    PyramidFusion,
    assign,
    broadcast_cells,
    cell_features,
    context_aware_embedding,
    crop_resize,
    distance_logits,
    fit_spherical_kmeans,
)
from mnm.runs.config import load_pipeline
from mnm.runs.runner import PipelineRunner
from mnm.runs.stage_cli import build_stage
from mnm.stages.cluster import ClusterStage
from mnm.weights.checkpoints import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAINER = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
           "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0}
MODEL = {"backbone": "alexnet", "num_clusters": 6, "channels": 16, "kmeans_pixels_per_image": 32}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return synthetic_data(tmp_path_factory.mktemp("synthetic") / "data", side=64, crop=64)


# -- core parts ------------------------------------------------------------------------------------
def test_context_embedding_keeps_a_pixel_among_dissimilar_neighbours() -> None:
    features = torch.zeros(1, 2, 3, 3)
    features[0, 0] = 1.0  # every pixel points along x ...
    features[0, :, 1, 1] = torch.tensor([0.0, 2.0])  # ... but the centre points along y (cosine 0 to all)
    out = context_aware_embedding(features, kernel_size=3, sigma=1.0)
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([0.0, 2.0]))
    # a corner pixel: its in-image neighbours are alike (the centre weighs 0), so it stays [1, 0] too
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 0.0]))


def test_context_embedding_weights_by_space_and_appearance() -> None:
    """A 1×3 row: the middle pixel mixes with its two neighbours by Gaussian × cosine, computed by hand."""
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3.0])
    features = torch.stack([a, b, c], 1)[None, :, None, :]  # 1×2×1×3
    out = context_aware_embedding(features, kernel_size=3, sigma=2.0)
    g = math.exp(-1 / (2 * 2.0**2))  # distance 1
    cos = 1 / math.sqrt(2)  # of b with a and with c
    expected = (g * cos * a + b + g * cos * c) / (1 + 2 * g * cos)
    torch.testing.assert_close(out[0, :, 0, 1], expected)
    with pytest.raises(ValueError, match="odd"):
        context_aware_embedding(features, kernel_size=2)


def test_spherical_kmeans_is_seeded_and_assignments_are_nearest() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    samples = centres.repeat(50, 1) + 0.01 * torch.randn(200, 8, generator=gen)
    first, again = fit_spherical_kmeans(samples, 4, seed=3), fit_spherical_kmeans(samples, 4, seed=3)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(4))
    # every true centre is found: its nearest fitted centroid is within the noise
    assert (centres @ first.T).max(1).values.min() > 0.99
    labels = assign(samples, first)
    assert torch.equal(labels, distance_logits(samples, first).argmax(1))
    assert len(labels.unique()) == 4


def test_cells_pool_per_grid_cell_and_broadcast_back() -> None:
    features = torch.zeros(1, 2, 4, 4)
    features[0, 0, :, :2] = 1.0  # left half along x, right half along y
    features[0, 1, :, 2:] = 1.0
    whole, halves = cell_features(features, 1), cell_features(features, 2)
    torch.testing.assert_close(whole[0, :, 0, 0], F.normalize(torch.ones(2), dim=0))
    torch.testing.assert_close(halves[0, :, 0, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(halves[0, :, 1, 1], torch.tensor([0.0, 1.0]))
    pixels = broadcast_cells(torch.tensor([[[0, 1], [2, 3]]]), (4, 4))
    assert pixels[0, 0].tolist() == [0, 0, 1, 1] and pixels[0, 3].tolist() == [2, 2, 3, 3]


def test_crop_resize_full_box_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(2, 3, 8, 12)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    torch.testing.assert_close(crop_resize(x, full, torch.tensor([False, False])), x)
    torch.testing.assert_close(crop_resize(x, full, torch.tensor([True, False]))[0], x[0].flip(-1))
    left = crop_resize(x, torch.tensor([[0.0, 0.0, 0.5, 1.0]] * 2), torch.tensor([False, False]), size=(8, 6))
    torch.testing.assert_close(left, x[..., :6])


def test_pyramid_fusion_sums_levels_at_the_finest_map() -> None:
    fusion = PyramidFusion([4, 6, 8], channels=5)
    out = fusion([torch.rand(2, 4, 16, 16), torch.rand(2, 6, 8, 8), torch.rand(2, 8, 4, 4)])
    assert out.shape == (2, 5, 16, 16)


def test_linear_probe_reads_labels_from_informative_features() -> None:
    """Features that one-hot encode the label (hidden in the image) are linearly separable: mIoU 1."""
    gen = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (6, 8, 8), generator=gen)
    masks[0, 0, 0] = 255
    batches = [{"image": m[:, None].float().expand(-1, 3, -1, -1) / 3, "mask": m} for m in masks.split(2)]

    def embed(image: torch.Tensor) -> torch.Tensor:
        return F.one_hot((image[:, 0] * 3).round().long().clamp(0, 2), 3).permute(0, 3, 1, 2).float()

    out = linear_probe(embed, batches, batches, num_classes=3, pixels_per_image=64, epochs=50, lr=0.1)
    assert out["miou"] == pytest.approx(1.0)
    noise = linear_probe(lambda im: torch.rand(len(im), 3, 8, 8, generator=gen), batches, batches, 3, epochs=5)
    assert noise["miou"] < 0.9


# -- the stage -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "additions",
    [{}, {"pyramid_levels": [1, 2]}, {"context_kernel": 3}, {"pyramid_levels": [1, 2, 4], "context_kernel": 3},
     {"geometric": False, "photometric": False}],
    ids=["baseline", "pyramid", "context", "both", "no-views"],
)
@pytest.mark.slow
def test_fast_dev_run_with_each_addition(additions: dict, data: dict) -> None:
    cli = build_stage("cluster", {"model": {**MODEL, **additions}, "data": data,
                                  "trainer": {**TRAINER, "fast_dev_run": 2}})  # fmt: skip
    before = {k: v.clone() for k, v in cli.model.backbone.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.callback_metrics
    assert torch.isfinite(logged["train/loss"]) and float(logged["train/loss"]) > 0
    assert ("train/loss_pyramid" in logged) == bool(additions.get("pyramid_levels"))
    assert ("train/context_shift" in logged) == bool(additions.get("context_kernel"))
    assert 1 <= float(logged["train/clusters_used"]) <= 6
    assert cli.model.centroids.shape == (1 + len(additions.get("pyramid_levels", [])), 6, 16)
    torch.testing.assert_close(cli.model.centroids.norm(dim=2), torch.ones(cli.model.centroids.shape[:2]))
    assert any(not torch.equal(v, before[k]) for k, v in cli.model.backbone.state_dict().items())


def _fit(data: dict, seed: int, steps: int, **model) -> ClusterStage:
    cli = build_stage("cluster", {"model": {**MODEL, "seed": seed, "pyramid_levels": [2], **model}, "data": data,
                                  "seed_everything": seed, "trainer": {**TRAINER, "max_steps": steps}})  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.model.final_loss = float(cli.trainer.callback_metrics["train/loss"])
    return cli


@pytest.mark.slow
def test_same_seed_same_centroids_and_loss(data: dict) -> None:
    # 3 steps of 2-batch epochs: the epoch-1 clustering runs on trained weights
    a, b, c = (_fit(data, seed, 3) for seed in (0, 0, 1))
    assert int(a.model.clustered_epoch) == 1
    torch.testing.assert_close(a.model.centroids, b.model.centroids, rtol=0, atol=0)
    assert a.model.final_loss == b.model.final_loss
    assert not torch.allclose(a.model.centroids, c.model.centroids)


class SaveAfterFirstStep(L.Callback):
    """Writes a checkpoint in the middle of the first epoch (after its first batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 1:
            trainer.save_checkpoint(self.path)


@pytest.mark.slow
def test_resume_keeps_the_checkpointed_centroids(data: dict, tmp_path: Path) -> None:
    ckpt = tmp_path / "mid.ckpt"
    first = build_stage("cluster", {"model": {**MODEL, "pyramid_levels": [2]}, "data": data,
                                    "trainer": {**TRAINER, "max_steps": 2}})  # fmt: skip
    first.trainer.callbacks.append(SaveAfterFirstStep(ckpt))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    stored = read_checkpoint(ckpt)["state_dict"]
    assert int(stored["clustered_epoch"]) == 0
    torch.testing.assert_close(stored["centroids"], first.model.centroids)  # epoch 0's, kept through the epoch
    again = build_stage("cluster", {"model": {**MODEL, "pyramid_levels": [2]}, "data": data,
                                    "trainer": {**TRAINER, "max_steps": 3}})  # fmt: skip
    calls = []
    again.model.recluster = lambda epoch: calls.append(epoch)  # record the re-clusterings of the resumed run
    again.trainer.fit(again.model, datamodule=again.datamodule, ckpt_path=ckpt)
    assert calls == [1]  # epoch 0 was clustered before the checkpoint: its centroids are reused; epoch 1 is new
    torch.testing.assert_close(again.model.centroids, stored["centroids"])


def test_validation_scores_hungarian_miou(data: dict) -> None:
    cli = build_stage("cluster", {"model": MODEL, "data": data, "trainer": {**TRAINER, "limit_val_batches": None}})
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)  # random init: k-means on random features
    result = cli.model.read_evaluation(cli.trainer.callback_metrics, "val")
    assert 0 < result["miou"] <= 1 and 0 < result["pixel_acc"] <= 1
    assert len(result["per_class_iou"]) == cli.model.hparams.num_classes
    assert sorted(k for k in cli.model.last_eval["assignment"] if k >= 0) == sorted(set(cli.model.last_eval["assignment"]) - {-1})


def test_bad_settings_name_the_key() -> None:
    for model, key in (({"pyramid_levels": [0]}, "model.pyramid_levels"), ({"context_kernel": 4}, "model.context_kernel"),
                       ({"feature_maps": [9]}, "model.feature_maps"), ({"crop_min_scale": 0}, "model.crop_min_scale"),
                       ({"num_classes": 8}, "model.num_clusters")):
        with pytest.raises(ValueError, match=key):
            ClusterStage(**{**MODEL, "num_classes": 5, **model})


@pytest.mark.slow
def test_cluster_mix_match_finetune_pipeline_hands_the_backbone_on(tmp_path: Path) -> None:
    out = tmp_path / "tiny_cluster"
    pipeline = load_pipeline(REPO / "conf" / "pipelines" / "tiny_cluster.yaml",
                             [f"data_root={tmp_path / 'data'}", "steps=4"], out_dir=str(out))  # fmt: skip
    PipelineRunner(pipeline).run()
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest["stages"]
    assert stages["mix_match"]["pretrained_backbone"] == stages["cluster"]["checkpoint"]
    assert stages["finetune"]["pretrained_backbone"] == stages["mix_match"]["checkpoint"]
    assert 0 < stages["cluster"]["score"]["value"] <= 1  # the cluster stage is evaluated (Hungarian mIoU) after fitting
    cluster_state = read_checkpoint(stages["cluster"]["checkpoint"])["state_dict"]
    mm_state = read_checkpoint(stages["mix_match"]["checkpoint"])["state_dict"]
    assert "centroids" in cluster_state and "centroids" not in mm_state


@pytest.mark.slow
def test_label_efficient_cluster_arm_runs_through_the_protocol(tmp_path: Path, camvid_root: Path, monkeypatch) -> None:
    """The cluster -> M&M graph -> fine-tune arm of the CamVid protocol, shrunk to a few steps on 8 images."""
    from mnm.experiments.protocol import run_protocol
    from mnm.experiments.protocol_cells import cell_name

    monkeypatch.chdir(REPO)
    sets = [f"data.root={camvid_root}", "data.max_samples=8", "data.num_workers=0", "cl_steps=2", "mm_steps=2",
            "mm_drop=1", "ft_steps=2", "ft_drop=1"]  # fmt: skip
    report = run_protocol("conf/benchmarks/camvid_label_efficient.yaml", tmp_path, sets, fractions=[1.0],
                          seeds=[0], arms=["ft_cluster_mm_graph"])  # fmt: skip
    manifest = json.loads((tmp_path / cell_name(1.0, 0) / "manifest.json").read_text())["stages"]
    assert manifest["cluster_mm_graph"]["pretrained_backbone"] == manifest["cluster"]["checkpoint"]
    assert manifest["ft_cluster_mm_graph"]["pretrained_backbone"] == manifest["cluster_mm_graph"]["checkpoint"]
    assert 0 < manifest["cluster"]["score"]["value"] <= 1  # the proxy stage itself is evaluated, Hungarian-matched
    row = report["summary"]["cluster → M&M graph → fine-tune"]["1"]
    assert row["miou"]["n"] == 1 and 0 <= row["miou"]["mean"] <= 1


@pytest.mark.slow
def test_unsupervised_benchmark_reports_matched_miou_probe_and_figure(tmp_path: Path, monkeypatch) -> None:
    from mnm.experiments.unsupervised import run_unsupervised
    from mnm.runs.rundir import LINEAR_PROBE_CACHE

    monkeypatch.chdir(REPO)
    sets = [f"data_root={tmp_path / 'data'}"]
    report = run_unsupervised("conf/benchmarks/tiny_unsupervised.yaml", tmp_path / "run", sets, seeds=[0], samples=2)
    assert list(report["arms"]) == ["random init", "PiCIE-style", "FS^4-style"]
    for row in report["arms"].values():  # seed 0 only: n = 1
        assert row["miou"]["n"] == 1 and 0 < row["miou"]["mean"] <= 1
        assert 0 <= row["probe_miou"]["mean"] <= 1 and 0 < row["pixel_acc"]["mean"] <= 1
    probes = json.loads((tmp_path / "run" / "f1-s0" / LINEAR_PROBE_CACHE).read_text())
    assert sorted(probes) == ["fs4", "picie", "random"]
    assert (tmp_path / "run" / "cluster_maps.png").stat().st_size > 0
    text = (tmp_path / "run" / "unsupervised.md").read_text()
    assert "| PiCIE-style |" in text and "(n=1)" in text and "cluster_maps.png" in text
    assert not (tmp_path / "run" / "f1-s1").exists()  # --seeds 0 ran one cell
