"""A protocol's cells (label fraction × seed): their names and pipelines, the file's ``protocol:`` and ``report:`` settings checked, and the selection a command may make."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnm.experiments.benchmark import load_benchmark
from mnm.experiments.collect import init_chain
from mnm.runs.config import Pipeline
from mnm.runs.yaml_layers import ConfigError

#: ``--set`` keys that ``mnm protocol`` sets itself in every cell (the last part of a dotted key)
CELL_KEYS = {"fraction": "--fractions", "labeled_fraction": "--fractions", "seed": "--seeds",
             "split_seed": "--seeds", "seed_everything": "--seeds"}


def cell_name(fraction: float, seed: int) -> str:
    """The folder of one cell, e.g. ``f0.125-s1``."""
    return f"f{fraction:g}-s{seed}"


def reseed(pipeline: Pipeline, seed: int) -> Pipeline:
    """Set every seed of ``pipeline`` to ``seed`` (stages, their data modules and labelled subsets)."""
    pipeline.seed = seed
    for spec in pipeline.stages:
        spec.config["seed_everything"] = seed
        spec.config.setdefault("model", {})["seed"] = seed
        init_args = spec.config.setdefault("data", {}).setdefault("init_args", {})
        init_args["seed"] = seed
        init_args["split_seed"] = seed
    return pipeline


def stages_of_arms(pipeline: Pipeline, arms: Sequence[str]) -> list[str]:
    """Every stage the named arms need (their init chains); arms are named by label or by stage."""
    by_label = pipeline.report["arms"]
    unknown = [a for a in arms if a not in by_label and a not in by_label.values()]
    if unknown:
        close = [difflib.get_close_matches(a, list(by_label.values()), n=1) for a in unknown]
        hints = "; ".join(f"did you mean {c[0]} for {a}?" for a, c in zip(unknown, close, strict=True) if c)
        raise ConfigError(f"{pipeline.path}: unknown arm(s) {unknown}{f' ({hints})' if hints else ''}; "
                          f"arms: {sorted(by_label.values())}")
    stages = [by_label.get(a, a) for a in arms]
    return list(dict.fromkeys(s for stage in stages for s in init_chain(pipeline, stage)))


def protocol_spec(pipeline: Pipeline) -> dict[str, Any]:
    """The validated ``protocol:`` section of a benchmark file."""
    spec = dict(pipeline.protocol or {})
    fractions, seeds = spec.get("fractions"), spec.get("seeds")
    if not fractions or not all(isinstance(f, int | float) and 0 < f <= 1 for f in fractions):
        raise ConfigError(f"{pipeline.path}: protocol.fractions must list label fractions in (0, 1], got {fractions}")
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{pipeline.path}: protocol.seeds must list integer seeds, got {seeds}")
    minutes = spec.get("stage_minutes") or {}
    if not isinstance(minutes, dict) or not all(
            isinstance(m, int | float) and not isinstance(m, bool) and m > 0 for m in minutes.values()):
        raise ConfigError(f"{pipeline.path}: protocol.stage_minutes must map stage names or kinds (shell-style "
                          f"patterns) to positive minutes, got {minutes}")
    return spec


def refuse_cell_sets(sets: Sequence[str]) -> None:
    """Refuse ``--set`` keys that ``mnm protocol`` sets itself in every cell (:data:`CELL_KEYS`)."""
    for item in sets:
        key = item.partition("=")[0].rpartition(".")[2]
        if key in CELL_KEYS:
            raise ConfigError(f"--set {item}: mnm protocol sets the {key} of each cell itself; use {CELL_KEYS[key]} "
                              "(one of the file's protocol: values)")


def check_selection(pipeline: Pipeline, spec: dict[str, Any], fractions: Sequence[float] | None,
                    seeds: Sequence[int] | None) -> None:
    """Refuse ``--fractions`` outside (0, 1] and ``--fractions``/``--seeds`` that are not the file's."""
    for fraction in fractions or ():
        if not 0 < fraction <= 1:
            raise ConfigError(f"--fractions {fraction:g}: a label fraction must be in (0, 1]")
    for option, chosen, allowed in (("--fractions", fractions, spec["fractions"]), ("--seeds", seeds, spec["seeds"])):
        unknown = [v for v in chosen or () if v not in allowed]
        if unknown:
            raise ConfigError(f"{option} {' '.join(f'{v:g}' for v in unknown)}: not in protocol.{option[2:]} of "
                              f"{pipeline.path} (allowed: {' '.join(f'{v:g}' for v in allowed)})")


def report_pairs(pipeline: Pipeline) -> list[tuple[str, str]]:
    """The validated ``report.pairs``: ``(arm, against)`` stage pairs; default every arm against the first."""
    stages = list(pipeline.report["arms"].values())
    pairs = pipeline.report.get("pairs")
    if pairs is None:
        return [(stage, stages[0]) for stage in stages[1:]]
    bad = [p for p in pairs if not (isinstance(p, list | tuple) and len(p) == 2 and set(p) <= set(stages))]
    if bad:
        raise ConfigError(f"{pipeline.path}: report.pairs must list [arm, against] pairs of arm stages "
                          f"({sorted(stages)}); wrong: {bad}")
    return [(arm, against) for arm, against in pairs]


def load_cell(file: str | Path, out: Path, sets: Sequence[str], fraction: float, seed: int,
              eval_split: str | None = None) -> Pipeline:
    """The benchmark pipeline of one cell, with its fraction and seed applied."""
    pipeline = load_benchmark(file, out / cell_name(fraction, seed), [*sets, f"fraction={fraction}"], eval_split)
    return reseed(pipeline, seed)
