"""``mnm compare RUN_DIR [RUN_DIR ...] --out FILE.png``: M&M curves and final mIoU of several runs, offline.

The local stand-in for the W&B "graph vs random triplets" dashboard: one PNG with
the loss and active-triplet curves of every M&M stage found in the run
directories and a bar panel of each segment stage's final mIoU, and a Markdown table of each segment stage's mIoU (printed and
written next to the PNG as ``FILE.md``). A protocol folder (``mnm protocol``'s cells ``f<fraction>-s<seed>``)
counts as one run per fraction: each stage's curves are drawn as the mean over the seeds with a ± std band, and
its mIoU is the mean ± std over the seeds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mnm.experiments.collect import RANDOM_INIT
from mnm.runs.rundir import MANIFEST, StageDir, read_manifest
from mnm.stages import stage_class

CELL = re.compile(r"^f([0-9.]+)-s(\d+)$")  # a protocol cell's folder name (mnm.experiments.protocol.cell_name)


def _stages(run_dir: Path) -> dict[str, dict]:
    """The manifest entries of a run folder's stages."""
    if not (run_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {MANIFEST}) nor a protocol folder (no "
                                "f<fraction>-s<seed> cells)")
    return read_manifest(run_dir).get("stages", {})


def expand_runs(folders: Sequence[Path]) -> list[tuple[Path, list[Path]]]:
    """``(run, its folders)`` per compared run: a run folder stands for itself; a protocol folder gives one run
    per fraction (``FOLDER/f0.125``), whose folders are that fraction's cells (the seeds)."""
    runs: list[tuple[Path, list[Path]]] = []
    for folder in folders:
        cells = sorted(c for c in folder.iterdir() if CELL.match(c.name) and (c / MANIFEST).is_file()) if (
            folder.is_dir() and not (folder / MANIFEST).is_file()) else []
        if not cells:
            runs.append((folder, [folder]))
            continue
        for fraction in sorted({CELL.match(c.name).group(1) for c in cells}, key=float):
            runs.append((folder / f"f{fraction}", [c for c in cells if CELL.match(c.name).group(1) == fraction]))
    return runs


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short run names: each run's folder name, or as few trailing path parts as tell it from the other runs."""
    parts = [Path(d).resolve().parts for d in run_dirs]

    def name(i: int) -> str:
        others = [p for j, p in enumerate(parts) if j != i]
        depth = next((k for k in range(1, len(parts[i]) + 1) if all(p[-k:] != parts[i][-k:] for p in others)),
                     len(parts[i]))  # the same folder twice: its full path
        return str(Path(*parts[i][-depth:]))

    return [name(i) for i in range(len(parts))]


def mm_curves(run_dirs: Sequence[Path]) -> dict[str, Path | list[Path]]:
    """``run/stage (variant) -> CSV log`` for every stage with training curves (M&M) and a CSV log; for a protocol
    folder, ``FOLDER/f<fraction>/stage (variant) -> the CSV logs of its seeds``."""
    series: dict[str, Path | list[Path]] = {}
    runs = expand_runs(run_dirs)
    for (_, folders), run in zip(runs, run_labels([r for r, _ in runs]), strict=True):
        for run_dir in folders:
            for stage, entry in _stages(run_dir).items():
                folder, cls = StageDir.of(run_dir, stage), stage_class(entry["stage"])
                if not (cls.curve_metrics and folder.csv_log.is_file()):
                    continue
                variant = (folder.read_config().get("model") or {}).get(cls.variant_arg) if cls.variant_arg else None
                label = f"{run}/{stage}" + (f" ({variant})" if variant else "")
                if len(folders) == 1:
                    series[label] = folder.csv_log
                else:
                    series.setdefault(label, []).append(folder.csv_log)
    return series


def bar_colours(series: dict[str, Path], rows: Sequence[dict]) -> list[str]:
    """Each result row's bar colour: the colour of the curve (``C0``, ``C1``, ... in the order of ``series``) of
    the stage it started from; grey for a stage without curves (random init, a proxy)."""
    line_of = {label.partition(" (")[0]: f"C{i}" for i, label in enumerate(series)}
    return [line_of.get(f"{r['run']}/{r['init']}", "0.6") for r in rows]


def curve_columns(run_dirs: Sequence[Path]) -> dict[str, str]:
    """The curves of the first stage kind with training curves in these runs ({} if none)."""
    for run_dir in (folder for _, folders in expand_runs(run_dirs) for folder in folders):
        for entry in _stages(run_dir).values():
            if stage_class(entry["stage"]).curve_metrics:
                return stage_class(entry["stage"]).curve_metrics
    return {}


def _init_from(entry: dict) -> str:
    """The stage whose weights started this one (older manifests: found from the checkpoint path)."""
    if entry.get("init_from"):
        return entry["init_from"]
    path = entry.get("pretrained_backbone")
    return StageDir.of_checkpoint(path).name if path else RANDOM_INIT


def _stage_miou(run_dir: Path, stage: str) -> float | None:
    metrics = StageDir.of(run_dir, stage).metrics
    return json.loads(metrics.read_text()).get("eval", {}).get("miou") if metrics.is_file() else None


def segment_results(run_dirs: Sequence[Path]) -> list[dict]:
    """One row per evaluated stage: ``run``, ``stage``, ``init`` (the stage it started from), ``status``, ``miou``;
    for a protocol folder's fraction, ``miou`` is the mean over the seeds that finished, with ``std`` and ``n``."""
    rows = []
    runs = expand_runs(run_dirs)
    for (_, folders), run in zip(runs, run_labels([r for r, _ in runs]), strict=True):
        entries: dict[str, list[tuple[Path, dict]]] = {}
        for run_dir in folders:
            for stage, entry in _stages(run_dir).items():
                if stage_class(entry["stage"]).evaluation_split is not None:
                    entries.setdefault(stage, []).append((run_dir, entry))
        for stage, found in entries.items():
            entry = found[0][1]
            if len(folders) == 1:
                rows.append({"run": run, "stage": stage, "init": _init_from(entry),
                             "status": entry.get("status", "?"), "miou": _stage_miou(found[0][0], stage)})
                continue
            scores = [v for v in (_stage_miou(d, stage) for d, e in found if e.get("status") == "finished")
                      if v is not None]
            rows.append({"run": run, "stage": stage, "init": _init_from(entry),
                         "status": f"{len(scores)}/{len(folders)} seeds finished",
                         "miou": float(np.mean(scores)) if scores else None,
                         "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan, "n": len(scores)})
    return rows


def miou_markdown(rows: Sequence[dict]) -> str:
    """``| run | segment stage | initialised from | status | mIoU (%) |`` for :func:`segment_results` rows
    (mean ± std (n=seeds) for a protocol folder's rows)."""
    lines = ["| run | segment stage | initialised from | status | mIoU (%) |", "|---|---|---|---|---:|"]
    for r in rows:
        shown = "–" if r["miou"] is None else f"{100 * r['miou']:.2f}"
        if r["miou"] is not None and "n" in r:
            shown += ("" if math.isnan(r["std"]) else f" ± {100 * r['std']:.2f}") + f" (n={r['n']})"
        lines.append(f"| {r['run']} | {r['stage']} | {r['init']} | {r['status']} | {shown} |")
    return "\n".join(lines) + "\n"
