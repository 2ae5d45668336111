"""Colorization proxy task, pure parts (Zhang et al., ECCV 2016 style).

The network sees the lightness channel and predicts, per output pixel, a
distribution over quantised ab bins. Everything here is plain torch:

- :func:`rgb_to_lab` / :func:`lab_to_rgb`: sRGB (D65) <-> CIE Lab, differentiable;
- :func:`ab_bins`: the in-gamut ab bin centres, derived from a dense sRGB grid;
- :func:`soft_encode`: Gaussian soft targets over the k nearest bins;
- :class:`ColorizationLoss`: soft-target cross-entropy (optional class rebalancing);
- :func:`decode_ab`: annealed-mean decoding of predicted bin distributions.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Linear sRGB -> XYZ (D65) and its reference white.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_XYZ_TO_RGB = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0


def _channel_matrix(rows: tuple[tuple[float, ...], ...] | Tensor, x: Tensor) -> Tensor:
    """Apply a 3x3 matrix over the channel dim (-3) of ``x``."""
    m = torch.as_tensor(rows, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def _at_least_float32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _white(x: Tensor) -> Tensor:
    return torch.tensor(_WHITE_D65, dtype=x.dtype, device=x.device).view(3, 1, 1)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] (``...×3×H×W``) -> CIE Lab (D65): L in [0, 100], a/b within about ±110."""
    rgb = _at_least_float32(rgb).clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = _channel_matrix(_RGB_TO_XYZ, linear) / _white(rgb)
    f = torch.where(
        xyz > _DELTA**3, xyz.clamp_min(_DELTA**3) ** (1.0 / 3.0), xyz / (3 * _DELTA**2) + 4.0 / 29.0
    )
    fx, fy, fz = f.unbind(-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: Tensor, clip: bool = True) -> Tensor:
    """CIE Lab (D65, ``...×3×H×W``) -> sRGB; clipped to [0, 1] unless ``clip=False``."""
    lab = _at_least_float32(lab)
    L, a, b = lab.unbind(-3)
    fy = (L + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, fy - b / 200.0), dim=-3)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _white(lab)
    linear = _channel_matrix(_XYZ_TO_RGB, xyz)
    positive = linear.clamp_min(0.0031308)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * positive ** (1.0 / 2.4) - 0.055)
    return rgb.clamp(0.0, 1.0) if clip else rgb


@functools.lru_cache(maxsize=8)
def _ab_bins_cached(grid: float, levels: int) -> Tensor:
    axis = torch.linspace(0.0, 1.0, levels, dtype=torch.float64)
    rgb = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1, 1)
    ab = rgb_to_lab(rgb)[1:].reshape(2, -1).T
    cells = torch.unique(torch.round(ab / grid), dim=0)  # sorted by a, then b
    return (cells * grid).float()


def ab_bins(grid: float = 10.0, levels: int = 64) -> Tensor:
    """In-gamut ab bin centres ``Q×2`` (multiples of ``grid``), derived, not tabulated.

    A dense ``levels``³ grid of sRGB colours is converted to Lab and every
    ``grid``-sized ab cell that some colour falls into is kept (about 300
    cells for ``grid=10``, cf. Zhang et al.'s 313). Cached; returns a copy.
    """
    return _ab_bins_cached(float(grid), int(levels)).clone()


def _pixels_last(x: Tensor) -> Tensor:
    """``B×C×H×W`` -> ``(B·H·W)×C``."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def soft_encode(ab: Tensor, bins: Tensor, k: int = 5, sigma: float = 5.0) -> Tensor:
    """Soft-encode ab values ``B×2×H×W`` over ``bins`` (``Q×2``) -> ``B×Q×H×W``.

    Each pixel puts Gaussian weights ``exp(-d²/2σ²)`` on its ``k`` nearest bin
    centres, normalised to sum to 1 (Zhang et al. 2016: k=5, σ=5).
    """
    B, _, H, W = ab.shape
    bins = bins.to(device=ab.device, dtype=ab.dtype)
    d2 = torch.cdist(_pixels_last(ab), bins).square()
    near_d2, near_idx = d2.topk(min(k, bins.shape[0]), dim=1, largest=False)
    weights = torch.softmax(-near_d2 / (2.0 * sigma**2), dim=1)  # = normalised Gaussian
    target = torch.zeros_like(d2).scatter_(1, near_idx, weights)
    return target.reshape(B, H, W, -1).movedim(-1, 1)


def nearest_bin(ab: Tensor, bins: Tensor) -> Tensor:
    """Index of the nearest bin centre for every pixel of ``ab`` (``B×2×H×W`` -> ``B×H×W``)."""
    B, _, H, W = ab.shape
    bins = bins.to(device=ab.device, dtype=ab.dtype)
    return torch.cdist(_pixels_last(ab), bins).argmin(dim=1).reshape(B, H, W)


def rebalance_weights(
    frequencies: Tensor, bins: Tensor | None = None, lam: float = 0.5, sigma: float = 5.0
) -> Tensor:
    """Class-rebalancing weights from empirical bin frequencies (Zhang et al., Eq. 4).

    ``w ∝ ((1-λ)·p̃ + λ/Q)^-1`` normalised so that ``Σ p̃·w = 1``, where ``p̃``
    is the frequency distribution, Gaussian-smoothed in ab space (σ) when the
    bin centres are given. Count them e.g. with ``torch.bincount(nearest_bin(...))``.
    """
    p = frequencies.double() / frequencies.sum()
    if bins is not None:
        kernel = torch.exp(-torch.cdist(bins.double(), bins.double()).square() / (2.0 * sigma**2))
        p = kernel @ p
        p = p / p.sum()
    w = 1.0 / ((1.0 - lam) * p + lam / p.numel())
    return (w / (p * w).sum()).float()


class ColorizationLoss(nn.Module):
    """Zhang et al. quantised-ab classification with soft encoding.

    Cross-entropy between predicted logits ``B×Q×h×w`` and the soft-encoded
    targets of the ground-truth ab (``B×2×H×W``, area-downsampled to ``h×w``).
    No class rebalancing by default; pass ``rebalance`` (``Q`` per-bin weights,
    see :func:`rebalance_weights`, λ=0.5 there) to weight each pixel by the
    weight of its nearest bin.
    """

    def __init__(
        self,
        bins: Tensor | None = None,
        k: int = 5,
        sigma: float = 5.0,
        rebalance: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.k, self.sigma = k, sigma
        self.register_buffer("bins", ab_bins() if bins is None else bins.float().clone())
        if rebalance is not None and rebalance.numel() != self.bins.shape[0]:
            raise ValueError(f"rebalance has {rebalance.numel()} weights for {self.bins.shape[0]} bins")
        self.register_buffer("rebalance", None if rebalance is None else rebalance.float().clone())

    @property
    def num_bins(self) -> int:
        return self.bins.shape[0]

    def forward(self, logits: Tensor, ab: Tensor) -> Tensor:
        """Mean per-pixel soft cross-entropy (a scalar)."""
        if logits.shape[1] != self.num_bins:
            raise ValueError(f"logits have {logits.shape[1]} channels, expected {self.num_bins} bins")
        ab = F.interpolate(ab.float(), size=logits.shape[-2:], mode="area")
        target = soft_encode(ab, self.bins, self.k, self.sigma)
        per_pixel = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
        if self.rebalance is not None:
            per_pixel = per_pixel * self.rebalance[target.argmax(dim=1)]
        return per_pixel.mean()


def decode_ab(logits: Tensor, bins: Tensor, temperature: float = 0.38) -> Tensor:
    """Annealed-mean ab (``B×2×h×w``) of the bin distribution ``softmax(logits / T)``."""
    probs = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", probs, bins.to(probs))
