"""Label fractions: a seeded subset of the train split keeps its masks, the rest is the unlabelled remainder.

The subset is chosen by :func:`choose_labeled`: first a *class cover* (for each
class, rarest first, the first sample in a seeded random order that shows it,
unless an earlier pick already does), then a random fill (same order) up to
``round(fraction * N)`` samples. Every class present in the full split is
therefore present in the subset, and the same fraction and seed always give
the same ids. A ``labeled_list`` file names the subset instead: one sample id per
line (what :func:`write_id_list` writes), or UniMatch's split files (``image_path label_path``
per line, matched by the image's file name).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnm.datamodules.datasets import SampleRecord
from mnm.datamodules.errors import DataError
from mnm.datamodules.readers import IGNORE_INDEX, read_label, read_list

__all__ = [
    "LabelSplit",
    "choose_labeled",
    "classes_present",
    "read_id_list",
    "split_labeled",
    "write_id_list",
]

logger = logging.getLogger("mnm.datamodules")


@dataclass(frozen=True)
class LabelSplit:
    """The train split cut in two: samples that keep their masks, and images whose masks are dropped."""

    labeled: list[SampleRecord]
    unlabeled: list[SampleRecord]


def classes_present(records: Sequence[SampleRecord]) -> list[frozenset[int]]:
    """The class ids (not the ignore value) in each record's label map; reads every label."""
    present = []
    for record in records:
        if record.label is None or record.mapping is None:
            raise DataError(
                f"{record.image}: sample has no label; a label fraction needs labelled train data"
            )
        ids = np.unique(read_label(record.label, record.mapping))
        present.append(frozenset(int(i) for i in ids if i != IGNORE_INDEX))
    return present


def choose_labeled(presence: Sequence[frozenset[int]], fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of ``round(fraction * N)`` samples (at least 1) covering every class present.

    Greedy class cover, rarest class first, then a random fill; both walk one
    permutation drawn from ``seed``. Raises :class:`DataError` when the cover
    alone needs more samples than the fraction allows.
    """
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"labeled_fraction must be in (0, 1], got {fraction}")
    total = len(presence)
    size = max(1, round(fraction * total))
    order = np.random.default_rng(seed).permutation(total).tolist()
    counts: dict[int, int] = {}
    for classes in presence:
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    chosen: list[int] = []
    covered: set[int] = set()
    for c in sorted(counts, key=lambda c: (counts[c], c)):
        if c not in covered:
            pick = next(i for i in order if c in presence[i])
            chosen.append(pick)
            covered |= presence[pick]
    if len(chosen) > size:
        raise DataError(
            f"labeled_fraction {fraction} keeps {size} of {total} train samples, but covering all "
            f"{len(counts)} classes present needs {len(chosen)}; raise the fraction"
        )
    taken = set(chosen)
    chosen += [i for i in order if i not in taken][: size - len(chosen)]
    return sorted(chosen)


def stratified_labeled(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Indices of a class-stratified share ``fraction`` of the samples (at least one per class), sorted.

    Each class keeps ``max(1, round(fraction * count))`` of its samples, drawn by a generator seeded with ``seed``.
    """
    labels_t = torch.as_tensor(list(labels))
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for cls in torch.unique(labels_t).tolist():
        members = torch.nonzero(labels_t == cls).flatten()
        count = max(1, round(fraction * len(members)))
        keep += members[torch.randperm(len(members), generator=generator)[:count]].tolist()
    return sorted(keep)


def read_id_list(path: Path, names: Sequence[str], image_names: Sequence[str] = ()) -> list[int]:
    """Indices (sorted) into ``names`` of the samples listed in ``path``; unknown ids raise.

    A line holds a sample id, or an ``image_path label_path`` pair (UniMatch's split files), matched
    by the image's file name against ``image_names`` (the samples' image file names, in ``names`` order).
    """
    if not path.is_file():
        raise DataError(f"{path}: labeled_list does not exist")
    index = {name: i for i, name in enumerate(names)}
    by_image = {name: i for i, name in enumerate(image_names)}
    picked: set[int] = set()
    for lineno, tokens in read_list(path):
        if len(tokens) == 2 and by_image:
            key, known = Path(tokens[0]).name, by_image
        elif len(tokens) == 1:
            key, known = tokens[0], index
        else:
            raise DataError(f"{path}:{lineno}: expected a sample id or 'image label' per line, got {len(tokens)} fields")
        if key not in known:
            raise DataError(f"{path}:{lineno}: sample id {key!r} is not in the train split")
        picked.add(known[key])
    if not picked:
        raise DataError(f"{path}: labeled_list names no samples")
    return sorted(picked)


def split_labeled(
    records: Sequence[SampleRecord],
    *,
    fraction: float = 1.0,
    list_file: Path | None = None,
    seed: int = 0,
    count: int | None = None,
    pool: frozenset[str] | None = None,
) -> LabelSplit:
    """Cut ``records`` into the labelled subset (by ``list_file``, ``count`` or ``fraction``) and the remainder.

    The remainder's records have no label. A listed subset that misses a class of the full split
    is kept as given, with a warning. ``pool`` (sample ids) restricts the seeded choice to those
    records (VOC: the 1,464 finely labelled images of the 10,582), and ``count`` asks for that many.
    """
    presence = classes_present(records)
    if pool is not None or count is not None:
        candidates = [i for i, r in enumerate(records) if pool is None or r.name in pool]
        if count is not None and not 1 <= count <= len(candidates):
            raise DataError(f"labeled_count {count} must be in [1, {len(candidates)}] (the samples it draws from)")
        share = fraction if count is None else count / len(candidates)
        keep = [candidates[i] for i in choose_labeled([presence[i] for i in candidates], share, seed)]
    elif list_file is not None:
        keep = read_id_list(list_file, [r.name for r in records], [r.image.name for r in records])
        missing = set().union(*presence) - set().union(*(presence[i] for i in keep))
        if missing:
            logger.warning(
                "%s: the labelled subset lacks classes %s of the train split", list_file, sorted(missing)
            )
    else:
        keep = choose_labeled(presence, fraction, seed)
    kept = set(keep)
    return LabelSplit(
        labeled=[records[i] for i in keep],
        unlabeled=[
            dataclasses.replace(r, label=None, mapping=None) for i, r in enumerate(records) if i not in kept
        ],
    )


def write_id_list(path: Path, records: Sequence[SampleRecord]) -> None:
    """Write the records' ids one per line (the ``labeled_list`` format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{r.name}\n" for r in records))
