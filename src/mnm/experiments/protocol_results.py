"""The results of a protocol's cells: each arm's metrics and probe by cell, mean ± std over seeds, paired differences and per-class differences, what ran each stage, and the M&M curves over seeds; plain data for protocol.md."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnm.evaluation.knn_probe import RepresentationProbe, score_backbone
from mnm.evaluation.paired import paired_interval
from mnm.experiments.collect import RANDOM_INIT, init_chain, read_curves, tail_mean
from mnm.experiments.protocol_cells import cell_name, report_pairs
from mnm.models.backbones import build_backbone
from mnm.runs.config import Pipeline
from mnm.runs.hashing import stage_hashes
from mnm.runs.rundir import CELL_RECORD, PROBE_CACHE, StageDir, read_manifest, read_stage_metrics
from mnm.runs.stage_cli import load_stage
from mnm.stages import stage_class
from mnm.utils.files import atomic_write_json
from mnm.utils.paths import shown_path
from mnm.utils.provenance import code_version, machine


def starting_backbone(pipeline: Pipeline, arm_stage: str) -> str:
    """The stage an arm's fine-tuning starts from (:data:`RANDOM_INIT` for a seeded init)."""
    return next(s.init_from for s in pipeline.stages if s.name == arm_stage) or RANDOM_INIT


def probe_cell(pipeline: Pipeline, arms: dict[str, str]) -> dict[str, dict[str, float]]:
    """kNN probe scores of the backbone each arm starts from, keyed by stage (``random`` = a seeded init).

    The patch sets come from the cell's own data (its labelled subset), cached in the cell's ``probe.json``.
    """
    cache = pipeline.out_dir / PROBE_CACHE
    scores: dict[str, dict[str, float]] = json.loads(cache.read_text()) if cache.is_file() else {}
    wanted = {starting_backbone(pipeline, stage) for stage in arms.values()}
    missing = sorted(w for w in wanted if w not in scores)
    if not missing:
        return scores
    kinds = {spec.name: spec.kind for spec in pipeline.stages}
    first = next(iter(arms.values()))
    model, datamodule = load_stage(pipeline.out_dir, first, weights=False, kind=kinds[first])
    probe = RepresentationProbe.from_datamodule(datamodule)
    for stage in missing:
        if stage == RANDOM_INIT:
            torch.manual_seed(pipeline.seed)
            backbone = build_backbone(model.hparams.backbone, in_chans=model.hparams.in_chans)
        else:
            backbone = load_stage(pipeline.out_dir, stage, kind=kinds[stage])[0].backbone
        scores[stage] = score_backbone(probe, backbone)
    atomic_write_json(cache, scores, sort_keys=True)
    return scores


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean, sample std (NaN for one value) and count of a list of scores."""
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else math.nan
    return {"mean": float(arr.mean()), "std": std, "n": len(arr), "values": [float(v) for v in arr]}


def finished_stages(pipeline: Pipeline, current: bool = True) -> dict[str, dict[str, Any]]:
    """Manifest entries of the stages that finished: with the configuration they have now (``current``), or as
    they are on disk, whatever the command line (``current=False``: what the report shows)."""
    entries = read_manifest(pipeline.out_dir).get("stages", {})
    hashes = stage_hashes(pipeline.stages)
    return {
        name: entry for name, entry in entries.items()
        if entry.get("status") == "finished" and (not current or entry.get("config_hash") == hashes.get(name))
    }


def cell_record(file: str | Path, sets: Sequence[str], eval_split: str | None) -> dict[str, Any]:
    """What runs a cell now: the file, the ``--set`` overrides, the evaluation split, the code and the machine."""
    return {"file": shown_path(file), "sets": list(sets), "eval_split": eval_split or "val", "code": code_version(),
            "machine": machine(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def stage_records(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """What ran each finished stage of a cell (:func:`cell_record`, from its manifest entry's ``ran_with``; for a
    stage that ran before that was recorded, the cell's :data:`CELL_RECORD`, when there is one)."""
    old = pipeline.out_dir / CELL_RECORD
    fallback = json.loads(old.read_text()) if old.is_file() else None
    records = {name: entry.get("ran_with") or fallback for name, entry in finished_stages(pipeline, current=False).items()}
    return {name: record for name, record in records.items() if record}


def arm_overrides(records: dict[str, dict[str, Any]], chain: Sequence[str]) -> list[str] | None:
    """The ``--set`` overrides the stages of an arm's chain ran with (sorted, each once); ``None`` if unknown."""
    if not all(stage in records for stage in chain):
        return None
    return sorted({item for stage in chain for item in records[stage].get("sets", [])})


def provenance(cells: dict[tuple[float, int], Pipeline]) -> dict[str, Any]:
    """What ran every cell (by cell name: its newest stage's record, with the overrides of all its stages) and
    each of its stages, and what writes this report."""
    by_cell, by_stage = {}, {}
    for (fraction, seed), pipeline in cells.items():
        records = stage_records(pipeline)
        if not records:
            continue
        newest = max(records.values(), key=lambda r: r.get("time", ""))
        name = cell_name(fraction, seed)
        by_cell[name] = {**newest, "sets": sorted({i for r in records.values() for i in r.get("sets", [])})}
        by_stage[name] = records
    return {"cells": by_cell, "stages": by_stage, "report": {"code": code_version(), "machine": machine()}}


def aggregate(cells: dict[tuple[float, int], Pipeline], spec: dict[str, Any]) -> dict[str, Any]:
    """Mean ± std over seeds of every arm's mIoU (and its probe) per fraction, from the finished arms, the
    paired differences of :func:`report_pairs`, and (``paired_probe``) the paired differences of the probe's kNN
    accuracy between the backbones the two arms of a pair start from, where those differ (stages by name)."""
    first = next(iter(cells.values()))
    labels = {stage: label for label, stage in first.report["arms"].items()}
    pairs = [(labels[arm], labels[against]) for arm, against in report_pairs(first)]
    table: dict[str, dict[str, list[dict[str, float]]]] = {}
    per_cell: dict[str, Any] = {}
    per_backbone: dict[str, Any] = {}
    metrics: dict[str, str] = {}
    wall_time = 0.0
    for (fraction, seed), pipeline in cells.items():
        done = finished_stages(pipeline, current=False)
        wall_time += sum(float(entry.get("wall_time_s", 0.0)) for entry in done.values())
        arms = {label: stage for label, stage in pipeline.report["arms"].items() if stage in done}
        if not arms:
            continue
        probes = probe_cell(pipeline, arms) if spec.get("probe", True) else {}
        records = stage_records(pipeline)
        cell = per_cell.setdefault(cell_name(fraction, seed), {"fraction": fraction, "seed": seed, "arms": {},
                                                                "overrides": {}})
        kinds = {s.name: s.kind for s in pipeline.stages}
        for label, stage in arms.items():
            evaluation = read_stage_metrics(pipeline.out_dir, stage)["eval"]
            shown = stage_class(kinds[stage]).evaluation_metrics
            metrics |= shown
            chain = init_chain(pipeline, stage)
            row = {key: float(evaluation.get(key, math.nan)) for key in shown}  # NaN: a run older than the metric
            row["total_time_s"] = sum(float(done[s].get("wall_time_s", 0.0)) for s in chain if s in done)
            start = starting_backbone(pipeline, stage)
            row |= {f"probe_{k}": v for k, v in probes.get(start, {}).items()}
            cell["arms"][label] = row
            cell["overrides"][label] = arm_overrides(records, chain)
            if start in probes:
                backbones = per_backbone.setdefault(cell_name(fraction, seed), {
                    "fraction": fraction, "seed": seed, "arms": {}, "overrides": {}})
                backbones["arms"][start] = {"knn_acc": probes[start]["knn_acc"]}
                backbones["overrides"][start] = (None if start == RANDOM_INIT  # a seeded init: nothing ran it
                                                 else arm_overrides(records, init_chain(pipeline, start)))
            if "per_class_iou" in evaluation:
                per_class = zip(evaluation["class_names"], evaluation["per_class_iou"], strict=True)
                cell.setdefault("per_class", {})[label] = {name: float(v) for name, v in per_class}
            table.setdefault(label, {}).setdefault(f"{fraction:g}", []).append(row)
    summary = {
        label: {
            fraction: {key: mean_std([r[key] for r in rows]) for key in rows[0]}
            for fraction, rows in by_fraction.items()
        }
        for label, by_fraction in table.items()
    }
    paired = paired_differences(per_cell, pairs, next(iter(metrics), "miou"))
    per_class = per_class_differences(per_cell, pairs[0]) if pairs else {}
    starts = {stage: starting_backbone(first, stage) for stage in first.report["arms"].values()}
    backbone_pairs = list(dict.fromkeys((starts[arm], starts[against]) for arm, against in report_pairs(first)
                                        if starts[arm] != starts[against]))
    return {"summary": summary, "paired": paired, "per_class": per_class, "cells": per_cell, "wall_time_s": wall_time,
            "metrics": metrics, "paired_probe": paired_differences(per_backbone, backbone_pairs, "knn_acc")}


def curve_logs(cells: dict[tuple[float, int], Pipeline]) -> tuple[dict[str, dict[str, list[Path]]], dict[str, str]]:
    """Per fraction, the CSV logs of each ``report.curves`` stage over the cells where it finished, and the curves
    (``key -> CSV column``) those stages log."""
    logs: dict[str, dict[str, list[Path]]] = {}
    columns: dict[str, str] = {}
    for (fraction, _), pipeline in cells.items():
        kinds = {spec.name: spec.kind for spec in pipeline.stages}
        done = finished_stages(pipeline, current=False)
        for label, stage in (pipeline.report.get("curves") or {}).items():
            log = StageDir.of(pipeline.out_dir, stage).csv_log
            if stage in done and log.is_file():
                logs.setdefault(f"{fraction:g}", {}).setdefault(label, []).append(log)
                columns = columns or stage_class(kinds[stage]).curve_metrics
    return logs, columns


def curve_summary(logs: dict[str, dict[str, list[Path]]], columns: dict[str, str]) -> dict[str, Any]:
    """Per fraction and curve label: the number of seeds and, per curve, mean ± std over seeds of its final value
    (the mean of the last tenth of the steps)."""
    return {fraction: {label: {"n": len(paths), **{key: mean_std([tail_mean(read_curves(p, columns)[key])
                                                                   for p in paths]) for key in columns}}
                       for label, paths in by_label.items()}
            for fraction, by_label in logs.items()}


def paired_differences(per_cell: dict[str, Any], pairs: Sequence[tuple[str, str]],
                       key: str) -> dict[str, list[dict[str, Any]]]:
    """Per fraction, ``arm − against`` of ``key`` over the seeds where both finished (arms by label).

    A seed whose two arms ran with different ``--set`` overrides (another budget, say) is not paired: it is
    listed in the row's ``left_out`` with both override lists instead.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    fractions = sorted({cell["fraction"] for cell in per_cell.values()})
    for fraction in fractions:
        cells = sorted((c for c in per_cell.values() if c["fraction"] == fraction), key=lambda c: c["seed"])
        rows = []
        for arm, against in pairs:
            both = [c for c in cells if arm in c["arms"] and against in c["arms"]]
            if not both:
                continue
            overrides = [(c.get("overrides", {}).get(arm), c.get("overrides", {}).get(against)) for c in both]
            left_out = [{"seed": c["seed"], "arm": x, "against": y}
                        for c, (x, y) in zip(both, overrides, strict=True) if None not in (x, y) and x != y]
            paired = [c for c in both if c["seed"] not in {r["seed"] for r in left_out}]
            differences = [c["arms"][arm][key] - c["arms"][against][key] for c in paired]
            stats = paired_interval(differences) if differences else {"n": 0, "values": [], "verdict": "not paired"}
            rows.append({"arm": arm, "against": against, "seeds": [c["seed"] for c in paired], **stats,
                         **({"left_out": left_out} if left_out else {})})
        if rows:
            out[f"{fraction:g}"] = rows
    return out


def per_class_differences(per_cell: dict[str, Any], pair: tuple[str, str]) -> dict[str, Any]:
    """``arm``, ``against`` and, per fraction (``by_fraction``) and class, the IoU of the arm and of the arm it is
    compared against (means over the seeds where both finished and the class was scored) and their paired
    difference (:func:`paired_interval`)."""
    arm, against = pair
    out: dict[str, list[dict[str, Any]]] = {}
    for fraction in sorted({cell["fraction"] for cell in per_cell.values()}):
        both = [c["per_class"] for c in per_cell.values() if c["fraction"] == fraction
                and arm in c.get("per_class", {}) and against in c.get("per_class", {})]
        rows = []
        for name in both[0][arm] if both else []:
            scored = [(c[arm][name], c[against][name]) for c in both
                      if math.isfinite(c[arm][name]) and math.isfinite(c[against][name])]
            if scored:
                a, b = zip(*scored, strict=True)
                rows.append({"class": name, "arm_mean": float(np.mean(a)), "against_mean": float(np.mean(b)),
                             **paired_interval([x - y for x, y in scored])})
        if rows:
            out[f"{fraction:g}"] = rows
    return {"arm": arm, "against": against, "by_fraction": out}
