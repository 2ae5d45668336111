"""Stage hashes: the identity of a stage's run (kind, merged config, evaluation split, its ``init_from``'s hash), which
decides whether a finished stage is skipped, resumed or started anew; and what changed since a stage's last run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from mnm.runs.config import StageSpec

__all__ = ["config_changes", "config_hash", "stage_hash", "stage_hashes"]


def config_hash(obj: Any) -> str:
    """A stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_hash(kind: str, config: dict[str, Any], evaluate: str | None, init_from_hash: str | None) -> str:
    """The identity of a stage's run: its kind, merged config, evaluation split and its ``init_from``'s hash.

    (The key ``upstream`` is kept so that hashes of existing run folders stay valid.)
    """
    return config_hash({"kind": kind, "config": config, "evaluate": evaluate, "upstream": init_from_hash})


def _leaves(tree: Any, prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, str(key)))
    else:
        yield prefix, tree


def config_changes(saved: Path, config: dict[str, Any]) -> list[str]:
    """The settings of a stage's ``config`` whose value differs from its earlier run's saved ``config.yaml``,
    as ``"key: old -> new"`` (empty when nothing differs or nothing was saved)."""
    if not saved.is_file():
        return []
    old = yaml.safe_load(saved.read_text()) or {}
    changes = []
    for key, value in _leaves(config):
        before: Any = old
        for part in key:
            before = before.get(part) if isinstance(before, dict) else None
        if before != value:
            same = isinstance(before, str) and isinstance(value, str) and Path(before).resolve() == Path(value).resolve()
            hint = " (the same path spelled differently: use the earlier spelling to keep the run)" if same else ""
            changes.append(f"{'.'.join(key)}: {before!r} -> {value!r}{hint}")
    return changes


def stage_hashes(stages: Iterable[StageSpec], config_of: Callable[[StageSpec], dict[str, Any]] | None = None
                 ) -> dict[str, str]:
    """:func:`stage_hash` of every stage of a pipeline, in order; ``config_of`` picks what of the config counts."""
    hashes: dict[str, str] = {}
    for spec in stages:
        if spec.final_weights:  # not run: the file is what it hands on
            hashes[spec.name] = stage_hash(spec.kind, {"final_weights": spec.final_weights}, None, None)
            continue
        config = spec.config if config_of is None else config_of(spec)
        hashes[spec.name] = stage_hash(spec.kind, config, spec.evaluate, hashes.get(spec.init_from or ""))
    return hashes
