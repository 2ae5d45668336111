"""Representation probe: kNN classification of patch embeddings (the cheap signal M&M is tuned on).

A fixed set of labelled patches is cut from train images (the *bank*) and from val
images (the *queries*): centres drawn class-balanced by :func:`mnm.methods.mix.sample_patches`
from a seeded generator, images visited in a seeded order, at most ``per_class``
patches kept per class. A backbone embeds both sets; each query takes the majority
class of its ``k`` nearest bank patches by cosine similarity (scikit-learn's
``KNeighborsClassifier``). The patch sets depend only on the data and the settings,
so the numbers of different checkpoints compare directly.

Reported: ``knn_acc`` (share of queries classified right), ``knn_acc_balanced``
(mean per-class recall, scikit-learn's ``balanced_accuracy_score``) and
``effective_rank`` of the query embeddings (Roy & Vetterli: the exponential of the
entropy of the normalised singular values; low values mean a collapsed embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from torch import Tensor

from mnm.methods.mix import sample_patches

__all__ = [
    "PatchSet",
    "ProbeSettings",
    "RepresentationProbe",
    "collect_patches",
    "effective_rank",
    "embed_patches",
    "knn_scores",
    "score_backbone",
]


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe's patch sets are cut and scored."""

    bank_per_class: int = 150  # train patches kept per class
    query_per_class: int = 75  # val patches kept per class
    patches_per_image: int = 16  # candidates drawn per image (class-balanced centres)
    size_range: tuple[int, int] = (32, 112)  # patch side before resizing, in pixels
    out_size: int = 64  # side the patches are resized to
    k: int = 10  # neighbours that vote
    seed: int = 0


class PatchSet(NamedTuple):
    """Labelled patches: ``patches`` N×3×S×S float in [0, 1], ``labels`` N int64."""

    patches: Tensor
    labels: Tensor


IMAGES_PER_DRAW = 32
"""Images whose patches are drawn in one :func:`~mnm.methods.mix.sample_patches` call."""


def _same_size_groups(pairs: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Stack ``(image, mask)`` pairs into batches of equal size, keeping their order within a size."""
    groups: dict[tuple[int, ...], list[tuple[Tensor, Tensor]]] = {}
    for image, mask in pairs:
        groups.setdefault(tuple(image.shape), []).append((image, mask))
    return [(torch.stack([i for i, _ in g]), torch.stack([m for _, m in g])) for g in groups.values()]


def collect_patches(
    samples: Callable[[int], tuple[Tensor, Tensor]],
    num_samples: int,
    num_classes: int,
    per_class: int,
    settings: ProbeSettings,
    salt: int = 0,
) -> PatchSet:
    """Cut up to ``per_class`` patches per class from ``samples(i) -> (image 3×H×W, mask H×W)``.

    Images are visited in an order drawn from ``settings.seed`` (and ``salt``, so that bank and
    queries use different draws), :data:`IMAGES_PER_DRAW` at a time; each gives
    ``settings.patches_per_image`` class-balanced candidates, and a candidate is kept while its
    class has fewer than ``per_class`` patches.
    """
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + salt)
    counts = torch.zeros(num_classes, dtype=torch.long)
    kept_patches: list[Tensor] = []
    kept_labels: list[int] = []
    order = torch.randperm(num_samples, generator=generator)
    for chunk in order.split(IMAGES_PER_DRAW):
        pairs = [samples(i) for i in chunk.tolist()]
        for image, mask in _same_size_groups(pairs):
            batch = sample_patches(
                image,
                mask,
                patches_per_image=settings.patches_per_image,
                size_range=settings.size_range,
                out_size=settings.out_size,
                background_class=None,
                class_balanced=True,
                generator=generator,
            )
            for patch, label in zip(batch.patches, batch.labels.tolist(), strict=True):
                if 0 <= label < num_classes and counts[label] < per_class:
                    counts[label] += 1
                    kept_patches.append(patch)
                    kept_labels.append(label)
        if bool((counts >= per_class).all()):
            break
    if not kept_patches:
        raise ValueError("the probe found no labelled pixels to cut patches from")
    return PatchSet(torch.stack(kept_patches), torch.tensor(kept_labels, dtype=torch.long))


@torch.no_grad()
def embed_patches(embed: Callable[[Tensor], Tensor], patches: Tensor, batch_size: int = 256) -> Tensor:
    """``embed`` applied to ``patches`` in batches, on the embedding's device; returns N×D on the CPU."""
    return torch.cat([embed(chunk).flatten(1).float().cpu() for chunk in patches.split(batch_size)])


def effective_rank(embeddings: Tensor) -> float:
    """Exponential of the entropy of the normalised singular values of the centred N×D matrix."""
    centred = embeddings.double() - embeddings.double().mean(0)
    singular = torch.linalg.svdvals(centred)
    p = singular / singular.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def knn_scores(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, k: int) -> dict[str, float]:
    """kNN (cosine, majority vote of ``k``) accuracy and balanced accuracy of ``queries`` against ``bank``."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(bank)), metric="cosine", algorithm="brute")
    knn.fit(bank.numpy(), bank_labels.numpy())
    predicted = knn.predict(queries.numpy())
    truth = query_labels.numpy()
    return {
        "knn_acc": float((predicted == truth).mean()),
        "knn_acc_balanced": float(balanced_accuracy_score(truth, predicted)),
    }


class RepresentationProbe:
    """A bank and a query :class:`PatchSet`, cut once, that score any embedding function."""

    def __init__(self, bank: PatchSet, queries: PatchSet, settings: ProbeSettings) -> None:
        self.bank, self.queries, self.settings = bank, queries, settings

    @classmethod
    def from_samples(
        cls,
        train: tuple[Callable[[int], tuple[Tensor, Tensor]], int],
        val: tuple[Callable[[int], tuple[Tensor, Tensor]], int],
        num_classes: int,
        settings: ProbeSettings | None = None,
    ) -> RepresentationProbe:
        """Cut the bank from ``train`` and the queries from ``val`` (each ``(samples, count)``)."""
        settings = settings or ProbeSettings()
        bank = collect_patches(*train, num_classes, settings.bank_per_class, settings, salt=1)
        queries = collect_patches(*val, num_classes, settings.query_per_class, settings, salt=2)
        return cls(bank, queries, settings)

    @classmethod
    def from_datamodule(cls, datamodule: object, settings: ProbeSettings | None = None) -> RepresentationProbe:
        """Cut the patch sets from a segmentation data module's ``train`` and ``val`` splits.

        Uses ``datamodule.eval_dataset(role)`` (deterministic transform) and ``num_classes``.
        """
        splits = [datamodule.eval_dataset(role) for role in ("train", "val")]
        train, val = ((_labelled_pairs(ds), len(ds)) for ds in splits)
        return cls.from_samples(train, val, datamodule.num_classes, settings)

    def score(self, embed: Callable[[Tensor], Tensor], device: torch.device | str = "cpu") -> dict[str, float]:
        """``knn_acc``, ``knn_acc_balanced`` and ``effective_rank`` of the embedding ``embed``."""
        bank = embed_patches(embed, self.bank.patches.to(device))
        queries = embed_patches(embed, self.queries.patches.to(device))
        scores = knn_scores(bank, self.bank.labels, queries, self.queries.labels, self.settings.k)
        return scores | {"effective_rank": effective_rank(queries)}


def score_backbone(probe: RepresentationProbe, backbone: torch.nn.Module) -> dict[str, float]:
    """Score ``backbone.embed`` in eval mode (batch-norm running statistics), restoring its mode after."""
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        return probe.score(backbone.embed, device)
    finally:
        backbone.train(was_training)


def _labelled_pairs(dataset: Sequence) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``i -> (image, mask)`` for a dataset whose items are dicts with ``image`` (uint8) and ``mask``."""

    def get(index: int) -> tuple[Tensor, Tensor]:
        item = dataset[index]
        return item["image"].float() / 255.0, item["mask"].long()

    return get
