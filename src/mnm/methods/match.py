"""The "match" step: which triplets (anchor, positive, negative) the triplet loss sees.

Every sampler returns a LongTensor of rows (anchor, positive, negative) indexing
the nodes (patches); a negative of ``-1`` means "no node of another class exists"
(all labels equal) and the loss drops that row. :data:`TRIPLET_SAMPLERS` names them
for ``model.triplets``:

- ``graph``: the paper's class-wise connected graph, one triplet per node;
- ``random``: FaceNet-style independent triplets, one per node (the project's first baseline);
- ``pairs``: the paper's Fig. 3(a) baseline, disjoint same-class pairs, one triplet each;
- ``graph_cross``: the graph with every positive from another image where the class has one;
- ``semihard``: cross-image positives and semi-hard negatives chosen on the detached embeddings.

``graph`` and ``random`` are vectorised without N×N tensors (sorting and
``searchsorted``); the others compare nodes pairwise (N×N, a few thousand nodes at
most under a global graph).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed._functional_collectives import all_gather_single

from mnm.utils.rng import uniform_below

__all__ = [
    "TRIPLET_SAMPLERS",
    "Nodes",
    "cross_image_fraction",
    "gather_nodes",
    "graph_cross_triplets",
    "graph_triplets",
    "pair_triplets",
    "random_triplets",
    "sample_triplets",
    "semihard_triplets",
]


class Nodes(NamedTuple):
    """The nodes of one graph: each patch's class, source image and embedding."""

    labels: Tensor  # N, int64 class ids
    images: Tensor  # N, int64 source-image ids, distinct across ranks under a global graph
    embeddings: Tensor  # N×D (the samplers use it detached)


def gather_nodes(embeddings: Tensor, labels: Tensor, images: Tensor | None = None) -> tuple[Tensor, ...]:
    """The nodes of every rank, in rank order, on every rank (embeddings keep their gradient).

    Ranks may hold different counts. The backward sums each rank's gradient of
    its own nodes over the ranks, so when every rank computes the same loss over
    the whole graph, DDP's mean of the ranks' gradients is that loss's gradient.
    With ``images`` (each node's source image on its rank) the gathered image ids
    are made distinct across ranks (``image * world + rank``) and returned third.
    """
    count = torch.tensor([labels.numel()], device=labels.device)
    counts = all_gather_single(count, 0, dist.group.WORLD)
    pad = int(counts.max()) - labels.numel()
    embeddings = all_gather_single(F.pad(embeddings, (0, 0, 0, pad)).contiguous(), 0, dist.group.WORLD)
    gathered = all_gather_single(F.pad(labels, (0, pad), value=-1).contiguous(), 0, dist.group.WORLD)
    keep = gathered >= 0
    if images is None:
        return embeddings[keep], gathered[keep]
    world, rank = dist.get_world_size(), dist.get_rank()
    images = all_gather_single(F.pad(images * world + rank, (0, pad), value=-1).contiguous(), 0, dist.group.WORLD)
    return embeddings[keep], gathered[keep], images[keep]


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


def pair_triplets(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The paper's Fig. 3(a) baseline: disjoint same-class pairs, one triplet each; returns LongTensor[M, 3].

    The nodes are shuffled and each class's nodes are paired in that order (an odd one out is left
    unused), so ``M = Σ_c ⌊n_c / 2⌋`` (about N/2) and no node appears in two pairs. The first node of a
    pair is the anchor, the second the positive; the negative is uniform among the other-class nodes
    (``-1`` if none). A class with one node gives no triplet.
    """
    classes = _compact(labels)
    n = classes.numel()
    device = labels.device
    order = torch.randperm(n, generator=generator).to(device)
    u = torch.rand(n, generator=generator, dtype=torch.float64).to(device)
    shuffled = _ClassIndex(classes[order])
    grouped = order[shuffled.nodes]  # node ids grouped by class, shuffled inside each class
    rank = shuffled.rank[shuffled.nodes]  # place of each grouped node inside its class
    count = shuffled.count[shuffled.nodes]
    first = (rank % 2 == 0) & (rank + 1 < count)  # the first node of each complete pair
    anchor, positive = grouped[first], grouped[first.nonzero().squeeze(1) + 1]
    index = _ClassIndex(classes)
    start, size = index.start[anchor], index.count[anchor]
    r = uniform_below(u[: anchor.numel()], n - size)  # the r-th node outside the anchor's class block
    negative = torch.where(size < n, index.nodes[torch.where(r < start, r, r + size).clamp(max=max(n - 1, 0))], -1)
    return torch.stack([anchor, positive, negative], dim=1)


def _row_choice(mask: Tensor, u: Tensor) -> Tensor:
    """For each row of a boolean N×M ``mask``, the column of a uniformly drawn True entry (``-1`` if none)."""
    count = mask.sum(1)
    r = uniform_below(u, count)
    column = (mask.cumsum(1) <= r[:, None]).sum(1)  # the column of the (r+1)-th True
    return torch.where(count > 0, column, -1)


def _cross_image_positives(labels: Tensor, images: Tensor, time: Tensor, u: Tensor) -> Tensor:
    """One positive per node, from another image wherever its class has a node in another image.

    ``time`` is each node's arrival in the graph. A node takes a uniformly drawn earlier same-class node
    of another image; a node with none earlier (the first nodes of its class, all from one image) takes
    the first node of another image to arrive, so every class stays one connected component. A class
    inside one image keeps the graph's rule (an earlier node of it; the first one any other; itself if
    alone).
    """
    n = labels.numel()
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=labels.device)
    cross = same & (images[:, None] != images[None, :])
    earlier = time[None, :] < time[:, None]
    positive = _row_choice(cross & earlier, u)
    first_other = torch.where(cross, time[None, :], n).argmin(1)  # the earliest cross-image node
    positive = torch.where((positive < 0) & cross.any(1), first_other, positive)
    inside = torch.where(same.any(1), _row_choice(same & earlier, u), torch.arange(n, device=labels.device))
    inside = torch.where(inside < 0, _row_choice(same, u), inside)
    return torch.where(positive < 0, inside, positive)


def _arrival(n: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """A random arrival time per node and two rows of uniforms per node, drawn on the CPU."""
    order = torch.randperm(n, generator=generator)
    u = torch.rand(2, n, generator=generator, dtype=torch.float64)
    time = torch.empty_like(order)
    time[order] = torch.arange(n)
    return time.to(device), u.to(device)


def _check_nodes(labels: Tensor, images: Tensor) -> None:
    _compact(labels)
    if images.shape != labels.shape:
        raise ValueError(f"images must have the labels' shape {tuple(labels.shape)}, got {tuple(images.shape)}")


def graph_cross_triplets(labels: Tensor, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The class-wise connected graph with cross-image positives; returns LongTensor[N, 3], row ``i`` anchored at ``i``.

    Nodes arrive in a random order as in :func:`graph_triplets`. The positive is drawn by
    :func:`_cross_image_positives` (another image wherever the class has a node in one); the negative,
    as in the graph, uniform among earlier other-class nodes, or among all of them when none arrived
    earlier (``-1`` if none exists). Each class remains one connected component.
    """
    _check_nodes(labels, images)
    n = labels.numel()
    time, u = _arrival(n, generator, labels.device)
    positive = _cross_image_positives(labels, images, time, u[0])
    other = labels[:, None] != labels[None, :]
    negative = _row_choice(other & (time[None, :] < time[:, None]), u[1])
    negative = torch.where(negative < 0, _row_choice(other, u[1]), negative)
    return torch.stack([torch.arange(n, device=labels.device), positive, negative], dim=1)


def semihard_triplets(
    labels: Tensor, images: Tensor, embeddings: Tensor, margin: float, generator: torch.Generator | None = None
) -> Tensor:
    """Cross-image positives and semi-hard negatives; returns LongTensor[N, 3], row ``i`` anchored at ``i``.

    Positives as in :func:`graph_cross_triplets`. Distances are the loss's: squared Euclidean between
    the L2-normalised embeddings, detached. The negative is the closest other-class node that is farther
    from the anchor than the positive and inside the margin (``D(a,p) < D(a,n) < D(a,p) + margin``, the
    semi-hard band); where the band is empty, the closest other-class node (the hardest; ``-1`` if none).
    The embeddings may live on another device than the labels (a GPU): the distances are computed there.
    """
    _check_nodes(labels, images)
    n = labels.numel()
    if embeddings.shape[0] != n:
        raise ValueError(f"embeddings must have one row per node ({n}), got shape {tuple(embeddings.shape)}")
    time, u = _arrival(n, generator, labels.device)
    positive = _cross_image_positives(labels, images, time, u[0])
    z = F.normalize(embeddings.detach().float(), dim=1)
    distance = torch.cdist(z, z).pow(2).to(labels.device)  # computed where the embeddings are; N×N comes over
    anchor = torch.arange(n, device=labels.device)
    d_ap = distance[anchor, positive][:, None]
    other = labels[:, None] != labels[None, :]
    band = other & (distance > d_ap) & (distance < d_ap + margin)
    inf = torch.tensor(float("inf"), device=distance.device)
    semihard = torch.where(band, distance, inf).min(1)
    hardest = torch.where(other, distance, inf).min(1)
    negative = torch.where(band.any(1), semihard.indices, hardest.indices)
    negative = torch.where(other.any(1), negative, -1)
    return torch.stack([anchor, positive, negative], dim=1)


def cross_image_fraction(triplets: Tensor, images: Tensor) -> Tensor:
    """Share of the usable triplets (negative ≥ 0) whose positive comes from another image than the anchor."""
    usable = triplets[triplets[:, 2] >= 0]
    if usable.numel() == 0:
        return torch.zeros((), device=images.device)
    return (images[usable[:, 0]] != images[usable[:, 1]]).float().mean()


TripletSampler = Callable[[Nodes, float, "torch.Generator | None"], Tensor]

#: ``model.triplets`` → sampler(nodes, margin, generator); every one draws from ``generator`` on the CPU
TRIPLET_SAMPLERS: dict[str, TripletSampler] = {
    "graph": lambda nodes, margin, g: graph_triplets(nodes.labels, generator=g),
    "random": lambda nodes, margin, g: random_triplets(nodes.labels, generator=g),
    "pairs": lambda nodes, margin, g: pair_triplets(nodes.labels, generator=g),
    "graph_cross": lambda nodes, margin, g: graph_cross_triplets(nodes.labels, nodes.images, generator=g),
    "semihard": lambda nodes, margin, g: semihard_triplets(
        nodes.labels, nodes.images, nodes.embeddings, margin, generator=g
    ),
}


def sample_triplets(kind: str, nodes: Nodes, margin: float, generator: torch.Generator | None = None) -> Tensor:
    """The triplets of sampler ``kind`` (a key of :data:`TRIPLET_SAMPLERS`) over ``nodes``."""
    if kind not in TRIPLET_SAMPLERS:
        raise ValueError(f"unknown triplet sampler {kind!r}; expected one of {sorted(TRIPLET_SAMPLERS)}")
    return TRIPLET_SAMPLERS[kind](nodes, margin, generator)
