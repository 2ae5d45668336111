"""Pixel clustering for fully self-supervised segmentation: PiCIE-style parts and FS^4-style additions.

Plain torch (and scikit-learn for k-means); the ``cluster`` stage composes them.

- :class:`PyramidFusion`: torchvision's FPN on the backbone's multi-scale maps, every level
  resized to the finest one (stride 4 for ResNets and AlexNet) and summed.
- :func:`fit_spherical_kmeans`: scikit-learn ``MiniBatchKMeans`` on L2-normalised samples,
  unit-length centroids; deterministic by ``seed``.
- :func:`distance_logits`: PiCIE's logits, minus the squared distance of the unit-length pixel
  feature to each unit-length centroid (over a temperature).
- :func:`cell_features`: the pyramid levels of our FS^4-style pseudo labels — the mean feature of
  each cell of a ``g×g`` grid of the image (``g = 1`` is the whole image), unit length.
- :func:`context_aware_embedding`: our FS^4-style context-aware embedding — each pixel's feature
  averaged over its ``k×k`` neighbourhood with weights ``spatial Gaussian × max(cos, 0)``.
- :func:`crop_boxes` / :func:`crop_resize`: the geometric view (random crop + flip) applied alike to
  images and feature maps, so the two views' features align pixel by pixel.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork, roi_align


class PyramidFusion(nn.Module):
    """FPN on chosen backbone maps, all levels resized to the first (finest) chosen map and summed.

    Args:
        in_channels: channels of the chosen maps (finest first).
        channels: FPN width and the embedding size.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 128) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        """``B×channels×H×W`` at the resolution of ``maps[0]``."""
        levels = list(self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps))).values())
        size = levels[0].shape[-2:]
        return sum(level if level.shape[-2:] == size else F.interpolate(level, size=size, mode="bilinear")
                   for level in levels)  # fmt: skip


def flatten_pixels(features: Tensor) -> Tensor:
    """``B×D×H×W`` -> ``(B·H·W)×D``."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def sample_pixels(features: Tensor, per_image: int, generator: torch.Generator) -> Tensor:
    """``per_image`` random pixel features of each image (all of them if fewer), ``N×D``."""
    b, d, h, w = features.shape
    flat = features.flatten(2)
    if per_image >= h * w:
        return flatten_pixels(features)
    idx = torch.stack([torch.randperm(h * w, generator=generator)[:per_image] for _ in range(b)]).to(flat.device)
    return flat.gather(2, idx[:, None].expand(b, d, per_image)).transpose(1, 2).reshape(-1, d)


def fit_spherical_kmeans(samples: Tensor, num_clusters: int, seed: int, batch_size: int = 4096) -> Tensor:
    """Unit-length centroids ``K×D`` of L2-normalised ``samples`` by scikit-learn's ``MiniBatchKMeans``.

    The same samples and ``seed`` give the same centroids. With fewer samples than clusters the
    samples are repeated (some centroids then coincide).
    """
    x = F.normalize(samples.detach().float(), dim=1).cpu().numpy().astype(np.float64)
    if len(x) < num_clusters:
        x = np.concatenate([x] * (num_clusters // max(len(x), 1) + 1))
    km = MiniBatchKMeans(num_clusters, random_state=seed, batch_size=batch_size, n_init=3, max_iter=100)
    km.fit(x)
    return F.normalize(torch.from_numpy(km.cluster_centers_).float(), dim=1)


def distance_logits(features: Tensor, centroids: Tensor, temperature: float = 1.0) -> Tensor:
    """``-‖f̂ - ĉ‖² / T`` for unit-length features and centroids: ``B×K×H×W`` from ``B×D×H×W`` (or ``N×K``).

    Computed in fp32 under autocast too (a bf16 product would be off by ~1e-2 before the division by ``T``).
    """
    with torch.autocast(features.device.type, enabled=False):
        f = F.normalize(features.float(), dim=1)
        c = F.normalize(centroids.float(), dim=1).to(f.device)
        if f.ndim == 2:
            return -(2.0 - 2.0 * f @ c.T) / temperature
        return -(2.0 - 2.0 * torch.einsum("bdhw,kd->bkhw", f, c)) / temperature


def assign(features: Tensor, centroids: Tensor) -> Tensor:
    """Nearest centroid of each pixel (cosine), ``B×H×W`` long (or ``N`` for ``N×D`` input)."""
    return distance_logits(features.detach(), centroids).argmax(1)


def cell_features(features: Tensor, grid: int) -> Tensor:
    """Mean feature of each cell of a ``grid×grid`` split of the map, unit length, ``B×D×grid×grid``."""
    return F.normalize(F.adaptive_avg_pool2d(F.normalize(features, dim=1), grid), dim=1)


def broadcast_cells(cells: Tensor, size: tuple[int, int]) -> Tensor:
    """Cell labels ``B×g×g`` to the pixels of a ``size`` map (nearest), ``B×H×W``."""
    return F.interpolate(cells[:, None].float(), size=size, mode="nearest")[:, 0].long()


def context_aware_embedding(features: Tensor, kernel_size: int = 3, sigma: float = 1.0) -> Tensor:
    """Each pixel's feature averaged over its ``k×k`` neighbourhood, weighted by similarity in space and appearance.

    The weight of neighbour ``q`` of pixel ``p`` is ``exp(-‖p - q‖² / 2σ²) · max(cos(f_p, f_q), 0)``
    (the pixel itself weighs 1; zero padding at the border adds nothing), normalised to sum to 1.
    Computed offset by offset on shifted views of the map (as ``unfold`` would, without its k²-fold copy).
    A pixel whose neighbours are all dissimilar (cosine ≤ 0) keeps its own feature.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"context kernel_size must be odd and positive, got {kernel_size}")
    h, w = features.shape[-2:]
    pad = kernel_size // 2
    unit = F.normalize(features, dim=1)
    padded, padded_unit = F.pad(features, (pad,) * 4), F.pad(unit, (pad,) * 4)
    total, norm = torch.zeros_like(features), features.new_zeros(features.shape[0], 1, h, w)
    for dy in range(kernel_size):  # one shifted copy of the map per offset: no k²-times larger tensor
        for dx in range(kernel_size):
            spatial = math.exp(-((dy - pad) ** 2 + (dx - pad) ** 2) / (2 * sigma**2))
            cosine = (unit * padded_unit[:, :, dy : dy + h, dx : dx + w]).sum(1, keepdim=True).clamp_min(0)
            weight = spatial * cosine
            total = total + weight * padded[:, :, dy : dy + h, dx : dx + w]
            norm = norm + weight
    return total / norm.clamp_min(1e-8)


def crop_boxes(batch: int, generator: torch.Generator, min_scale: float = 0.5) -> tuple[Tensor, Tensor]:
    """Random crop boxes (``x0, y0, x1, y1`` as fractions of the image, area ≥ ``min_scale²``) and flips."""
    u = torch.rand(batch, 5, generator=generator)
    side = min_scale + (1 - min_scale) * u[:, :2]  # width, height fractions
    x0, y0 = (1 - side[:, 0]) * u[:, 2], (1 - side[:, 1]) * u[:, 3]
    boxes = torch.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], 1)
    return boxes, u[:, 4] < 0.5


def crop_resize(x: Tensor, boxes: Tensor, flips: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Cut each map's box (fractions) and resize it to ``size`` (default: the map's own), flipping where asked."""
    h, w = x.shape[-2:]
    size = size or (h, w)
    scale = torch.tensor([w, h, w, h], dtype=x.dtype, device=x.device)
    rois = torch.cat([torch.arange(len(x), dtype=x.dtype, device=x.device)[:, None], boxes.to(x) * scale], 1)
    out = roi_align(x, rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return torch.where(flips.to(x.device)[:, None, None, None], out.flip(-1), out)
