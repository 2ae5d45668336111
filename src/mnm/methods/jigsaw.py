"""Jigsaw-puzzle proxy task, pure parts (Noroozi & Favaro, ECCV 2016).

- :func:`maximal_hamming_permutations`: a permutation set with a large minimum
  pairwise Hamming distance, chosen greedily and deterministically by seed;
- :func:`save_permutations` / :func:`load_permutations`: store the set with a run;
- :func:`jigsaw_tiles`: cut, jitter, shuffle and normalise 3×3 puzzle tiles;
- :class:`JigsawHead`: shared per-tile embedding -> concat -> permutation logits.

Convention: for permutation ``p``, position ``i`` of the shuffled puzzle holds
the tile of grid cell ``p[i]``; ``shuffled[:, argsort(p)]`` restores grid order.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@functools.lru_cache(maxsize=2)
def _all_permutations(size: int) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(size))), dtype=np.uint8)
    perms.flags.writeable = False
    return perms


def maximal_hamming_permutations(n: int = 100, grid: int = 9, seed: int = 0) -> Tensor:
    """Greedy maximal-Hamming permutation set, ``LongTensor[n, grid]``.

    Starting from a random permutation, repeatedly add the permutation (out of
    all ``grid!``) whose minimum Hamming distance to the already chosen ones is
    largest; ties are broken by ``numpy.random.default_rng(seed)``. A running
    minimum-distance array keeps each step one vectorised pass.
    """
    if not 2 <= grid <= 10:
        raise ValueError(f"grid must be in [2, 10] (enumerates grid! permutations), got {grid}")
    perms = _all_permutations(grid)
    if not 1 <= n <= len(perms):
        raise ValueError(f"n must be in [1, {len(perms)}], got {n}")
    columns = np.ascontiguousarray(perms.T)  # grid×grid!: contiguous per-position compares
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(perms)))]
    min_dist = np.full(len(perms), grid, dtype=np.int8)
    dist = np.empty_like(min_dist)
    for _ in range(n - 1):
        last = perms[chosen[-1]]
        dist[:] = 0
        for position in range(grid):
            dist += columns[position] != last[position]
        np.minimum(min_dist, dist, out=min_dist)
        candidates = np.flatnonzero(min_dist == min_dist.max())
        chosen.append(int(rng.choice(candidates)))
    return torch.from_numpy(perms[chosen].astype(np.int64))


def save_permutations(path: str | Path, permutations: Tensor) -> None:
    """Write a permutation set as text, one permutation per line."""
    np.savetxt(path, np.asarray(permutations, dtype=np.int64), fmt="%d")


def load_permutations(path: str | Path) -> Tensor:
    """Read a permutation set written by :func:`save_permutations` (validated)."""
    perms = torch.from_numpy(np.loadtxt(path, dtype=np.int64, ndmin=2))
    expected = torch.arange(perms.shape[1]).expand_as(perms)
    if not torch.equal(perms.sort(dim=1).values, expected):
        raise ValueError(f"{path}: every row must be a permutation of 0..{perms.shape[1] - 1}")
    return perms


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.randint(0, high, size, generator=generator)


def jigsaw_tiles(
    images: Tensor,
    permutations: Tensor,
    perm_index: Tensor | int,
    grid: int = 3,
    tile: int = 64,
    gap: int | None = None,
    generator: torch.Generator | None = None,
    normalize: bool = True,
) -> Tensor:
    """Cut shuffled puzzle tiles from a batch: ``B×C×H×W`` -> ``B×grid²×C×tile×tile``.

    A random square crop of side ``grid·(tile+gap)`` is split into ``grid×grid``
    cells; inside each cell a ``tile×tile`` piece is taken at a random offset in
    ``[0, gap]`` (so neighbouring tiles never share edges), the pieces are
    ordered by ``permutations[perm_index[b]]`` and, if ``normalize``, each tile
    and channel is set to zero mean, unit std. ``gap`` defaults to ``tile/6``
    rounded (11 for 64, i.e. Noroozi & Favaro's 225-px crop of 75-px cells).
    Images smaller than the crop are bilinearly upscaled first. Random draws
    use ``generator`` (CPU) so results are reproducible.
    """
    gap = max(1, round(tile / 6)) if gap is None else gap
    cell = tile + gap
    side = grid * cell
    B, _, H, W = images.shape
    if min(H, W) < side:
        scale = side / min(H, W)
        size = (max(side, math.ceil(H * scale)), max(side, math.ceil(W * scale)))
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        H, W = size
    n = grid * grid
    if permutations.shape[1] != n:
        raise ValueError(f"permutations have {permutations.shape[1]} entries, expected grid²={n}")

    crop_y = _randint(H - side + 1, (B, 1), generator)
    crop_x = _randint(W - side + 1, (B, 1), generator)
    cells = torch.arange(n)
    top = crop_y + (cells // grid) * cell + _randint(gap + 1, (B, n), generator)  # B×n
    left = crop_x + (cells % grid) * cell + _randint(gap + 1, (B, n), generator)
    offsets = torch.arange(tile)
    rows = (top[..., None] + offsets).to(images.device)  # B×n×t
    cols = (left[..., None] + offsets).to(images.device)
    batch = torch.arange(B, device=images.device).view(B, 1, 1, 1)
    # advanced indices around a slice: result is B×n×t×t×C
    tiles = images[batch, :, rows[..., :, None], cols[..., None, :]].permute(0, 1, 4, 2, 3)

    index = torch.as_tensor(perm_index, dtype=torch.long).expand(B).to(images.device)
    order = permutations.to(images.device)[index]  # B×n
    tiles = tiles[torch.arange(B, device=images.device)[:, None], order]
    if normalize:
        mean = tiles.mean(dim=(-2, -1), keepdim=True)
        std = tiles.std(dim=(-2, -1), keepdim=True)
        tiles = (tiles - mean) / (std + 1e-5)
    return tiles.contiguous()


class JigsawHead(nn.Module):
    """Permutation classifier on per-tile features (Noroozi & Favaro's CFN top).

    ``forward`` takes ``B×T×D`` (or ``(B·T)×D``) per-tile features, embeds each
    tile with a shared ``Linear(D, embed_dim)+ReLU`` trunk, concatenates the T
    embeddings and maps them through ``fc -> ReLU -> dropout -> fc`` to
    ``num_permutations`` logits.
    """

    def __init__(
        self,
        in_dim: int,
        num_permutations: int = 100,
        num_tiles: int = 9,
        embed_dim: int = 512,
        hidden_dim: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_tiles = num_tiles
        self.trunk = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(
            nn.Linear(num_tiles * embed_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_permutations),
        )

    def forward(self, tile_features: Tensor) -> Tensor:
        x = tile_features.reshape(-1, self.num_tiles, tile_features.shape[-1])
        return self.classifier(self.trunk(x).flatten(1))


def unshuffle(tiles: Tensor, permutations: Tensor, perm_index: Tensor) -> Tensor:
    """Put shuffled tiles ``B×T×...`` back into grid order (inverse of the shuffle)."""
    inverse = permutations.to(tiles.device)[perm_index.to(tiles.device)].argsort(dim=1)
    return tiles[torch.arange(tiles.shape[0], device=tiles.device)[:, None], inverse]
