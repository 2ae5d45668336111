"""The "match" step: triplets from a class-wise connected graph, and the random-triplet baseline.

Both samplers are vectorised (sorting and ``searchsorted``; no loops over nodes,
no N×N or N×C tensors) and return a LongTensor of rows (anchor, positive,
negative) indexing into ``labels``. A negative of ``-1`` means "no node of
another class exists" (all labels equal).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed._functional_collectives import all_gather_single

from mnm.rng import uniform_below

__all__ = ["gather_nodes", "graph_triplets", "random_triplets"]


def gather_nodes(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The nodes of every rank, in rank order, on every rank (embeddings keep their gradient).

    Ranks may hold different counts. The backward sums each rank's gradient of
    its own nodes over the ranks, so when every rank computes the same loss over
    the whole graph, DDP's mean of the ranks' gradients is that loss's gradient.
    """
    count = torch.tensor([labels.numel()], device=labels.device)
    counts = all_gather_single(count, 0, dist.group.WORLD)
    pad = int(counts.max()) - labels.numel()
    embeddings = all_gather_single(F.pad(embeddings, (0, 0, 0, pad)).contiguous(), 0, dist.group.WORLD)
    labels = all_gather_single(F.pad(labels, (0, pad), value=-1).contiguous(), 0, dist.group.WORLD)
    keep = labels >= 0
    return embeddings[keep], labels[keep]


class _ClassIndex:
    """Nodes grouped by class, keeping the given node order inside each class."""

    def __init__(self, classes: Tensor) -> None:
        self.classes = classes  # compact class id per position
        counts = torch.bincount(classes)
        self.nodes = torch.sort(classes, stable=True).indices  # positions grouped by class
        self.count = counts[classes]  # size of each position's class
        self.start = (counts.cumsum(0) - counts)[classes]  # where that class begins in ``nodes``
        rank = torch.empty_like(classes)
        rank[self.nodes] = torch.arange(classes.numel(), device=classes.device)
        self.rank = rank - self.start  # rank of each position inside its class


def _compact(labels: Tensor) -> Tensor:
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    return torch.unique(labels, return_inverse=True)[1]


def graph_triplets(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One triplet per node from the paper's class-wise connected graph; returns LongTensor[N, 3].

    Nodes enter the graph in a random order. Each node takes one attractive edge to a random earlier
    node of its class and one rejective edge to a random earlier node of another class; the first
    node of a class takes its positive uniformly among the other nodes of its class (itself if the
    class is unique), and a node with no earlier other-class node takes its negative uniformly among
    all other-class nodes (``-1`` only when every label is equal). Row ``i`` has anchor ``i``, so the
    attractive edges make every class one connected component.
    """
    classes = _compact(labels)
    n = classes.numel()
    device = labels.device
    order = torch.randperm(n, generator=generator).to(device)  # order[t] = node arriving at time t
    u = torch.rand(2, n, generator=generator, dtype=torch.float64).to(device)
    arrival = _ClassIndex(classes[order])  # positions are arrival times
    time = torch.arange(n, device=device)

    # positive: r-th earlier node of my class, or (first of its class) any other node of it
    earlier_same = arrival.rank
    first = earlier_same == 0
    pos_rank = torch.where(
        first, 1 + uniform_below(u[0], arrival.count - 1), uniform_below(u[0], earlier_same)
    )
    pos_rank = torch.where(arrival.count == 1, 0, pos_rank)
    positive = order[arrival.nodes[arrival.start + pos_rank]]

    # negative: r-th node (in arrival order) not of my class, among the earlier ones when any
    earlier_other = time - earlier_same
    n_other = n - arrival.count
    r = uniform_below(u[1], torch.where(earlier_other > 0, earlier_other, n_other))
    # the j-th node of class c arrives after (t_j - j) other-class nodes; that sequence is
    # non-decreasing in j, so the r-th other-class node arrives after k = #{j : t_j - j <= r}
    # same-class nodes. Offsetting class c by c*(n+1) lets one searchsorted serve every class.
    offset = arrival.classes * (n + 1)
    others_before = (arrival.nodes - arrival.rank[arrival.nodes]) + offset[arrival.nodes]
    k = torch.searchsorted(others_before, r + offset, right=True) - arrival.start
    negative = torch.where(n_other > 0, order[(r + k).clamp(max=n - 1)], -1)

    triplets = torch.empty(n, 3, dtype=torch.long, device=device)
    triplets[order] = torch.stack([order, positive, negative], dim=1)
    return triplets


def random_triplets(
    labels: Tensor, num_triplets: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """FaceNet-style "random triplets" baseline; returns LongTensor[M, 3] (``M = N`` by default).

    Each triplet is drawn independently: anchor uniform over nodes, positive uniform among the other
    nodes of its class (itself if the class is unique), negative uniform among other-class nodes
    (``-1`` if none). Unlike :func:`graph_triplets`, same-class nodes need not end up connected.
    """
    classes = _compact(labels)
    n = classes.numel()
    m = n if num_triplets is None else num_triplets
    device = labels.device
    if n == 0:
        if m:
            raise ValueError("cannot draw triplets from zero nodes")
        return torch.empty(0, 3, dtype=torch.long, device=device)
    u = torch.rand(3, m, generator=generator, dtype=torch.float64).to(device)
    index = _ClassIndex(classes)
    anchor = uniform_below(u[0], torch.full((m,), n, device=device))
    count, start, rank = index.count[anchor], index.start[anchor], index.rank[anchor]

    r = uniform_below(u[1], count - 1)  # skip the anchor itself among its class
    positive_pos = (start + r + (r >= rank).long()).clamp(max=n - 1)
    positive = torch.where(count > 1, index.nodes[positive_pos], anchor)

    r = uniform_below(u[2], n - count)  # the r-th node outside the anchor's class block in ``nodes``
    negative_pos = torch.where(r < start, r, r + count).clamp(max=n - 1)
    negative = torch.where(count < n, index.nodes[negative_pos], -1)
    return torch.stack([anchor, positive, negative], dim=1)
