"""Segmentation heads on the Backbone feature contract.

A head is built from ``in_channels`` / ``in_strides`` (one entry per map of
``Backbone.features``) and called as ``head(features, out_size)``, returning
``B×num_classes×H×W`` logits at ``out_size``. Only the contract is used, so
any head sits on any backbone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnm.models.backbones import init_weights


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling; area (average) pooling where the map is larger."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _check(features: Sequence[Tensor], in_channels: Sequence[int]) -> None:
    got = [f.shape[1] for f in features]
    if got != list(in_channels):
        raise ValueError(f"feature channels {got} do not match the head's in_channels {list(in_channels)}")


def _conv_bn_relu(
    cin: int, cout: int, kernel: int = 1, dropout: float = 0.0, bn_affine: bool = True, channel_dropout: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout, affine=bn_affine),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout) if channel_dropout else nn.Dropout(dropout))
    return nn.Sequential(*layers)


class HypercolumnHead(nn.Module):
    """Hypercolumn head (Hariharan et al. 2015; Larsson et al. 2016/2017).

    Every map gets a 1×1 projection (+BN) to ``width`` channels, all are
    resized to a common grid (the finest input stride, or ``fuse_stride`` to
    save memory: finer maps are then area-pooled), fused by ``sum`` or
    ``concat``, passed through an MLP of 1×1 convs (BN, ReLU, dropout) and a
    1×1 classifier; logits are bilinearly upsampled to ``out_size``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        width: int = 256,
        fuse: str = "sum",
        hidden: Sequence[int] = (512,),
        dropout: float = 0.1,
        fuse_stride: int | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError("in_channels and in_strides must be non-empty and of equal length")
        if fuse not in ("sum", "concat"):
            raise ValueError(f"fuse must be 'sum' or 'concat', got {fuse!r}")
        self.in_channels, self.in_strides = list(in_channels), list(in_strides)
        self.fuse = fuse
        self.fuse_stride = fuse_stride or min(in_strides)
        self.used_indices = list(range(len(in_channels)))
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)) for c in in_channels
        )
        dims = [width * (len(in_channels) if fuse == "concat" else 1), *hidden]
        self.mlp = nn.Sequential(*(_conv_bn_relu(a, b, dropout=dropout) for a, b in pairwise(dims)))
        self.classifier = nn.Conv2d(dims[-1], num_classes, 1)

    def forward(self, features: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        _check(features, self.in_channels)
        grid = (math.ceil(out_size[0] / self.fuse_stride), math.ceil(out_size[1] / self.fuse_stride))
        # project before resizing: cheaper, and (up to BN batch statistics) the two commute
        maps = [_resize(proj(f), grid) for proj, f in zip(self.proj, features, strict=True)]
        fused = sum(maps[1:], maps[0]) if self.fuse == "sum" else torch.cat(maps, dim=1)
        return _resize(self.classifier(self.mlp(fused)), out_size)


def _fcn_skips(in_strides: Sequence[int], num_skips: int) -> list[int]:
    """Deep-to-shallow indices of the last map at each stride finer than the deepest one."""
    picked: list[int] = []
    stride = in_strides[-1]
    for i in range(len(in_strides) - 2, -1, -1):
        if len(picked) == num_skips:
            break
        if in_strides[i] < stride:
            picked.append(i)
            stride = in_strides[i]
    return picked


class FCNHead(nn.Module):
    """FCN-style head (Long et al. 2015, "FCN-8s" spirit; Noroozi & Favaro's AlexNet set-up).

    The deepest map goes through ``hidden`` conv layers (``fc6_kernel``×``fc6_kernel`` then 1×1,
    BN, ReLU, dropout: the fc6/fc7 role) and a 1×1 classifier; its scores are
    upsampled (bilinear) and summed with 1×1 scores of ``num_skips`` shallower
    maps (by default the last map at each successively finer stride, e.g.
    strides 16 and 8 under a stride-32 map), then upsampled to ``out_size``. The Caffe release's
    AlexNet head is ``num_skips=0, hidden=(4096, 4096), fc6_kernel=6`` (fc6 as a 6×6 convolution with
    padding 3, its fully connected layer made convolutional; VGG's fc6 would be 7×7), ``bn_affine=False``
    (Caffe's statistics-only BatchNorm after fc6/fc7) and ``channel_dropout=False`` (Caffe's element-wise
    dropout instead of whole channels).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        num_skips: int = 2,
        skip_indices: Sequence[int] | None = None,
        hidden: Sequence[int] = (512, 512),
        dropout: float = 0.5,
        fc6_kernel: int = 3,
        bn_affine: bool = True,
        channel_dropout: bool = True,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError("in_channels and in_strides must be non-empty and of equal length")
        if fc6_kernel < 1:
            raise ValueError(f"fc6_kernel must be a positive int, got {fc6_kernel}")
        self.in_channels, self.in_strides = list(in_channels), list(in_strides)
        deepest = len(in_channels) - 1
        skips = _fcn_skips(in_strides, num_skips) if skip_indices is None else list(skip_indices)
        if any(not 0 <= i < deepest for i in skips):
            raise ValueError(f"skip indices must lie in [0, {deepest}), got {skips}")
        self.skip_indices = sorted(skips, key=lambda i: (in_strides[i], i), reverse=True)  # coarse first
        self.used_indices = sorted({*self.skip_indices, deepest})
        dims = [in_channels[-1], *hidden]
        self.top = nn.Sequential(
            *(
                _conv_bn_relu(a, b, fc6_kernel if j == 0 else 1, dropout, bn_affine, channel_dropout)
                for j, (a, b) in enumerate(pairwise(dims))
            )
        )
        self.score = nn.Conv2d(dims[-1], num_classes, 1)
        self.skip_scores = nn.ModuleList(nn.Conv2d(in_channels[i], num_classes, 1) for i in self.skip_indices)

    def forward(self, features: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        _check(features, self.in_channels)
        scores = self.score(self.top(features[-1]))
        for i, skip_score in zip(self.skip_indices, self.skip_scores, strict=True):
            skip = skip_score(features[i])
            scores = _resize(scores, tuple(skip.shape[-2:])) + skip
        return _resize(scores, out_size)


def sample_columns(maps: Sequence[Tensor], strides: Sequence[int], points: Tensor) -> Tensor:
    """``B×D×P`` hypercolumns: each map read bilinearly at ``points`` (``B×P×2`` (y, x) in input pixels).

    A point ``p`` lies at ``p / stride`` in a map of that stride, clamped into the map (Larsson et
    al.'s sparse hypercolumn extractor with zero offsets); ``D`` is the sum of the maps' channels.
    """
    columns = []
    for m, stride in zip(maps, strides, strict=True):
        h, w = m.shape[-2:]
        ly = (points[..., 0] / stride).clamp(0, h - 1) * (2 / max(h - 1, 1)) - 1
        lx = (points[..., 1] / stride).clamp(0, w - 1) * (2 / max(w - 1, 1)) - 1
        grid = torch.stack([lx, ly], dim=-1).unsqueeze(1).to(m.dtype)  # B×1×P×2, (x, y) in [-1, 1]
        columns.append(F.grid_sample(m, grid, mode="bilinear", align_corners=True).squeeze(2))
    return torch.cat(columns, dim=1)


class SparseHypercolumnHead(nn.Module):
    """The release's VGG-16 head: Larsson et al.'s sparse hypercolumns on top of fc6/fc7 and two extra blocks.

    The deepest map (pool5) goes through fc6 (``fc6_kernel``×``fc6_kernel`` conv to ``fc_channels``,
    ReLU, dropout), fc7 (1×1, ReLU, dropout) and ``extra_blocks`` blocks of a 3×3 conv to
    ``extra_channels``, ReLU and 2×2 max-pooling. A point's column joins every other input map (for
    the release: the image and the 13 convs, ``feature_taps="hypercolumn"``), fc6, fc7 and the extra
    blocks, read bilinearly at the point (:func:`sample_columns`); a ``hidden``-unit layer (ReLU)
    and a linear classifier score it. In training, :meth:`training_points` draws ``num_points`` points
    per image, uniform at least ``point_margin`` pixels inside the crop (release: 256 in [96, 416] of
    512); otherwise the head scores a grid every ``dense_stride`` pixels (release: 2), ``chunk``
    points at a time, and upsamples the scores bilinearly to ``out_size``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        fc_channels: int = 4096,
        fc6_kernel: int = 7,
        extra_channels: int = 1024,
        extra_blocks: int = 2,
        hidden: int = 1024,
        dropout: float = 0.5,
        num_points: int = 256,
        point_margin: int = 96,
        dense_stride: int = 2,
        chunk: int = 16384,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides) or len(in_channels) < 2:
            raise ValueError("in_channels and in_strides must be of equal length, at least 2")
        for key, value in (("fc6_kernel", fc6_kernel), ("num_points", num_points), ("dense_stride", dense_stride),
                           ("chunk", chunk)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{key} must be a positive int, got {value}")
        self.in_channels, self.in_strides = list(in_channels), list(in_strides)
        self.used_indices = list(range(len(in_channels)))
        self.num_points, self.point_margin = num_points, point_margin
        self.dense_stride, self.chunk = dense_stride, chunk
        top = in_strides[-1]
        self.fc6 = nn.Sequential(
            nn.Conv2d(in_channels[-1], fc_channels, fc6_kernel, padding=fc6_kernel // 2), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )  # fmt: skip
        self.fc7 = nn.Sequential(nn.Conv2d(fc_channels, fc_channels, 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        widths = [fc_channels] + [extra_channels] * extra_blocks
        self.extra = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2, ceil_mode=True))
            for a, b in pairwise(widths)
        )  # Caffe pools in ceil mode: a 1×1 map stays 1×1
        self.column_strides = [*in_strides[:-1], top, top, *(top * 2**i for i in range(1, extra_blocks + 1))]
        width = sum(in_channels[:-1]) + 2 * fc_channels + extra_blocks * extra_channels
        self.score = nn.Sequential(nn.Conv1d(width, hidden, 1), nn.ReLU(inplace=True), nn.Conv1d(hidden, num_classes, 1))
        # the release's fillers: Xavier convs, ip_column Gaussian std 1e-4, score_column Caffe's default 0
        init_weights(nn.ModuleList([self.fc6, self.fc7, self.extra]), "xavier")
        nn.init.normal_(self.score[0].weight, std=1e-4)
        for p in (self.score[0].bias, self.score[2].weight, self.score[2].bias):
            nn.init.zeros_(p)

    def column_maps(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The maps a column reads: the inputs but pool5, then fc6, fc7 and each extra block."""
        _check(features, self.in_channels)
        fc6 = self.fc6(features[-1])
        maps = [*features[:-1], fc6, self.fc7(fc6)]
        for block in self.extra:
            maps.append(block(maps[-1]))
        return maps

    def training_points(self, batch: int, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
        """``batch×num_points×2`` integer (y, x) points, uniform at least ``point_margin`` inside ``size``."""
        coords = []
        for n in size:
            low, high = (self.point_margin, n - self.point_margin) if n > 2 * self.point_margin else (0, n - 1)
            coords.append(torch.randint(low, high + 1, (batch, self.num_points), generator=generator))
        return torch.stack(coords, dim=-1).float()

    def score_points(self, maps: Sequence[Tensor], points: Tensor) -> Tensor:
        """``B×num_classes×P`` logits of the columns at ``points`` (``B×P×2``)."""
        return self.score(sample_columns(maps, self.column_strides, points.to(maps[0].device)))

    def forward(self, features: Sequence[Tensor], out_size: tuple[int, int], points: Tensor | None = None) -> Tensor:
        """Logits at ``points`` (``B×C×P``) if given, else dense ``B×C×out_size`` logits from the grid."""
        maps = self.column_maps(features)
        if points is not None:
            return self.score_points(maps, points)
        ys = torch.arange(0, out_size[0], self.dense_stride, dtype=torch.float32)
        xs = torch.arange(0, out_size[1], self.dense_stride, dtype=torch.float32)
        grid = torch.cartesian_prod(ys, xs).expand(len(features[-1]), -1, -1)
        logits = torch.cat([self.score_points(maps, part) for part in grid.split(self.chunk, dim=1)], dim=2)
        return _resize(logits.unflatten(2, (len(ys), len(xs))), out_size)


class ProjectionHead(nn.Module):
    """Pixel-wise projection head of Zhao et al.'s contrastive pre-training (dropped after it).

    The chosen maps are resized bilinearly (corners aligned, as in the authors' code) to a common
    grid and concatenated; ``num_layers`` 1×1 convolutions of ``channels`` follow, the hidden ones
    with batch norm + ReLU, the last linear; the output is L2-normalised per pixel. It maps feature
    maps to embeddings, not to class logits, so it is not in :data:`HEADS`.
    """

    def __init__(self, in_channels: int, num_layers: int = 2, channels: int = 256) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        dims = [in_channels] + [channels] * (num_layers - 1)
        self.hidden = nn.Sequential(*(_conv_bn_relu(a, b) for a, b in pairwise(dims)))
        self.out = nn.Conv2d(dims[-1], channels, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """``B×channels×size`` unit-length pixel embeddings of the concatenated, resized maps."""
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in features], dim=1)
        return F.normalize(self.out(self.hidden(x)), dim=1)


HEADS: dict[str, Callable[..., nn.Module]] = {
    "hypercolumn": HypercolumnHead,
    "fcn": FCNHead,
    "sparse_hypercolumn": SparseHypercolumnHead,
}


def build_head(
    kind: str, in_channels: Sequence[int], in_strides: Sequence[int], num_classes: int, **kw: object
) -> nn.Module:
    """Build a registered head; unknown ``kind`` raises ``KeyError`` listing the known ones."""
    if kind not in HEADS:
        raise KeyError(f"unknown head {kind!r}; known heads: {sorted(HEADS)}")
    return HEADS[kind](in_channels, in_strides, num_classes, **kw)
