"""What a benchmark report shows, read from a finished run folder once: the manifest, each stage's metrics and CSV log, as plain data (``results.json``'s content); and the training curves of one stage or of its seeds."""

from __future__ import annotations

import copy
import importlib.metadata
import math
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnm.runs.config import Pipeline, StageSpec
from mnm.runs.hashing import config_hash, stage_hashes
from mnm.runs.rundir import StageDir, read_csv_rows, read_manifest, read_stage_metrics
from mnm.runs.yaml_layers import ConfigError
from mnm.stages import stage_class

VERSIONED = ("torch", "torchvision", "lightning", "numpy", "scikit-learn", "matplotlib", "mnm")


def check_report_spec(pipeline: Pipeline) -> None:
    """Raise :class:`ConfigError` unless ``report:`` names stages of the right kinds."""
    classes = {s.name: stage_class(s.kind) for s in pipeline.stages}
    spec = pipeline.report

    def need(stage: Any, has: Callable[[type], bool], what: str, where: str) -> None:
        if stage not in classes or not has(classes[stage]):
            raise ConfigError(f"{pipeline.path}: report.{where} = {stage!r} is not {what} of this file")

    evaluated, segment = (lambda c: c.evaluation_split is not None), "a segment stage (one that is evaluated)"
    if not spec.get("arms"):
        raise ConfigError(f"{pipeline.path}: report.arms must map arm names to segment stages")
    for label, stage in spec["arms"].items():
        need(stage, evaluated, segment, f"arms[{label!r}]")
    for label, stage in (spec.get("curves") or {}).items():
        need(stage, lambda c: bool(c.curve_metrics), "an M&M stage (one with training curves)", f"curves[{label!r}]")
    tsne = spec.get("tsne")
    if tsne:
        need(tsne.get("after"), lambda c: callable(getattr(c, "mix", None)), "an M&M stage (one that mixes patches)",
             "tsne.after")
        if tsne.get("before") is not None and tsne["before"] not in classes:
            raise ConfigError(f"{pipeline.path}: report.tsne.before = {tsne['before']!r} is not a stage")


#: the name of a seeded random initialisation wherever a stage name of the backbone an arm starts from is expected
RANDOM_INIT = "random"


def init_chain(pipeline: Pipeline, stage: str) -> list[str]:
    """The stage and every stage it was initialised from, earliest first."""
    parents = {s.name: s.init_from for s in pipeline.stages}
    chain = [stage]
    while parents.get(chain[-1]):
        chain.append(parents[chain[-1]])
    return chain[::-1]


def portable_hashes(pipeline: Pipeline) -> dict[str, str]:
    """Per stage, a hash of its configuration and its init chain's, without the data root or output paths.

    Equal hashes mean the same experiment, wherever the data and the run directory live.
    """

    def without_paths(spec: StageSpec) -> dict[str, Any]:
        cfg = copy.deepcopy(spec.config)
        cfg.get("data", {}).get("init_args", {}).pop("root", None)
        return cfg

    return stage_hashes(pipeline.stages, without_paths)


def read_curves(csv_path: Path, columns: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``step`` and the curves ``key -> CSV column`` (NaN where a row lacks them) of a stage's CSV log.

    A column logged per step and per epoch is read from its ``_step`` variant.
    """
    rows = read_csv_rows(csv_path)
    by_step: dict[int, dict[str, float]] = {}
    for row in rows:
        values = {}
        for key, column in columns.items():
            text = row.get(f"{column}_step") or row.get(column) or ""
            if text:
                values[key] = float(text)
        if values:  # a resumed run may log a step twice: keep the last
            by_step.setdefault(int(row["step"]), {}).update(values)
    steps = sorted(by_step)
    out = {"step": np.array(steps, dtype=float)}
    for key in columns:
        out[key] = np.array([by_step[s].get(key, math.nan) for s in steps], dtype=float)
    return out


def read_curve_band(csv_paths: Sequence[Path], columns: Mapping[str, str]) -> dict[str, Any]:
    """The curves of several runs of one stage (seeds): ``step`` (the steps every run logged), each key's mean
    and ``<key>_std`` (sample std; 0 for one run) over the runs, and ``n``, the number of runs."""
    runs = [read_curves(Path(path), columns) for path in csv_paths]
    steps = sorted(set.intersection(*(set(r["step"].tolist()) for r in runs))) if runs else []
    out: dict[str, Any] = {"step": np.array(steps, dtype=float), "n": len(runs)}
    for key in columns:
        stacked = np.stack([r[key][np.searchsorted(r["step"], steps)] for r in runs]) if steps else np.empty((0, 0))
        out[key] = stacked.mean(axis=0) if steps else np.array([])
        out[f"{key}_std"] = stacked.std(axis=0, ddof=1) if len(runs) > 1 and steps else np.zeros(len(steps))
    return out


def tail_mean(values: np.ndarray, share: float = 0.1) -> float:
    """The mean of the last ``share`` of a curve's values (NaNs dropped; NaN when none is left)."""
    values = values[~np.isnan(values)]
    return float(values[-max(1, int(len(values) * share)) :].mean()) if len(values) else math.nan


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def collect_results(run_dir: Path, pipeline: Pipeline) -> dict[str, Any]:
    """Everything the report shows, read from the run directory once (the manifest, each stage's metrics and the
    curve stages' CSV logs; no figures): plain data that the tables and figures take."""
    entries = read_manifest(run_dir).get("stages", {})
    portable = portable_hashes(pipeline)
    stages, stage_metrics = {}, {}
    for spec in pipeline.stages:
        metrics = stage_metrics[spec.name] = read_stage_metrics(run_dir, spec.name)
        stages[spec.name] = {
            "kind": spec.kind,
            "init_from": spec.init_from,
            "config_hash": portable[spec.name],
            "run_hash": entries.get(spec.name, {}).get("config_hash"),
            "wall_time_s": float(metrics["wall_time_s"]),
            "steps": int(metrics.get("steps", 0)),
        }
    arms, metrics = {}, {}
    for label, stage in pipeline.report["arms"].items():
        ev = stage_metrics[stage]["eval"]
        shown = stage_class(stages[stage]["kind"]).evaluation_metrics
        metrics |= shown
        chain = init_chain(pipeline, stage)
        times = {s: stages[s]["wall_time_s"] for s in chain}
        arms[label] = {"stage": stage, "chain": chain, "split": ev["split"], **{k: float(ev[k]) for k in shown}}
        if "per_class_iou" in ev:
            arms[label] |= {"per_class_iou": [float(v) for v in ev["per_class_iou"]],
                            "class_names": list(ev["class_names"])}
        arms[label] |= {"stage_times": times, "total_time_s": sum(times.values())}
    curves = {}
    for label, stage in (pipeline.report.get("curves") or {}).items():
        columns = stage_class(stages[stage]["kind"]).curve_metrics
        c = read_curves(StageDir.of(run_dir, stage).csv_log, columns)
        curves[label] = {"stage": stage, "steps": stages[stage]["steps"]}
        curves[label] |= {f"final_{key}": tail_mean(c[key]) for key in columns}
    first = next(iter(arms.values()))
    data_cfg = StageDir.of(run_dir, first["stage"]).read_config().get("data", {})
    splits = sorted({a["split"] for a in arms.values()})
    return {
        "benchmark": pipeline.name,
        "file": str(pipeline.path),
        "seed": pipeline.seed,
        "eval_split": splits[0] if len(splits) == 1 else splits,
        "dataset": {"class_path": data_cfg.get("class_path"), "init_args": data_cfg.get("init_args", {})},
        "class_names": first.get("class_names", []),
        "metrics": metrics,
        "versions": _versions(),
        "config_hashes": portable,
        "benchmark_hash": config_hash({"stages": portable, "report": pipeline.report}),
        "stages": stages,
        "arms": arms,
        "curves": curves,
    }
