"""The release's patch sampling (``quota="release"``) and mean-colour fill in mnm.methods.mix."""

from __future__ import annotations

import pytest
import torch

from mnm.methods.mix import PatchSampler, _release_selection, _union_area, sample_patches

IGNORE = 255


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _box(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [x1, y1, x2, y2]


def test_union_area_counts_overlaps_once_and_only_inside_the_window() -> None:
    kept = torch.tensor([[_box(0, 0, 4, 4), _box(2, 2, 6, 6), _box(50, 50, 60, 60)]])
    window = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert _union_area(kept, torch.tensor([[True, True, True]]), window).item() == 16 + 16 - 4
    assert _union_area(kept, torch.tensor([[True, False, False]]), window).item() == 16
    assert _union_area(kept, torch.tensor([[False, False, False]]), window).item() == 0
    assert _union_area(kept, torch.tensor([[True, True, True]]), torch.tensor([[3.0, 3.0, 5.0, 5.0]])).item() == 4


def test_release_selection_refills_with_rejected_candidates_in_order() -> None:
    a, far = _box(0, 0, 10, 10), _box(40, 40, 50, 50)
    boxes = torch.tensor([[a, a, far, a]])
    found = torch.ones(1, 4, dtype=torch.bool)
    pick = lambda k: _release_selection(boxes, found, k, 0.6, (64, 64))[0].nonzero().flatten().tolist()  # noqa: E731
    assert pick(2) == [0, 2]  # the two boxes that pass the rule
    assert pick(3) == [0, 1, 2]  # one rejected box refills
    assert pick(4) == [0, 1, 2, 3]
    found[0, 1] = False
    assert pick(4) == [0, 2, 3]  # never a candidate that found no centre


def test_release_rule_uses_the_union_of_kept_boxes() -> None:
    # each kept box covers 0.4 of the candidate, together 0.8 > 0.6: rejected (a pairwise rule would keep it)
    left, right, cand = _box(0, 0, 4, 10), _box(6, 0, 10, 10), _box(0, 0, 10, 10)
    boxes = torch.tensor([[left, right, cand]])
    keep = _release_selection(boxes, torch.ones(1, 3, dtype=torch.bool), 2, 0.6, (64, 64))
    assert keep[0].tolist() == [True, True, False]
    # coverage is counted inside the image only: a candidate half outside is kept
    boxes = torch.tensor([[_box(0, 0, 8, 8), _box(-8, 0, 8, 8)]])
    assert _release_selection(boxes, torch.ones(1, 2, dtype=torch.bool), 2, 0.6, (64, 64))[0].tolist() == [True, True]


def _scene(b: int = 6) -> torch.Tensor:
    labels = torch.zeros(b, 64, 64, dtype=torch.long)
    labels[:, 8:28, 8:28] = 3
    labels[:, 40:, 40:] = 7
    labels[:, :4] = IGNORE
    return labels


@pytest.mark.parametrize(("k", "n_bg"), [(10, 1), (9, 1), (20, 2), (25, 2), (4, 1)])
def test_release_quota_gives_k_patches_with_a_fixed_background_count(k: int, n_bg: int) -> None:
    labels = _scene()
    out = sample_patches(torch.rand(6, 3, 64, 64), labels, patches_per_image=k, size_range=(64, 256),
                         quota="release", generator=_gen())
    counts = out.image_index.bincount(minlength=6)
    assert counts.tolist() == [k] * 6  # 64-256 px boxes in a 64 px image overlap: the refill fills the quota
    bg = torch.zeros(6, dtype=torch.long).index_add_(0, out.image_index, (out.labels == 0).long())
    assert bg.tolist() == [n_bg] * 6
    sides = out.boxes[:, 3] - out.boxes[:, 1]
    assert bool((sides % 2 == 0).all()) and bool((sides <= 64).all())


def test_release_quota_falls_back_when_a_group_is_empty() -> None:
    labels = _scene(3)
    labels[0] = 5  # no background: its background slot goes to the foreground
    labels[1] = 0  # background only: its foreground slots go to the background
    labels[2] = IGNORE  # nothing valid: no patch
    out = sample_patches(torch.rand(3, 3, 64, 64), labels, patches_per_image=10, quota="release", generator=_gen())
    assert out.image_index.bincount(minlength=3).tolist() == [10, 10, 0]
    assert set(out.labels[out.image_index == 0].tolist()) == {5}
    assert set(out.labels[out.image_index == 1].tolist()) == {0}


def test_release_sides_are_even_and_cover_the_range() -> None:
    out = sample_patches(torch.rand(40, 1, 300, 300), torch.ones(40, 300, 300, dtype=torch.long),
                         patches_per_image=10, size_range=(64, 256), quota="release", generator=_gen(1))
    sides = (out.boxes[:, 3] - out.boxes[:, 1]).round().long()
    assert bool((sides % 2 == 0).all()) and sides.min() == 64 and sides.max() == 256


def test_release_foreground_centres_are_uniform_over_foreground_pixels() -> None:
    # foreground: class 1 on 100 pixels, class 2 on 300; the release draws pixels, not classes
    labels = torch.full((1, 40, 40), IGNORE, dtype=torch.long)
    labels[0, :10, :10] = 1
    labels[0, 10:20, :30] = 2
    labels[0, 30:, :] = 0
    labels = labels.expand(200, 40, 40).contiguous()
    sampler = PatchSampler(patches_per_image=10, size_range=(2, 2), quota="release", max_overlap=1.0)
    out = sampler.sample(torch.rand(200, 1, 40, 40), labels, _gen(2))
    fg = out.labels[out.labels != 0]
    assert out.labels.numel() == 2000 and fg.numel() == 1800 and IGNORE not in out.labels.tolist()
    assert abs((fg == 2).float().mean().item() - 0.75) < 0.04
    centres = ((out.boxes[:, 1] + out.boxes[:, 3]) / 2).floor().long()  # x of the centre pixel
    class2_x = centres[out.labels == 2]
    assert abs((class2_x < 15).float().mean().item() - 0.5) < 0.05  # uniform over the 30 columns


def test_fill_replaces_the_zeros_past_the_border() -> None:
    images = torch.full((1, 3, 16, 16), 0.2)
    labels = torch.full((1, 16, 16), IGNORE, dtype=torch.long)
    labels[0, 0, 0] = 1  # the only centre: a corner, so three quarters of the box lie outside
    fill = (0.5, 0.4, 0.3)
    out = sample_patches(images, labels, patches_per_image=1, size_range=(8, 8), out_size=8, fill=fill,
                         generator=_gen())
    patch = out.patches[0]
    assert torch.allclose(patch[:, 0, 0], torch.tensor(fill))
    assert torch.allclose(patch[:, -1, -1], torch.full((3,), 0.2))
    black = sample_patches(images, labels, patches_per_image=1, size_range=(8, 8), out_size=8, generator=_gen())
    assert torch.equal(black.patches[0, :, 0, 0], torch.zeros(3))


def test_defaults_are_unchanged() -> None:
    sampler = PatchSampler()
    assert (sampler.quota, sampler.fill) == ("fraction", None)
    with pytest.raises(ValueError, match="quota"):
        sample_patches(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long), quota="nope")
