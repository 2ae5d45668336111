"""Pixel-wise supervised contrastive pre-training (Zhao et al. 2021): the loss, the head, the hand-off.

The stage through its CLI (fast_dev_run per mode, settings, --print_config) is in test_stages.py."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from mnm.methods.losses import (
    cross_image_pixel_contrastive_loss,
    pixel_contrast_pairs,
    pixel_contrast_stats,
    within_image_pixel_contrastive_loss,
)
from mnm.models.backbones import build_backbone
from mnm.models.heads import ProjectionHead
from mnm.runs.config import load_pipeline
from mnm.runs.runner import PipelineRunner
from mnm.runs.stage_cli import build_stage
from mnm.weights.checkpoints import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
IGNORE = [-2, -1]


def reference_labels() -> torch.Tensor:
    """The released test's batch: 2 images of 16 pixels, sorted labels -2,-2,-1,-1 then 1,2,3 x 4."""
    return torch.tensor(sorted(IGNORE * 2 + [1] * 4 + [2] * 4 + [3] * 4)).repeat(2, 1)


def test_reference_values_of_the_released_test() -> None:
    labels = reference_labels()
    features = labels.float()[..., None]
    within = within_image_pixel_contrastive_loss(features, labels, IGNORE, temperature=1.0)
    torch.testing.assert_close(within, torch.tensor(2.4503216))
    cross = cross_image_pixel_contrastive_loss(features, 2 * features, labels, labels, IGNORE, temperature=1.0)
    swapped = cross_image_pixel_contrastive_loss(2 * features, features, labels, labels, IGNORE, temperature=1.0)
    torch.testing.assert_close(cross, torch.tensor(5.46027374))
    torch.testing.assert_close(swapped, torch.tensor(5.46027374))


def naive_loss(features: torch.Tensor, labels: torch.Tensor, ignore: list[int], tau: float, formula: str) -> float:
    """The loss of one batch of images, pair by pair in Python (within-image)."""
    per_image = []
    for f, lab in zip(features.tolist(), labels.tolist(), strict=True):
        valid = [i for i, v in enumerate(lab) if v not in ignore]
        e = {(a, k): math.exp(sum(x * y for x, y in zip(f[a], f[k], strict=True)) / tau) for a in valid for k in valid}
        per_anchor = []
        for a in valid:
            positives = [p for p in valid if lab[p] == lab[a]]
            negatives = sum(e[a, n] for n in valid if lab[n] != lab[a])
            everything = sum(e[a, k] for k in valid)
            terms = [-math.log(e[a, p] / ((e[a, p] + negatives) if formula == "code" else everything)) for p in positives]
            per_anchor.append(sum(terms) / len(terms))
        per_image.append(sum(per_anchor) / len(per_anchor) if per_anchor else 0.0)
    return sum(per_image) / len(per_image)


@pytest.mark.parametrize("formula", ["code", "paper"])
def test_matches_pair_by_pair_definition(formula: str) -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (3, 12))
    labels[0, :5] = 255
    labels[2] = 255  # an image without valid pixels counts as 0
    features = torch.nn.functional.normalize(torch.randn(3, 12, 5), dim=2)
    got = within_image_pixel_contrastive_loss(features, labels, [255], temperature=0.5, formula=formula)
    assert float(got) == pytest.approx(naive_loss(features, labels, [255], 0.5, formula), rel=1e-5)
    if formula == "paper":  # the two formulas differ: the paper's denominator also holds the other positives
        code = within_image_pixel_contrastive_loss(features, labels, [255], temperature=0.5)
        assert float(got) > float(code)


def test_cross_image_negatives_only_from_the_anchor_image() -> None:
    labels1, labels2 = torch.tensor([[0, 1, 255]]), torch.tensor([[0, 1, 1]])
    positive, negative = pixel_contrast_pairs(labels1, labels2, [255])
    assert positive[0, 0].tolist() == [True, False, False, True, False, False]  # own class in both images
    assert negative[0, 0].tolist() == [False, True, False, False, False, False]  # other class, own image only
    assert not positive[0, 2].any() and not negative[0, 2].any() and not positive[0, :, 2].any()  # ignored pixel
    stats = pixel_contrast_stats(labels1, labels2, [255])
    torch.testing.assert_close(stats["valid_fraction"], torch.tensor(5 / 6))
    torch.testing.assert_close(stats["positives_per_anchor"], torch.tensor((2 + 3 + 2 + 3 + 3) / 5))


def test_gradients_reach_head_and_backbone_and_skip_ignored_pixels() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("alexnet")
    head = ProjectionHead(backbone.out_channels[3], num_layers=2, channels=16)
    images = torch.rand(2, 3, 64, 64)
    mask = torch.randint(0, 3, (2, 8, 8))
    mask[:, :2] = 255
    maps = backbone.features(images)[3]
    maps.retain_grad()
    z = head([maps], (8, 8)).flatten(2).transpose(1, 2)
    z.retain_grad()
    labels = mask.flatten(1)
    loss = within_image_pixel_contrastive_loss(z, labels, [255], 0.07) + cross_image_pixel_contrastive_loss(
        z[:1], z[1:], labels[:1], labels[1:], [255], 0.07
    )
    loss.backward()
    torch.testing.assert_close(torch.linalg.vector_norm(z.detach(), dim=2), torch.ones(2, 64))
    ignored = labels == 255
    assert z.grad[ignored].abs().max() == 0 and z.grad[~ignored].abs().max() > 0
    for name, p in itertools.chain(head.named_parameters(), backbone.body[:9].named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # moving the embeddings of ignored pixels changes nothing
    moved = z.detach().clone()
    moved[ignored] = torch.nn.functional.normalize(torch.randn(int(ignored.sum()), 16), dim=1)
    torch.testing.assert_close(within_image_pixel_contrastive_loss(moved, labels, [255], 0.07),
                               within_image_pixel_contrastive_loss(z.detach(), labels, [255], 0.07))


def test_layers_past_the_used_maps_are_frozen_and_every_other_parameter_gets_a_gradient() -> None:
    """feature_maps: [3] on AlexNet never reaches conv5 + bn5: they are frozen, so DDP needs no unused-parameter search."""
    from mnm.stages.pixel_contrast import PixelContrastStage

    model = PixelContrastStage(backbone="alexnet", feature_maps=[3], projection_channels=16, mode="within")
    assert model.unreached_parameters == ["backbone.body.14.weight", "backbone.body.14.bias",
                                          "backbone.body.15.weight", "backbone.body.15.bias"]
    assert PixelContrastStage(backbone="alexnet", projection_channels=16).unreached_parameters == []
    batch = {"image": torch.rand(2, 3, 64, 64), "mask": torch.randint(0, 3, (2, 64, 64))}
    model._step(batch, torch.Generator().manual_seed(0), "val").backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad == (name not in model.unreached_parameters), name


def test_projection_head_shape_and_unit_length() -> None:
    head = ProjectionHead(12, num_layers=3, channels=8)
    out = head([torch.randn(2, 5, 3, 4), torch.randn(2, 7, 6, 8)], (6, 8))
    assert out.shape == (2, 8, 6, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 6, 8))
    assert len(head.hidden) == 2 and isinstance(head.out, torch.nn.Conv2d)


@pytest.mark.slow
def test_tiny_pipeline_hands_the_backbone_to_segment(tmp_path: Path) -> None:
    out = tmp_path / "tiny_pixcon"
    pipeline = load_pipeline(REPO / "conf" / "pipelines" / "tiny_pixcon.yaml",
                             [f"data_root={tmp_path / 'data'}", "steps=4"], out_dir=str(out))
    PipelineRunner(pipeline).run()
    manifest = json.loads((out / "manifest.json").read_text())
    handed = manifest["stages"]["finetune"]["pretrained_backbone"]
    assert handed == manifest["stages"]["pixel_contrast"]["checkpoint"]
    state = read_checkpoint(handed)["state_dict"]
    assert any(k.startswith("head.") for k in state)  # the head is saved, but only the backbone travels
    config = pipeline.stages[1].config
    config["model"]["pretrained_backbone"] = handed
    config["trainer"] = {"logger": False, "enable_checkpointing": False}
    model = build_stage("segment", config).model
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[f"backbone.{key}"]), key
    metrics = json.loads((out / "finetune" / "metrics.json").read_text())["eval"]
    assert 0.0 <= metrics["miou"] <= 1.0
