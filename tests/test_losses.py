"""Tests for mnm.methods.losses.TripletLoss."""

from __future__ import annotations

import pytest
import torch

from mnm.methods.losses import TripletLoss, TripletStats
from mnm.methods.match import graph_triplets
from mnm.models.backbones import build_backbone

MARGIN = 2.1


def test_known_values_orthogonal_and_identical() -> None:
    e = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [0, 0, 5.0]])  # 0≡1 after normalising
    loss_fn = TripletLoss(MARGIN)
    # D(a,p) = 0 (same direction), D(a,n) = 2 (orthogonal): hinge = 0 - 2 + 2.1 = 0.1
    s = loss_fn(e, torch.tensor([[0, 1, 2]]))
    assert isinstance(s, TripletStats)
    torch.testing.assert_close(s.loss, torch.tensor(0.1))
    torch.testing.assert_close(
        (s.d_ap, s.d_an, s.active_fraction), (torch.tensor(0.0), torch.tensor(2.0), torch.tensor(1.0))
    )
    # D(a,p) = 2, D(a,n) = 0: hinge = 2 + 2.1 = 4.1; mean over both triplets = (0.1 + 4.1) / 2
    s = loss_fn(e, torch.tensor([[0, 1, 2], [0, 3, 1]]))
    torch.testing.assert_close(s.loss, torch.tensor(2.1))
    # opposite directions: D(a,n) = 4, so 0 - 4 + 2.1 < 0 -> inactive, loss 0, still averaged over all
    e2 = torch.tensor([[1.0, 0], [2.0, 0], [-1.0, 0]])
    s = TripletLoss(MARGIN)(e2, torch.tensor([[0, 1, 2], [0, 1, 2]]))
    assert float(s.loss) == 0.0 and float(s.active_fraction) == 0.0
    torch.testing.assert_close(s.d_an, torch.tensor(4.0))
    # mixed: one active (0.1), one inactive (0): mean 0.05, active fraction 1/2
    opposite = torch.cat([e, torch.tensor([[-1.0, 0, 0]])])  # node 4 opposes node 0
    s = TripletLoss(MARGIN)(opposite, torch.tensor([[0, 1, 2], [0, 1, 4]]))
    torch.testing.assert_close(s.loss, torch.tensor(0.05))
    torch.testing.assert_close(s.active_fraction, torch.tensor(0.5))


def test_rows_without_negative_are_dropped() -> None:
    e = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0]], requires_grad=True)
    s = TripletLoss(MARGIN)(e, torch.tensor([[0, 1, 2], [1, 0, -1], [2, 2, -1]]))
    torch.testing.assert_close(s.loss, torch.tensor(0.1))  # only the first row counts
    none = TripletLoss(MARGIN)(e, torch.tensor([[1, 0, -1], [2, 2, -1]]))
    assert none.loss.item() == 0.0 and none.loss.requires_grad
    assert all(float(x) == 0.0 for x in none[1:])
    none.loss.backward()
    assert e.grad is not None and float(e.grad.abs().sum()) == 0.0


def test_stats_are_detached() -> None:
    e = torch.randn(6, 4, requires_grad=True)
    s = TripletLoss()(e, graph_triplets(torch.tensor([0, 0, 1, 1, 2, 2]), torch.Generator().manual_seed(0)))
    assert s.loss.requires_grad
    assert not any(x.requires_grad for x in (s.active_fraction, s.d_ap, s.d_an))


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_gradients_reach_backbone_parameters(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name)
    images = torch.rand(4, 3, 64, 64)
    triplets = graph_triplets(torch.tensor([0, 0, 1, 1]), torch.Generator().manual_seed(0))
    s = TripletLoss()(net.embed(images), triplets)
    assert s.loss.item() > 0
    s.loss.backward()
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and float(first_conv.weight.grad.abs().sum()) > 0
    with_grad = [p for p in net.parameters() if p.grad is not None and bool(p.grad.ne(0).any())]
    assert len(with_grad) > len(list(net.parameters())) // 2


def test_release_normalisation_halves_the_mean() -> None:
    # hinges 0.1 and 4.1 (see test_known_values...): mean (0.1 + 4.1) / 2 = 2.1; release (0.1 + 4.1) / 4 = 1.05
    e = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [0, 0, 5.0]])
    triplets = torch.tensor([[0, 1, 2], [0, 3, 1]])
    torch.testing.assert_close(TripletLoss(MARGIN, reduction="release")(e, triplets).loss, torch.tensor(1.05))
    torch.testing.assert_close(TripletLoss(MARGIN)(e, triplets).loss, torch.tensor(2.1))
    with pytest.raises(ValueError, match="unknown reduction 'sum'"):
        TripletLoss(reduction="sum")


def test_pixel_contrast_and_cluster_logits_stay_fp32_under_bf16_autocast() -> None:
    """bf16 similarities at tau = 0.07 are off by ~0.06 in the logits: both are computed in fp32 instead."""
    from mnm.methods.clustering import distance_logits
    from mnm.methods.losses import within_image_pixel_contrastive_loss

    generator = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(2, 300, 64, generator=generator), dim=2)
    labels = torch.randint(0, 5, (2, 300), generator=generator)
    maps, centroids = torch.randn(2, 64, 8, 8, generator=generator), torch.randn(10, 64, generator=generator)
    loss, logits = within_image_pixel_contrastive_loss(features, labels, [255], 0.07), distance_logits(maps, centroids, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.bmm(features, features.transpose(1, 2)).dtype == torch.bfloat16  # what autocast would do
        loss_bf16 = within_image_pixel_contrastive_loss(features, labels, [255], 0.07)
        logits_bf16 = distance_logits(maps, centroids, 0.1)
    assert logits_bf16.dtype == torch.float32
    torch.testing.assert_close(loss_bf16, loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits_bf16, logits, rtol=0, atol=1e-6)
