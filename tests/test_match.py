"""Tests for mnm.methods.match: the class-wise connected graph, its baselines and the cross-image and semi-hard samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mnm.methods.match import (
    TRIPLET_SAMPLERS,
    Nodes,
    cross_image_fraction,
    graph_cross_triplets,
    graph_triplets,
    pair_triplets,
    random_triplets,
    sample_triplets,
    semihard_triplets,
)

label_lists = st.lists(st.sampled_from([0, 1, 2, 3, 7, 255]), min_size=1, max_size=80)
SETTINGS = settings(max_examples=60, deadline=None)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def classes_connected(labels: torch.Tensor, triplets: torch.Tensor) -> bool:
    """True when the attractive (anchor, positive) edges make each class one connected component."""
    n = labels.numel()
    a, p = triplets[:, 0].numpy(), triplets[:, 1].numpy()
    graph = coo_matrix((np.ones(len(a)), (a, p)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return all(len(np.unique(component[(labels == c).numpy()])) == 1 for c in labels.unique())


def check_triplet_labels(labels: torch.Tensor, t: torch.Tensor) -> None:
    assert t.dtype == torch.long and t.shape[1] == 3
    assert bool((labels[t[:, 1]] == labels[t[:, 0]]).all())
    has_neg = t[:, 2] >= 0
    assert bool((labels[t[has_neg, 2]] != labels[t[has_neg, 0]]).all())
    # -1 only when there is no node of another class
    assert bool(has_neg.all()) == (labels.unique().numel() > 1)


@SETTINGS
@given(labels=label_lists, seed=st.integers(0, 2**31 - 1))
def test_graph_triplets_properties(labels: list[int], seed: int) -> None:
    lab = torch.tensor(labels)
    t = graph_triplets(lab, generator=_gen(seed))
    assert t.shape == (len(labels), 3)
    assert torch.equal(t[:, 0], torch.arange(len(labels)))  # every node is the anchor of row i
    check_triplet_labels(lab, t)
    counts = {c: labels.count(c) for c in labels}
    for i, c in enumerate(labels):
        if counts[c] == 1:
            assert t[i, 1] == i  # a unique class is its own positive
        else:
            assert t[i, 1] != i
    assert classes_connected(lab, t)


def _reference_graph(labels: list[int], seed: int) -> list[list[int]]:
    """Loop version of the paper's construction, consuming the same random numbers as graph_triplets."""
    g = _gen(seed)
    n = len(labels)
    order = torch.randperm(n, generator=g).tolist()
    u = torch.rand(2, n, generator=g, dtype=torch.float64).tolist()

    def pick(x: float, pool: list[int]) -> int:
        return pool[min(int(x * len(pool)), len(pool) - 1)]

    rows = [[0, 0, 0] for _ in range(n)]
    for t, node in enumerate(order):
        same = [j for j in order if labels[j] == labels[node] and j != node]  # arrival order
        other = [j for j in order if labels[j] != labels[node]]
        earlier_same = [j for j in order[:t] if labels[j] == labels[node]]
        earlier_other = [j for j in order[:t] if labels[j] != labels[node]]
        positive = pick(u[0][t], earlier_same or same) if same else node
        negative = pick(u[1][t], earlier_other or other) if other else -1
        rows[node] = [node, positive, negative]
    return rows


@SETTINGS
@given(labels=label_lists, seed=st.integers(0, 2**31 - 1))
def test_graph_triplets_matches_loop_reference(labels: list[int], seed: int) -> None:
    assert graph_triplets(torch.tensor(labels), generator=_gen(seed)).tolist() == _reference_graph(
        labels, seed
    )


def test_graph_triplets_edge_cases() -> None:
    assert graph_triplets(torch.tensor([4])).tolist() == [[0, 0, -1]]
    single = graph_triplets(torch.tensor([2, 2, 2, 2]), generator=_gen(0))
    assert bool((single[:, 2] == -1).all()) and bool((single[:, 1] != single[:, 0]).all())
    all_unique = graph_triplets(torch.tensor([5, 1, 9]), generator=_gen(1))
    assert torch.equal(all_unique[:, 1], torch.arange(3)) and bool((all_unique[:, 2] >= 0).all())
    assert graph_triplets(torch.empty(0, dtype=torch.long)).shape == (0, 3)
    with pytest.raises(ValueError):
        graph_triplets(torch.zeros(2, 2, dtype=torch.long))


def test_graph_triplets_deterministic() -> None:
    lab = torch.randint(0, 6, (300,), generator=_gen(0))
    a, b = graph_triplets(lab, generator=_gen(7)), graph_triplets(lab, generator=_gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, graph_triplets(lab, generator=_gen(8)))


@SETTINGS
@given(labels=label_lists, seed=st.integers(0, 2**31 - 1), m=st.integers(0, 50))
def test_random_triplets_properties(labels: list[int], seed: int, m: int) -> None:
    lab = torch.tensor(labels)
    t = random_triplets(lab, num_triplets=m, generator=_gen(seed))
    assert t.shape == (m, 3)
    if m:
        check_triplet_labels(lab, t)
    counts = {c: labels.count(c) for c in labels}
    for a, p, _ in t.tolist():
        assert (p == a) == (counts[labels[a]] == 1)
    assert random_triplets(lab, generator=_gen(seed)).shape == (len(labels), 3)


def test_random_triplets_cover_all_other_nodes() -> None:
    lab = torch.tensor([0, 0, 0, 1, 1, 2])
    t = random_triplets(lab, num_triplets=3000, generator=_gen(3))
    pairs = {tuple(r) for r in t[:, :2].tolist()}
    assert pairs == {(a, p) for a in range(6) for p in range(6) if a != p and lab[a] == lab[p]} | {(5, 5)}
    assert set(t[t[:, 0] == 5, 2].tolist()) == {0, 1, 2, 3, 4}


def test_random_triplets_can_disconnect_a_class_but_graph_never_does() -> None:
    """The property that separates the two samplers (paper, Fig. 3): class-wise connectivity."""
    lab = torch.arange(4).repeat_interleave(10)  # 4 classes × 10 nodes
    seeds = range(40)
    random_ok = [classes_connected(lab, random_triplets(lab, generator=_gen(s))) for s in seeds]
    graph_ok = [classes_connected(lab, graph_triplets(lab, generator=_gen(s))) for s in seeds]
    assert all(graph_ok)
    assert sum(random_ok) < len(seeds) // 2


# -- pairs: the paper's Fig. 3(a) baseline ---------------------------------------------------------------------
@SETTINGS
@given(labels=label_lists, seed=st.integers(0, 2**31 - 1))
def test_pair_triplets_are_disjoint_same_class_pairs(labels: list[int], seed: int) -> None:
    lab = torch.tensor(labels)
    t = pair_triplets(lab, generator=_gen(seed))
    counts = {c: labels.count(c) for c in labels}
    assert t.shape == (sum(k // 2 for k in counts.values()), 3)
    if len(t):
        check_triplet_labels(lab, t)
    pair_nodes = t[:, :2].flatten().tolist()
    assert len(pair_nodes) == len(set(pair_nodes))  # no node in two pairs, none paired with itself


def test_pair_triplets_draw_every_pair_and_negative() -> None:
    lab = torch.tensor([0, 0, 0, 1, 1, 2])
    rows = [r for s in range(400) for r in pair_triplets(lab, generator=_gen(s)).tolist()]
    assert {frozenset(r[:2]) for r in rows} == {frozenset(p) for p in [(0, 1), (0, 2), (1, 2), (3, 4)]}
    assert {r[2] for r in rows if r[0] in (3, 4)} == {0, 1, 2, 5}
    assert pair_triplets(torch.tensor([1, 1]), generator=_gen(0)).tolist() in ([[0, 1, -1]], [[1, 0, -1]])
    assert pair_triplets(torch.tensor([0, 1, 2])).shape == (0, 3)
    assert pair_triplets(torch.empty(0, dtype=torch.long)).shape == (0, 3)


# -- graph_cross and semihard: cross-image positives ------------------------------------------------------------
node_lists = st.lists(st.tuples(st.sampled_from([0, 1, 2, 7]), st.integers(0, 4)), min_size=1, max_size=60)


def _nodes(pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([c for c, _ in pairs]), torch.tensor([i for _, i in pairs])


def check_cross_image_positives(labels: torch.Tensor, images: torch.Tensor, t: torch.Tensor) -> None:
    n = labels.numel()
    assert torch.equal(t[:, 0], torch.arange(n))
    check_triplet_labels(labels, t)
    for i in range(n):
        same = (labels == labels[i]) & (torch.arange(n) != i)
        if bool((same & (images != images[i])).any()):
            assert images[t[i, 1]] != images[i]  # a cross-image positive wherever one exists
        elif bool(same.any()):
            assert t[i, 1] != i
        else:
            assert t[i, 1] == i  # a unique class is its own positive


@SETTINGS
@given(pairs=node_lists, seed=st.integers(0, 2**31 - 1))
def test_graph_cross_triplets_properties(pairs: list[tuple[int, int]], seed: int) -> None:
    labels, images = _nodes(pairs)
    t = graph_cross_triplets(labels, images, generator=_gen(seed))
    check_cross_image_positives(labels, images, t)
    assert classes_connected(labels, t)


def test_graph_cross_positives_are_uniform_among_earlier_cross_image_nodes() -> None:
    """Class 0 in three images: over many draws each anchor reaches every node of the other images."""
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    images = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    seen = {i: set() for i in range(6)}
    for s in range(300):
        t = graph_cross_triplets(labels, images, generator=_gen(s))
        for i in range(6):
            seen[i].add(int(t[i, 1]))
    for i in range(6):
        assert seen[i] == {j for j in range(6) if images[j] != images[i]}
    t = graph_cross_triplets(labels, images, generator=_gen(0))
    assert float(cross_image_fraction(t, images)) == 1.0
    # the graph's own positives come from the anchor's image about as often as from any other patch
    same_image = [float(cross_image_fraction(graph_triplets(labels, generator=_gen(s)), images)) for s in range(200)]
    assert 0.6 < float(np.mean(same_image)) < 0.95


def _semihard_reference(labels: torch.Tensor, embeddings: torch.Tensor, positive: torch.Tensor, margin: float) -> list:
    z = torch.nn.functional.normalize(embeddings, dim=1)
    rows = []
    for a in range(len(labels)):
        d = ((z - z[a]) ** 2).sum(1)
        d_ap = float(d[positive[a]])
        others = [j for j in range(len(labels)) if labels[j] != labels[a]]
        band = [j for j in others if d_ap < float(d[j]) < d_ap + margin]
        pool = band or others
        rows.append(min(pool, key=lambda j: float(d[j])) if pool else -1)
    return rows


@SETTINGS
@given(pairs=node_lists, seed=st.integers(0, 2**31 - 1), margin=st.sampled_from([0.05, 0.5, 2.1]))
def test_semihard_triplets_match_a_loop_reference(pairs: list[tuple[int, int]], seed: int, margin: float) -> None:
    labels, images = _nodes(pairs)
    embeddings = torch.randn(len(labels), 5, generator=_gen(seed), dtype=torch.float64)
    t = semihard_triplets(labels, images, embeddings, margin, generator=_gen(seed))
    check_cross_image_positives(labels, images, t)
    # the positives are graph_cross's (the same draws), the negatives chosen on distance
    assert torch.equal(t[:, 1], graph_cross_triplets(labels, images, generator=_gen(seed))[:, 1])
    assert t[:, 2].tolist() == _semihard_reference(labels, embeddings, t[:, 1], margin)


def test_semihard_prefers_the_band_and_falls_back_to_the_hardest() -> None:
    # 1-D directions on the unit circle: anchor 0 at angle 0, positive 1 (another image) at 60°
    angles = torch.tensor([0.0, 60.0, 30.0, 75.0, 150.0]).deg2rad()
    embeddings = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels, images = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 0, 1, 2])
    t = semihard_triplets(labels, images, embeddings, margin=0.5, generator=_gen(0))
    assert t[0, 1] == 1  # the only other node of class 0
    assert t[0, 2] == 3  # D(0,3) = 1.48 is in (D(0,1), D(0,1) + 0.5) = (1.0, 1.5); node 2 (D 0.27) is harder
    t = semihard_triplets(labels, images, embeddings, margin=0.1, generator=_gen(0))
    assert t[0, 2] == 2  # empty band: the hardest negative
    with pytest.raises(ValueError, match="one row per node"):
        semihard_triplets(labels, images, embeddings[:3], margin=0.5)


def test_every_named_sampler_draws_valid_triplets_and_refuses_unknown_names() -> None:
    labels, images = torch.tensor([0, 0, 1, 1, 2, 0]), torch.tensor([0, 1, 0, 1, 1, 2])
    nodes = Nodes(labels, images, torch.randn(6, 4, generator=_gen(0)))
    assert set(TRIPLET_SAMPLERS) == {"graph", "random", "pairs", "graph_cross", "semihard"}
    for kind in TRIPLET_SAMPLERS:
        check_triplet_labels(labels, sample_triplets(kind, nodes, 0.5, _gen(1)))
    # graph and random draw exactly what their functions draw (earlier results reproduce)
    assert torch.equal(sample_triplets("graph", nodes, 0.5, _gen(3)), graph_triplets(labels, generator=_gen(3)))
    assert torch.equal(sample_triplets("random", nodes, 0.5, _gen(3)), random_triplets(labels, generator=_gen(3)))
    with pytest.raises(ValueError, match="unknown triplet sampler 'grpah'"):
        sample_triplets("grpah", nodes, 0.5)


# -- one graph across ranks ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.distributed
def test_global_graph_on_two_ranks_is_the_single_process_graph(tmp_path) -> None:
    """2 gloo ranks with 5 and 7 nodes under DDP: the same triplets on both, and the gradient is the whole graph's
    (``mnm gpu-check`` runs the same check over NCCL)."""
    from mnm.experiments.gpu_check import check_global_graph

    result = check_global_graph("gloo", tmp_path)
    assert result["triplets"] > 0 and result["gradient_max_error"] < 1e-6


@pytest.mark.slow
@pytest.mark.distributed
def test_semihard_on_two_ranks_chooses_over_the_global_graph(tmp_path) -> None:
    """The semi-hard choice runs over every rank's gathered nodes: the same triplets as one process with all of
    them, and DDP's gradient is that graph's (``mnm gpu-check`` runs it over NCCL)."""
    from mnm.experiments.gpu_check import check_global_graph

    result = check_global_graph("gloo", tmp_path, sampler="semihard")
    assert result["triplets"] == 12 and result["gradient_max_error"] < 1e-6
