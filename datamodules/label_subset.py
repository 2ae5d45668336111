"""Label fractions: a seeded subset of the train split keeps its masks, the rest is the unlabelled remainder.

The subset is chosen by :func:`choose_labeled`: first a *class cover* (for each
class, rarest first, the first sample in a seeded random order that shows it,
unless an earlier pick already does), then a random fill (same order) up to
``round(fraction * N)`` samples. Every class present in the full split is
therefore present in the subset, and the same fraction and seed always give
the same ids. A ``labeled_list`` file (one sample id per line, UniMatch's
convention) names the subset instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def read_id_list(path: Path, names: Sequence[str]) -> list[int]:
    """Indices (sorted) into ``names`` of the ids listed in ``path``, one per line; unknown ids raise."""
    if not path.is_file():
        raise DataError(f"{path}: labeled_list does not exist")
    index = {name: i for i, name in enumerate(names)}
    picked: set[int] = set()
    for lineno, tokens in read_list(path):
        if len(tokens) != 1:
            raise DataError(f"{path}:{lineno}: expected one sample id per line, got {len(tokens)} fields")
        if tokens[0] not in index:
            raise DataError(f"{path}:{lineno}: sample id {tokens[0]!r} is not in the train split")
        picked.add(index[tokens[0]])
    if not picked:
        raise DataError(f"{path}: labeled_list names no samples")
    return sorted(picked)


def split_labeled(
    records: Sequence[SampleRecord], *, fraction: float = 1.0, list_file: Path | None = None, seed: int = 0
) -> LabelSplit:
    """Cut ``records`` into the labelled subset (by ``list_file`` or ``fraction``) and the remainder.

    The remainder's records have no label. A listed subset that misses a class of the full split
    is kept as given, with a warning.
    """
    presence = classes_present(records)
    if list_file is not None:
        keep = read_id_list(list_file, [r.name for r in records])
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
