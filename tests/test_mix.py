"""Tests for mnm.methods.mix.sample_patches (CPU, small images)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from mnm.methods import mix
from mnm.methods.mix import PatchBatch, crop_patches, sample_patches
from mnm.utils.rng import uniform_below

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


@pytest.mark.parametrize("background_class", [None, 0, IGNORE])
def test_centre_is_the_drawn_rank_of_its_group_in_raster_order(background_class) -> None:
    """The cumulative-count search picks the pixel of rank uniform_below(u, n) of its group."""
    g = _gen(11)
    labels = torch.randint(0, 3, (4, 9, 11), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.3] = IGNORE
    labels[1] = IGNORE  # no valid pixel
    labels[2, :5] = 0  # a background-rich image
    labels[3][labels[3] == 0] = 2  # no background
    flat = labels.reshape(4, -1)
    u = torch.rand(2, 4, 40, generator=g, dtype=torch.float64)
    pixel, found = mix._draw_centres(
        flat,
        u[0],
        u[1],
        ignore_index=IGNORE,
        background_class=background_class,
        background_fraction=0.4,
        class_balanced=False,
    )
    for b in range(4):
        valid = flat[b] != IGNORE
        bg = valid & (flat[b] == background_class)
        groups = [bg.nonzero().flatten(), (valid & ~bg).nonzero().flatten()]
        for j in range(40):
            want = 0 if float(u[0, b, j]) < 0.4 else 1
            if groups[want].numel() == 0:
                want = 1 - want
            members = groups[want]
            assert bool(found[b, j]) == (members.numel() > 0)
            if members.numel() == 0:
                assert int(pixel[b, j]) == 0
                continue
            rank = int(uniform_below(u[1, b, j], torch.tensor(members.numel())))
            assert int(pixel[b, j]) == int(members[rank])


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_crop_equals_one_roi_align(monkeypatch, threads) -> None:
    g = _gen(7)
    images = torch.rand(4, 3, 40, 56, generator=g, requires_grad=True)
    n = 70
    side = 4 + torch.rand(n, generator=g) * 30
    cx, cy = torch.rand(n, generator=g) * 56, torch.rand(n, generator=g) * 40  # some boxes stick out
    rois = torch.stack([torch.arange(n) % 4, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
    ref = roi_align(images, rois, output_size=9, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), images)

    calls: list[tuple[int, int]] = []  # (boxes, thread) of every roi_align call

    def spy(*args, **kwargs):
        calls.append((args[1].shape[0], threading.get_ident()))
        return roi_align(*args, **kwargs)

    monkeypatch.setattr(mix, "roi_align", spy)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in (0, 1, 31, 32, 33, 48, n):
            calls.clear()
            out = crop_patches(images, rois[:k], 9, sampling_ratio=-1)
            assert torch.equal(out, ref[:k])
            expect_chunks = min(threads, k // mix.MIN_BOXES_PER_THREAD) if k >= 32 else 1
            assert sorted(c[0] for c in calls) == sorted(
                t.shape[0] for t in rois[:k].tensor_split(expect_chunks)
            )
            main = [c for c in calls if c[1] == threading.get_ident()]
            assert len(main) == 1 and (len(calls) - len(main) == expect_chunks - 1)  # the rest in the pool
        (grad,) = torch.autograd.grad(crop_patches(images, rois, 9, sampling_ratio=-1).square().sum(), images)
        torch.testing.assert_close(grad, ref_grad)  # chunk gradients add up in another order
        with torch.no_grad():
            assert not crop_patches(images, rois, 9).requires_grad
    finally:
        torch.set_num_threads(old_threads)


def test_default_crop_is_a_bilinear_resize() -> None:
    """One bilinear sample per output pixel centre: F.grid_sample on boxes inside the image."""
    g = _gen(3)
    images = torch.rand(2, 3, 50, 60, generator=g)
    n, out_size = 12, 16
    side = 8 + torch.rand(n, generator=g) * 30  # up to ~2.4x downscaling
    cx = 20 + torch.rand(n, generator=g) * 20
    cy = 20 + torch.rand(n, generator=g) * 10
    rois = torch.stack([torch.arange(n) % 2, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
    # box [x1, x2) in pixel-edge coordinates -> normalised [-1, 1] of grid_sample (align_corners=False)
    h, w = images.shape[-2:]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = side / w
    theta[:, 1, 1] = side / h
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    ref = F.grid_sample(images[rois[:, 0].long()], grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(crop_patches(images, rois, out_size), ref, atol=1e-5, rtol=1e-5)
    smooth = crop_patches(images, rois, out_size, sampling_ratio=-1)
    assert not torch.allclose(smooth, ref, atol=1e-3)  # the adaptive average differs where side > out_size


def test_sample_patches_antialias_switch() -> None:
    images, labels = torch.rand(2, 3, 64, 64, generator=_gen(1)), torch.randint(0, 3, (2, 64, 64), generator=_gen(2))
    kw = {"patches_per_image": 4, "size_range": (40, 60), "out_size": 16, "background_class": None}
    plain = sample_patches(images, labels, generator=_gen(5), **kw)
    smooth = sample_patches(images, labels, antialias=True, generator=_gen(5), **kw)
    assert torch.equal(plain.boxes, smooth.boxes) and torch.equal(plain.labels, smooth.labels)
    torch.testing.assert_close(smooth.patches, crop_patches(images, smooth.boxes, 16, sampling_ratio=-1))
    torch.testing.assert_close(plain.patches, crop_patches(images, plain.boxes, 16))
    assert not torch.allclose(plain.patches, smooth.patches)
