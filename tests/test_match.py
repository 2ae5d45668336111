"""Tests for mnm.match: the class-wise connected graph and the random-triplet baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mnm.match import graph_triplets, random_triplets

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


# -- one graph across ranks ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.distributed
def test_global_graph_on_two_ranks_is_the_single_process_graph(tmp_path) -> None:
    """2 gloo ranks with 5 and 7 nodes under DDP: the same triplets on both, and the gradient is the whole graph's
    (``mnm gpu-check`` runs the same check over NCCL)."""
    from mnm.gpu_check import check_global_graph

    result = check_global_graph("gloo", tmp_path)
    assert result["triplets"] > 0 and result["gradient_max_error"] < 1e-6
