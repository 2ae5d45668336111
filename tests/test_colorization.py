import pytest
import torch

from mnm.methods.colorization import (
    ColorizationLoss,
    ab_bins,
    decode_ab,
    lab_to_rgb,
    nearest_bin,
    rebalance_weights,
    rgb_to_lab,
    soft_encode,
)


def _pixels(*colours: tuple[float, float, float]) -> torch.Tensor:
    """Colours as a 1×3×1×N image."""
    return torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def test_rgb_lab_round_trip():
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-3


def test_known_lab_values():
    lab = rgb_to_lab(_pixels((1, 1, 1), (0, 0, 0), (1, 0, 0)))[0, :, 0].T
    expected = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20]])
    torch.testing.assert_close(lab, expected, atol=0.02, rtol=0)


def test_ab_bins_in_gamut_grid():
    bins = ab_bins(10)
    assert abs(bins.shape[0] - 300) <= 40  # Zhang et al. report 313 for their gamut
    assert bins.shape[1] == 2
    assert (bins == 0).all(dim=1).any()
    assert torch.equal(bins, torch.round(bins / 10) * 10)
    assert torch.unique(bins, dim=0).shape[0] == bins.shape[0]
    bins.zero_()  # callers get a copy of the cached table
    assert ab_bins(10).abs().sum() > 0


def test_every_srgb_colour_lands_in_a_bin():
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ab = rgb_to_lab(rgb)[:, 1:]
    bins = ab_bins(10)
    dist = (ab.flatten(2).transpose(1, 2)[0][:, None] - bins).abs().amax(-1).min(1).values
    assert dist.max() <= 5.0 + 1e-4  # every colour lies inside some kept cell


def test_soft_encode_sums_to_one_and_peaks_at_nearest():
    bins = ab_bins(10)
    ab = torch.randn(2, 2, 5, 7, generator=torch.Generator().manual_seed(2)) * 40
    target = soft_encode(ab, bins, k=5, sigma=5.0)
    assert target.shape == (2, bins.shape[0], 5, 7)
    torch.testing.assert_close(target.sum(1), torch.ones(2, 5, 7))
    assert ((target > 0).sum(1) == 5).all()
    assert torch.equal(target.argmax(1), nearest_bin(ab, bins))


def test_loss_decreases_when_logits_favour_true_bin():
    bins = ab_bins(10)
    loss_fn = ColorizationLoss(bins)
    ab = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(3)) * 30
    true_bin = nearest_bin(torch.nn.functional.interpolate(ab, size=(4, 4), mode="area"), bins)
    favour = torch.nn.functional.one_hot(true_bin, bins.shape[0]).permute(0, 3, 1, 2).float()
    losses = [loss_fn(favour * s, ab).item() for s in (0.0, 2.0, 5.0)]
    assert losses[0] > losses[1] > losses[2]
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(bins.shape[0]))).item(), rel=1e-4)


def test_loss_rebalance_and_gradients():
    bins = ab_bins(10)
    ab = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(4)) * 30
    counts = torch.bincount(nearest_bin(ab, bins).flatten(), minlength=bins.shape[0]).float()
    weights = rebalance_weights(counts, bins, lam=0.5)
    assert weights.shape == (bins.shape[0],) and (weights > 0).all()
    p = counts / counts.sum()
    assert weights[p.argmax()] < weights[p.argmin()]  # rare colours weigh more
    logits = torch.randn(2, bins.shape[0], 4, 4, requires_grad=True)
    loss = ColorizationLoss(bins, rebalance=weights)(logits, ab)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        ColorizationLoss(bins, rebalance=weights[:-1])


def test_decode_ab_annealed_mean():
    bins = ab_bins(10)
    idx = torch.tensor([[[0, 5], [17, bins.shape[0] - 1]]])
    logits = torch.nn.functional.one_hot(idx, bins.shape[0]).permute(0, 3, 1, 2).float() * 20
    ab = decode_ab(logits, bins)
    assert ab.shape == (1, 2, 2, 2)
    torch.testing.assert_close(ab, bins[idx].permute(0, 3, 1, 2), atol=1e-3, rtol=0)
    flat = decode_ab(torch.zeros(1, bins.shape[0], 1, 1), bins)
    torch.testing.assert_close(flat[0, :, 0, 0], bins.mean(0))
