import itertools

import pytest
import torch

from mnm.methods.jigsaw import (
    JigsawHead,
    jigsaw_tiles,
    load_permutations,
    maximal_hamming_permutations,
    save_permutations,
    unshuffle,
)


def _min_pairwise_hamming(perms: torch.Tensor) -> int:
    dist = (perms[:, None] != perms[None]).sum(-1)
    dist.fill_diagonal_(perms.shape[1] + 1)
    return int(dist.min())


@pytest.fixture(scope="module")
def perms() -> torch.Tensor:
    return maximal_hamming_permutations(30, seed=0)


def test_permutations_valid_unique_deterministic(perms):
    assert perms.shape == (30, 9) and perms.dtype == torch.long
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(30, 9))
    assert torch.unique(perms, dim=0).shape[0] == 30
    assert torch.equal(perms, maximal_hamming_permutations(30, seed=0))
    assert not torch.equal(perms, maximal_hamming_permutations(30, seed=1))


def test_permutations_spread_beats_random_sets(perms):
    g = torch.Generator().manual_seed(0)
    random_best = max(
        _min_pairwise_hamming(torch.stack([torch.randperm(9, generator=g) for _ in range(30)]))
        for _ in range(5)
    )
    assert _min_pairwise_hamming(perms) >= max(random_best, 6)


def test_permutations_small_grid_exhaustive():
    perms = maximal_hamming_permutations(6, grid=3, seed=0)  # all 3! permutations
    assert {tuple(p) for p in perms.tolist()} == set(itertools.permutations(range(3)))
    with pytest.raises(ValueError):
        maximal_hamming_permutations(7, grid=3)


def test_save_load_round_trip(tmp_path, perms):
    path = tmp_path / "permutations.txt"
    save_permutations(path, perms)
    assert torch.equal(load_permutations(path), perms)
    path.write_text("0 1 1\n")
    with pytest.raises(ValueError):
        load_permutations(path)


def test_tiles_shape_and_normalisation(perms):
    images = torch.rand(3, 3, 200, 180, generator=torch.Generator().manual_seed(0))
    tiles = jigsaw_tiles(images, perms, torch.tensor([0, 4, 29]), tile=24, generator=torch.Generator())
    assert tiles.shape == (3, 9, 3, 24, 24)
    torch.testing.assert_close(tiles.mean((-2, -1)), torch.zeros(3, 9, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tiles.std((-2, -1)), torch.ones(3, 9, 3), atol=1e-3, rtol=0)


def test_tiles_upscale_small_images_and_are_reproducible(perms):
    images = torch.rand(2, 1, 40, 50)
    a = jigsaw_tiles(images, perms, 3, tile=16, gap=4, generator=torch.Generator().manual_seed(5))
    b = jigsaw_tiles(images, perms, 3, tile=16, gap=4, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 9, 1, 16, 16) and torch.equal(a, b)


def _cell_image(cell: int) -> torch.Tensor:
    """2×2×(3·cell)² image, constant per 3×3 cell: channel 0 holds the cell id, channel 1 the batch id."""
    ids = torch.arange(9, dtype=torch.float32).view(3, 3)
    ids = ids.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([torch.stack([ids, torch.full_like(ids, b)]) for b in range(2)])


def test_unshuffle_recovers_grid_order(perms):
    tile, gap = 10, 3
    images = _cell_image(tile + gap)
    index = torch.tensor([7, 21])
    tiles = jigsaw_tiles(
        images, perms, index, tile=tile, gap=gap, generator=torch.Generator(), normalize=False
    )
    cell_ids = tiles[:, :, 0]
    assert (cell_ids == cell_ids[..., :1, :1]).all()  # every tile stays inside its cell
    assert torch.equal(cell_ids[:, :, 0, 0].long(), perms[index])
    assert torch.equal(unshuffle(tiles, perms, index)[:, :, 0, 0, 0].long(), torch.arange(9).expand(2, 9))
    assert torch.equal(tiles[:, :, 1, 0, 0], torch.tensor([[0.0] * 9, [1.0] * 9]))


def test_jigsaw_head_logits_and_gradients():
    head = JigsawHead(in_dim=32, num_permutations=30, embed_dim=16, hidden_dim=64)
    feats = torch.randn(4 * 9, 32, requires_grad=True)
    logits = head(feats)
    assert logits.shape == (4, 30)
    assert head(feats.view(4, 9, 32)).shape == (4, 30)
    logits.logsumexp(1).sum().backward()
    assert feats.grad.abs().sum() > 0
