"""``mnm protocol FILE``: a benchmark file run over label fractions × seeds, reported as mean ± std.

The benchmark file (see :mod:`mnm.experiments.benchmark`) gains a ``protocol:`` section::

    vars: {fraction: 1.0}             # the file uses ${fraction}, e.g. data.init_args.labeled_fraction
    protocol:
      fractions: [0.125, 1.0]
      seeds: [0, 1, 2]
      probe: true                     # kNN probe of every arm's pre-trained backbone
      budget: "about 6.5 h on 2 CPU cores"   # free text, copied into the report
      stage_minutes: {"frozen_*": 3, segment: 4, mix-match: 4.5}   # optional: minutes per stage run

Each cell (fraction ``f``, seed ``s``) is an ordinary benchmark run in ``<out>/f<f>-s<s>/``
(resumable; its own ``report.md``), with ``${fraction}`` = ``f`` and every seed of the run =
``s``: the stages' ``seed_everything`` and ``model.seed``, the data module's ``seed`` and the
labelled subset's ``split_seed``. The protocol report (``protocol.json``, ``protocol.md``,
``miou_vs_fraction.png``) aggregates the finished cells; the standard deviation is the sample
standard deviation over seeds (``ddof=1``).

Before the first cell starts, the command says how many cells and stage runs it has to do and how long
they take by ``stage_minutes`` (each stage takes the minutes of the first key, in file order, that its name or
kind matches as a shell-style pattern), and prints the ``budget``.

Arms are also compared seed by seed: ``report.pairs`` lists ``[arm, against]`` stage pairs (default:
every arm against the first), and the report gives the mean ± std of the paired differences of the
main metric, the 95 % confidence interval of the mean difference and the verdict it gives
(:func:`mnm.evaluation.paired.paired_interval`).
"""

from __future__ import annotations

import difflib
import json
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnm.evaluation.knn_probe import RepresentationProbe, score_backbone
from mnm.evaluation.paired import paired_interval
from mnm.experiments.benchmark import load_benchmark, run_benchmark
from mnm.experiments.report import CURVE_TITLES, init_chain, plot_mm_curves, pyplot, read_curves, tail_mean
from mnm.models.backbones import build_backbone
from mnm.runs.config import Pipeline, StageSpec
from mnm.runs.hashing import stage_hashes
from mnm.runs.rundir import CELL_RECORD, PROBE_CACHE, StageDir, read_manifest, read_stage_metrics
from mnm.runs.runner import PipelineRunner
from mnm.runs.stage_cli import load_stage
from mnm.runs.yaml_layers import ConfigError
from mnm.stages import stage_class
from mnm.utils.files import atomic_write_json, atomic_write_text
from mnm.utils.paths import shown_path
from mnm.utils.provenance import code_version, describe_code, describe_machine, machine
from mnm.utils.text import plural

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


# -- what a command is about to run ------------------------------------------------------------------------
def stage_minutes(spec: dict[str, Any], stage: StageSpec) -> float | None:
    """Minutes of one run of ``stage`` by ``protocol.stage_minutes``: the first key (in file order) that its name or
    kind matches as a shell-style pattern; ``None`` when none does."""
    keys = (spec.get("stage_minutes") or {}).items()
    return next((float(m) for key, m in keys if fnmatchcase(stage.name, key) or fnmatchcase(stage.kind, key)), None)


def stages_to_run(pipeline: Pipeline, arms: Sequence[str] | None) -> tuple[list[StageSpec], list[StageSpec]]:
    """``(finished, to_run)``: the stages of a cell the command runs (those of ``arms``, else all, less those a
    weights file stands for), split into those finished with their current config and the others."""
    scope = set(stages_of_arms(pipeline, arms)) if arms else {s.name for s in pipeline.stages}
    scope -= PipelineRunner(pipeline).stages_not_run()
    done = finished_stages(pipeline)
    runs = [s for s in pipeline.stages if s.name in scope]
    return [s for s in runs if s.name in done], [s for s in runs if s.name not in done]


def _duration_text(minutes: float) -> str:
    """``"40 min"``, ``"41.5 h"``."""
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def _time_lines(first: Pipeline, spec: dict[str, Any], todo: list[StageSpec]) -> list[str]:
    """How long the stage runs ``todo`` take by ``protocol.stage_minutes`` (naming the stages it has no time for),
    and the file's ``budget``."""
    timed = [(stage, stage_minutes(spec, stage)) for stage in todo]
    known = [minutes for _, minutes in timed if minutes is not None]
    unknown = sorted({stage.name for stage, minutes in timed if minutes is None})
    file = shown_path(first.path)
    if not known:
        lines = [f"estimated time: not known ({file} gives no protocol.stage_minutes for these stages)"]
    else:
        part = f" for {len(known)} of the {len(todo)} runs (no time there for {', '.join(unknown)})" if unknown else ""
        lines = [f"estimated time: about {_duration_text(sum(known))} by protocol.stage_minutes of {file}{part}"]
    return lines + ([f"the file's budget: {spec['budget']}"] if spec.get("budget") else [])


def grid_plan(first: Pipeline, spec: dict[str, Any], cells: dict[tuple[float, int], Pipeline],
              arms: Sequence[str] | None) -> str:
    """Lines that say what running ``cells`` means: cells x stages, how many stage runs are left, and how long they
    take by ``protocol.stage_minutes`` (and the file's ``budget``)."""
    fractions = sorted({f for f, _ in cells})
    seeds = sorted({s for _, s in cells})
    split = [stages_to_run(pipeline, arms) for pipeline in cells.values()]
    per_cell = len(split[0][0]) + len(split[0][1]) if split else 0
    done = sum(len(finished) for finished, _ in split)
    todo = [stage for _, to_run in split for stage in to_run]
    lines = [f"protocol {first.name}: {plural(len(cells), 'cell')} ({plural(len(fractions), 'fraction')} "
             f"{' '.join(f'{f:g}' for f in fractions)} x {plural(len(seeds), 'seed')} {' '.join(map(str, seeds))}) "
             f"x {plural(per_cell, 'stage')} = {plural(len(cells) * per_cell, 'stage run')}: {done} finished "
             f"earlier, {len(todo)} to run"]
    if todo:
        lines += [*_time_lines(first, spec, todo),
                  "--fractions, --seeds and --arms run a part (make: FRACTIONS=, SEEDS=, ARMS=); a rerun resumes"]
    return "".join(f"[mnm] {line}\n" for line in lines)


# -- probe ------------------------------------------------------------------------------------------------
def pretrained_stage(pipeline: Pipeline, arm_stage: str) -> str | None:
    """The stage an arm's fine-tuning starts from (``None`` for random init)."""
    return next(s.init_from for s in pipeline.stages if s.name == arm_stage)


def probe_cell(pipeline: Pipeline, arms: dict[str, str]) -> dict[str, dict[str, float]]:
    """kNN probe scores of the backbone each arm starts from, keyed by stage (``random`` = a seeded init).

    The patch sets come from the cell's own data (its labelled subset), cached in the cell's ``probe.json``.
    """
    cache = pipeline.out_dir / PROBE_CACHE
    scores: dict[str, dict[str, float]] = json.loads(cache.read_text()) if cache.is_file() else {}
    wanted = {pretrained_stage(pipeline, stage) or "random" for stage in arms.values()}
    missing = sorted(w for w in wanted if w not in scores)
    if not missing:
        return scores
    model, datamodule = load_stage(pipeline.out_dir, next(iter(arms.values())), weights=False)
    probe = RepresentationProbe.from_datamodule(datamodule)
    for stage in missing:
        if stage == "random":
            torch.manual_seed(pipeline.seed)
            backbone = build_backbone(model.hparams.backbone, in_chans=model.hparams.in_chans)
        else:
            backbone = load_stage(pipeline.out_dir, stage)[0].backbone
        scores[stage] = score_backbone(probe, backbone)
    atomic_write_json(cache, scores, sort_keys=True)
    return scores


# -- aggregation --------------------------------------------------------------------------------------------
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
    """Mean ± std over seeds of every arm's mIoU (and its probe) per fraction, from the finished arms, and the
    paired differences of :func:`report_pairs`."""
    first = next(iter(cells.values()))
    labels = {stage: label for label, stage in first.report["arms"].items()}
    pairs = [(labels[arm], labels[against]) for arm, against in report_pairs(first)]
    table: dict[str, dict[str, list[dict[str, float]]]] = {}
    per_cell: dict[str, Any] = {}
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
            row |= {f"probe_{k}": v for k, v in probes.get(pretrained_stage(pipeline, stage) or "random", {}).items()}
            cell["arms"][label] = row
            cell["overrides"][label] = arm_overrides(records, chain)
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
    return {"summary": summary, "paired": paired, "per_class": per_class, "cells": per_cell, "wall_time_s": wall_time,
            "metrics": metrics}


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


def curves_markdown(summary: dict[str, Any], fraction: str) -> list[str]:
    """The final values of the M&M curves at ``fraction`` and their figure (nothing when none finished)."""
    rows = summary.get(fraction) or {}
    if not rows:
        return []
    keys = [k for k in next(iter(rows.values())) if k != "n"]
    lines = [f"Training curves of the M&M stages (mean ± std over seeds of the last tenth of the steps; figure: mean "
             f"and ± std band): `mm_curves_f{fraction}.png`.\n",
             "| M&M stage | " + " | ".join(CURVE_TITLES.get(k, k) for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(format_mean_std(row[k], scale=100.0 if k.endswith("fraction") else 1.0)
                                                  for k in keys) + " |")
    return [*lines, "", f"![M&M training curves at {fraction}](mm_curves_f{fraction}.png)\n"]


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


def per_class_markdown(rows: Sequence[dict[str, Any]], arm: str, against: str) -> list[str]:
    """Lines of the per-class IoU table of the first pair at one fraction (empty without rows)."""
    if not rows:
        return []
    lines = [f"Per class, IoU (%) of *{arm}* and of *{against}* (means over seeds), and their paired difference "
             "with its 95 % confidence interval:\n",
             "| class | arm | against | difference | 95 % CI |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        ci = "–" if r["ci_low"] is None else f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
        lines.append(f"| {r['class']} | {100 * r['arm_mean']:.1f} | {100 * r['against_mean']:.1f} | "
                     f"{100 * r['mean']:+.1f} (n={r['n']}) | {ci} |")
    return [*lines, ""]


def format_mean_std(stats: dict[str, Any] | None, scale: float = 100.0) -> str:
    """``mean ± std (n=N)`` of :func:`mean_std` output, scaled (× 100 for percentages); "–" when empty."""
    if not stats or stats["mean"] is None or math.isnan(stats["mean"]):
        return "–"
    std = "" if stats["std"] is None or math.isnan(stats["std"]) else f" ± {scale * stats['std']:.2f}"
    return f"{scale * stats['mean']:.2f}{std} (n={stats['n']})"


def _main_metric(report: dict[str, Any]) -> tuple[str, str]:
    """``(key, label)`` of the arms' main metric (mIoU for reports written before ``metrics``)."""
    return next(iter((report.get("metrics") or {"miou": "mIoU"}).items()))


def _by_cell(records: dict[str, dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> str:
    """``describe(record)`` of the cells' records, once when all agree, else each text with its cells."""
    groups: dict[str, list[str]] = {}
    for cell, record in records.items():
        groups.setdefault(describe(record), []).append(cell)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{text} (cells {', '.join(cells)})" for text, cells in groups.items())


def provenance_markdown(prov: dict[str, Any]) -> str:
    """The lines under the title: the cells' ``--set`` overrides (first, so a smoke run shows as one), code and
    machine."""
    records = prov.get("cells") or {}
    if not records:
        return "What ran the cells (overrides, code, machine) is not recorded: they ran before mnm recorded it.\n"
    sets = _by_cell(records, lambda r: ", ".join(f"`{s}`" for s in r.get("sets", [])) or "none")
    changed = any(r.get("sets") for r in records.values())
    head = (f"**Overrides (`--set`): {sets}.** These numbers come from the file changed by them, not from its "
            "own settings and budget.\n" if changed else "Overrides (`--set`): none; the file's own settings.\n")
    differ = [cell for cell, stages in (prov.get("stages") or {}).items()
              if len({tuple(r.get("sets", [])) for r in stages.values()}) > 1]
    if differ:
        head += (f"**The stages of cells {', '.join(differ)} ran with different overrides**: each arm's are in the "
                 "tables' overrides column, and no seed is paired across arms that differ in them.\n")
    return (head + f"\nCode: {_by_cell(records, lambda r: describe_code(r.get('code') or {}))}. "
            f"Machine: {_by_cell(records, lambda r: describe_machine(r.get('machine') or {}))}.\n")


def arm_overrides_by_label(per_cell: dict[str, Any], fraction: str) -> dict[str, list[str] | None]:
    """Each arm's overrides at ``fraction``: the union over its seeds (``None`` when a seed did not record them)."""
    found: dict[str, list[str] | None] = {}
    for cell in per_cell.values():
        if f"{cell['fraction']:g}" != fraction:
            continue
        for label, sets in (cell.get("overrides") or {}).items():
            if sets is None or found.get(label, []) is None:
                found[label] = None
            else:
                found[label] = sorted({*found.get(label, []), *sets})
    return found


def protocol_markdown(report: dict[str, Any]) -> str:
    """``protocol.md``: per fraction, each arm's metrics and probe accuracy (mean ± std over seeds)."""
    key, name = _main_metric(report)
    parts = [f"# Protocol `{report['benchmark']}`\n", provenance_markdown(report.get("provenance") or {}),
             f"File `{report['file']}`; fractions {report['fractions']}, seeds {report['seeds']}, evaluated on "
             f"**{report['eval_split']}**. Budget: {report.get('budget') or 'not stated'}. Wall time of the "
             f"finished cells: {report['wall_time_s'] / 3600:.2f} h (sum of stage times).\n",
             "mean ± sample std over seeds (n = seeds finished)."
             + (" Probe: kNN accuracy of the backbone each arm starts from, on patches of the cell's labelled train "
                "images vs val patches (`mnm.evaluation.knn_probe`)." if report.get("probe", True) else "") + "\n"]
    probe_head, probe_rule = (" probe kNN acc. (%) | probe eff. rank |", "---:|---:|") if report.get("probe", True) else ("", "")
    others = {k: label for k, label in (report.get("metrics") or {}).items() if k != key}
    for fraction in (f"{f:g}" for f in report["fractions"]):
        rows = {label: by_fraction[fraction] for label, by_fraction in report["summary"].items()
                if fraction in by_fraction}
        if not rows:
            parts.append(f"## Label fraction {fraction}\n\nNo arm has finished yet.\n")
            continue
        extra = "".join(f" {label} (%) |" for label in others.values())
        overrides = arm_overrides_by_label(report.get("cells", {}), fraction)
        shown = len({tuple(v) if v is not None else None for v in overrides.values()}) > 1
        parts += [f"## Label fraction {fraction}\n",
                  f"| arm | {name} (%) |{extra}{probe_head}" + (" overrides |" if shown else ""),
                  "|---|---:|" + "---:|" * len(others) + probe_rule + ("---|" if shown else "")]
        for label, s in rows.items():
            values = "".join(f" {format_mean_std(s.get(k))} |" for k in others)
            probe = (f" {format_mean_std(s.get('probe_knn_acc'))} | "
                     f"{format_mean_std(s.get('probe_effective_rank'), scale=1.0)} |") if probe_head else ""
            column = f" {_overrides_text(overrides.get(label))} |" if shown else ""
            parts.append(f"| {label} | {format_mean_std(s[key])} |{values}{probe}{column}")
        parts.append("")
        parts += paired_markdown(report.get("paired", {}).get(fraction, []), name)
        per_class = report.get("per_class") or {}
        parts += per_class_markdown(per_class.get("by_fraction", {}).get(fraction, []), per_class.get("arm"),
                                    per_class.get("against"))
        parts += curves_markdown(report.get("curves") or {}, fraction)
    if report["summary"]:
        parts.append(f"![{name} against label fraction](miou_vs_fraction.png)\n")
    return "\n".join(parts)


def paired_markdown(rows: Sequence[dict[str, Any]], name: str) -> list[str]:
    """Lines of the paired-difference table of one fraction (empty without rows)."""
    if not rows:
        return []
    lines = [f"Paired by seed, {name} of the arm minus {name} of the arm it is compared against (points): "
             "mean ± std, the 95 % confidence interval of the mean (Student's t over seeds); the verdict follows "
             "the interval (above 0: higher, below: lower, else no difference). *Detectable*: the true difference "
             "a paired t-test finds with 80 % power at this spread (`mnm.evaluation.paired`); smaller gains could go unseen.\n",
             "| arm | against | difference | 95 % CI | detectable | per seed | verdict |",
             "|---|---|---:|---:|---:|---|---|"]
    notes = []
    for r in rows:
        per_seed = ", ".join(f"s{s}: {100 * v:+.2f}" for s, v in zip(r["seeds"], r["values"], strict=True))
        std = "" if r.get("std") is None or math.isnan(r["std"]) else f" ± {100 * r['std']:.2f}"
        ci = "–" if r.get("ci_low") is None else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
        detectable = "–" if r.get("detectable") is None else f"±{100 * r['detectable']:.2f}"
        mean = f"{100 * r['mean']:+.2f}{std}" if r["n"] else "–"
        lines.append(f"| {r['arm']} | {r['against']} | {mean} (n={r['n']}) | {ci} | "
                     f"{detectable} | {per_seed} | {r['verdict']} |")
        for gap in r.get("left_out", []):
            notes.append(f"- Not paired: {r['arm']} − {r['against']}, seed {gap['seed']}: the arms ran with different "
                         f"overrides ({_overrides_text(gap['arm'])} against {_overrides_text(gap['against'])}).")
    return [*lines, "", *([*notes, ""] if notes else [])]


def _overrides_text(sets: Sequence[str] | None) -> str:
    """Markdown of one arm's ``--set`` overrides."""
    if sets is None:
        return "not recorded"
    return ", ".join(f"`{item}`" for item in sets) or "none"


def plot_miou_vs_fraction(report: dict[str, Any], out: Path) -> Path:
    """Save :func:`miou_figure` to ``out``."""
    fig = miou_figure(report)
    fig.savefig(out, dpi=120)
    pyplot().close(fig)
    return out


def miou_figure(report: dict[str, Any]) -> Any:
    """Each arm's mean main metric (mIoU, top-1, ...) against the label fraction (log scale), with ± sample std bars
    over seeds and each point's number of seeds (``n``)."""
    key, name = _main_metric(report)
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    for label, by_fraction in report["summary"].items():
        fractions = sorted(by_fraction, key=float)
        means = [100 * by_fraction[f][key]["mean"] for f in fractions]
        stds = [100 * np.nan_to_num(by_fraction[f][key]["std"]) for f in fractions]
        line = ax.errorbar([float(f) for f in fractions], means, yerr=stds, marker="o", capsize=3, label=label)
        for f, mean in zip(fractions, means, strict=True):
            ax.annotate(f"n={by_fraction[f][key]['n']}", (float(f), mean), textcoords="offset points",
                        xytext=(4, 4), fontsize=6, color=line.lines[0].get_color())
    ax.set_xscale("log", base=2)
    ax.set_title("mean ± sample std over seeds (n = seeds)", fontsize=8)
    ax.set_xlabel("labelled fraction of the train split")
    ax.set_ylabel(f"{name} (%) on {report['eval_split']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run_protocol(file: str | Path, out: str | Path | None = None, sets: Sequence[str] = (),
                 eval_split: str | None = None, fractions: Sequence[float] | None = None,
                 seeds: Sequence[int] | None = None, arms: Sequence[str] | None = None,
                 report_only: bool = False, fallback_checkpoint: bool = False, plan: bool = True) -> dict[str, Any]:
    """Run (or resume, or skip) the cells in order, fraction by fraction, then write the protocol report.

    ``fractions``/``seeds`` (of the file's) and ``arms`` (arm labels or their stage names) restrict what is run
    now; the report covers every finished arm of every cell on disk, whatever the command line (each cell's
    each stage's manifest entry says what ran it). A cell's own ``report.md`` is written once all its arms have finished.
    ``report_only`` runs nothing and refuses to replace a report when no arm has finished.
    ``fallback_checkpoint``: a stage whose ``last.ckpt`` is corrupt resumes from its newest readable checkpoint.
    ``plan``: say what is to run and how long it takes (:func:`grid_plan`) before the first cell starts.
    """
    refuse_cell_sets(sets)
    first = load_benchmark(file, out, [*sets, "fraction=1.0"], eval_split)
    spec = protocol_spec(first)
    check_selection(first, spec, fractions, seeds)
    report_pairs(first)
    root = Path(out) if out is not None else first.out_dir
    if report_only and not root.is_dir():
        raise ConfigError(f"--report-only: {root} does not exist; nothing to report (--out names the run folder)")
    cells = {(f, s): load_cell(file, root, sets, f, s, eval_split) for f in spec["fractions"] for s in spec["seeds"]}
    selected = {} if report_only else {(f, s): pipeline for (f, s), pipeline in cells.items()
                                       if (not fractions or f in fractions) and (not seeds or s in seeds)}
    for pipeline in selected.values():  # every cell checked before the first one writes anything
        PipelineRunner(pipeline).check(stages_of_arms(pipeline, arms) if arms else None)
    if plan and selected:
        print(grid_plan(first, spec, selected, arms), end="", flush=True)
    record = cell_record(first.path, sets, eval_split)
    for (fraction, seed), pipeline in selected.items():
        print(f"[mnm] protocol cell {cell_name(fraction, seed)}")
        if arms:  # a runner made now reads the manifest as other commands have left it
            PipelineRunner(pipeline, fallback_checkpoint=fallback_checkpoint, ran_with=record).run(
                stages_of_arms(pipeline, arms))
        if not arms or set(pipeline.report["arms"].values()) <= set(finished_stages(pipeline)):
            run_benchmark(pipeline, fallback_checkpoint=fallback_checkpoint, ran_with=record)
    report = {"benchmark": first.name, "file": shown_path(first.path), "fractions": spec["fractions"],
              "seeds": spec["seeds"], "budget": spec.get("budget"), "eval_split": eval_split or "val",
              "probe": spec.get("probe", True)}
    report |= aggregate(cells, spec)
    logs, columns = curve_logs(cells)
    report["curves"] = curve_summary(logs, columns)
    report["provenance"] = provenance(cells)
    ran_with = {tuple(record.get("sets", [])) for record in report["provenance"]["cells"].values()}
    if len(ran_with) > 1:
        print("[mnm] warning: the cells ran with different --set overrides (protocol.md lists them by cell)")
    if report_only and not report["summary"]:
        raise ConfigError(f"--report-only: no arm has finished in the cells of {root}; the report there is left as it "
                          "is")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "protocol.json", report)
    if report["summary"]:
        plot_miou_vs_fraction(report, root / "miou_vs_fraction.png")
    for fraction, series in logs.items():
        plot_mm_curves(series, columns, root / f"mm_curves_f{fraction}.png")
    atomic_write_text(root / "protocol.md", protocol_markdown(report))
    print(f"[mnm] protocol report: {root / 'protocol.md'} ({time.strftime('%H:%M:%S')})")
    return report
