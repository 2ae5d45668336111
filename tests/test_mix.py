"""Tests for mnm.mix.sample_patches (CPU, small images)."""

from __future__ import annotations

import pytest
import torch

from mnm.mix import PatchBatch, sample_patches

IGNORE = 255


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """3 images 48×64: class blocks 0..3, an ignore band, and a fully ignored image (index 1)."""
    g = _gen(123)
    images = torch.rand(3, 3, 48, 64, generator=g)
    labels = torch.zeros(3, 48, 64, dtype=torch.long)
    labels[:, :, 16:32] = 1
    labels[:, 24:, 32:] = 2
    labels[:, :8] = IGNORE
    labels[2, 30:, :20] = 3
    labels[1] = IGNORE
    return images, labels


def _centres(pb: PatchBatch) -> tuple[torch.Tensor, torch.Tensor]:
    cx = (pb.boxes[:, 1] + pb.boxes[:, 3]) / 2 - 0.5
    cy = (pb.boxes[:, 2] + pb.boxes[:, 4]) / 2 - 0.5
    assert torch.equal(cx, cx.round()) and torch.equal(cy, cy.round())
    return cx.long(), cy.long()


def test_shapes_labels_and_centres(batch) -> None:
    images, labels = batch
    pb = sample_patches(
        images, labels, patches_per_image=5, size_range=(8, 20), out_size=12, generator=_gen()
    )
    n = pb.labels.numel()
    assert pb.patches.shape == (n, 3, 12, 12) and pb.boxes.shape == (n, 5) and pb.image_index.shape == (n,)
    assert pb.labels.dtype == torch.long and pb.image_index.dtype == torch.long
    assert n == 10  # two usable images × 5
    assert set(pb.image_index.tolist()) == {0, 2}  # the all-ignore image yields nothing
    assert torch.equal(pb.boxes[:, 0].long(), pb.image_index)
    cx, cy = _centres(pb)
    assert torch.equal(labels[pb.image_index, cy, cx], pb.labels)
    assert not bool((pb.labels == IGNORE).any())
    side = pb.boxes[:, 3] - pb.boxes[:, 1]
    assert torch.equal(side, pb.boxes[:, 4] - pb.boxes[:, 2])
    assert bool(((side >= 8) & (side <= 20) & (side == side.round())).all())


def test_patch_side_is_clamped_to_the_image() -> None:
    labels = torch.ones(1, 20, 30, dtype=torch.long)
    pb = sample_patches(
        torch.rand(1, 3, 20, 30),
        labels,
        patches_per_image=3,
        size_range=(64, 90),
        out_size=8,
        max_overlap=1.0,
        generator=_gen(),
    )
    assert pb.labels.numel() == 3
    assert bool((pb.boxes[:, 3] - pb.boxes[:, 1] == 20).all())


def test_overlap_rule(batch) -> None:
    images, labels = batch
    max_overlap = 0.3
    pb = sample_patches(
        images,
        labels,
        patches_per_image=12,
        size_range=(10, 24),
        out_size=8,
        max_overlap=max_overlap,
        generator=_gen(5),
    )
    assert pb.labels.numel() > 4
    for b in pb.image_index.unique():
        boxes = pb.boxes[pb.image_index == b, 1:]
        lo = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
        hi = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        inter = (hi - lo).clamp(min=0).prod(-1)
        area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
        ratio = inter / torch.minimum(area[:, None], area[None, :])
        ratio.fill_diagonal_(0)
        assert float(ratio.max()) <= max_overlap + 1e-6
    # without the rule (max_overlap=1) every image fills up, and heavy overlaps do occur
    free = sample_patches(
        images,
        labels,
        patches_per_image=12,
        size_range=(10, 24),
        out_size=8,
        max_overlap=1.0,
        generator=_gen(5),
    )
    assert free.labels.numel() == 24


def test_all_ignore_batch_is_empty() -> None:
    labels = torch.full((2, 16, 16), IGNORE)
    for balanced in (False, True):
        pb = sample_patches(
            torch.rand(2, 3, 16, 16),
            labels,
            size_range=(4, 8),
            out_size=6,
            class_balanced=balanced,
            generator=_gen(),
        )
        assert pb.patches.shape == (0, 3, 6, 6) and pb.labels.shape == (0,)
        assert pb.boxes.shape == (0, 5) and pb.image_index.shape == (0,)


def test_deterministic_with_generator(batch) -> None:
    images, labels = batch
    kw = dict(patches_per_image=6, size_range=(8, 20), out_size=10)
    a = sample_patches(images, labels, generator=_gen(9), **kw)
    b = sample_patches(images, labels, generator=_gen(9), **kw)
    c = sample_patches(images, labels, generator=_gen(10), **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.boxes, c.boxes)


def test_constant_region_patch_has_its_colour() -> None:
    """Left half red (class 1), right half blue (class 2): patches inside a half are pure colour."""
    images = torch.zeros(1, 3, 64, 64)
    images[0, 0, :, :32] = 1.0
    images[0, 2, :, 32:] = 0.5
    labels = torch.ones(1, 64, 64, dtype=torch.long)
    labels[0, :, 32:] = 2
    pb = sample_patches(
        images,
        labels,
        patches_per_image=30,
        size_range=(6, 12),
        out_size=5,
        max_overlap=1.0,
        background_class=None,
        generator=_gen(2),
    )
    x1, y1, x2, y2 = pb.boxes[:, 1:].unbind(1)
    inside_left = (x1 >= 0) & (x2 <= 32) & (y1 >= 0) & (y2 <= 64)
    inside_right = (x1 >= 32) & (x2 <= 64) & (y1 >= 0) & (y2 <= 64)
    assert bool(inside_left.any()) and bool(inside_right.any())
    red, blue = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 0.5])
    for i in inside_left.nonzero().flatten():
        assert pb.labels[i] == 1
        torch.testing.assert_close(pb.patches[i], red[:, None, None].expand(3, 5, 5))
    for i in inside_right.nonzero().flatten():
        assert pb.labels[i] == 2
        torch.testing.assert_close(pb.patches[i], blue[:, None, None].expand(3, 5, 5))


def _half_background(n_images: int, fg_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.zeros(n_images, 32, 32, dtype=torch.long)
    labels[:, :fg_rows] = 1
    labels[:, :fg_rows, :3] = 2  # a rare class
    return torch.rand(n_images, 3, 32, 32), labels


def test_background_fraction() -> None:
    images, labels = _half_background(8, 16)
    kw = dict(patches_per_image=50, size_range=(4, 4), out_size=4, max_overlap=1.0)
    pb = sample_patches(images, labels, background_fraction=0.1, generator=_gen(1), **kw)
    assert 0.04 < float((pb.labels == 0).float().mean()) < 0.18
    pb = sample_patches(images, labels, background_fraction=0.9, generator=_gen(1), **kw)
    assert 0.82 < float((pb.labels == 0).float().mean()) < 0.96
    only_bg = sample_patches(images, torch.zeros_like(labels), generator=_gen(1), **kw)  # falls back
    assert only_bg.labels.numel() == 400 and bool((only_bg.labels == 0).all())


def test_class_balanced_draws_classes_uniformly() -> None:
    images, labels = _half_background(8, 16)
    pb = sample_patches(
        images,
        labels,
        patches_per_image=60,
        size_range=(4, 4),
        out_size=4,
        max_overlap=1.0,
        class_balanced=True,
        generator=_gen(4),
    )
    shares = torch.bincount(pb.labels, minlength=3).float() / pb.labels.numel()
    assert bool((shares - 1 / 3).abs().max() < 0.07), shares  # pixel shares are 0.5, 0.41, 0.09
