"""``mnm pipeline status``: a run folder's stages as a text table (or a protocol folder's cells)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnm.runs.rundir import MANIFEST, StageDir, read_manifest
from mnm.utils.text import plural

__all__ = ["status_table"]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _key_metric(run_dir: Path, stage: str, entry: dict[str, Any]) -> str:
    """The evaluation's main metric (mIoU, top-1, ...), or else the last logged training loss."""
    score = entry.get("score") or ({"metric": "mIoU", "value": entry["miou"]} if "miou" in entry else None)
    if score and score["value"] is not None:  # "miou": manifests written before "score"
        return f"{score['metric']} {100 * score['value']:.2f}%"
    path = StageDir.of(run_dir, stage).metrics
    loss = (json.loads(path.read_text()).get("fit") or {}).get("train/loss") if path.is_file() else None
    return "–" if loss is None else f"loss {loss:.4g}"


def status_table(run_dir: Path) -> str:
    """The stages of a run as a text table: stage, kind, status, steps, wall time, key metric (and any error)."""
    manifest = read_manifest(run_dir)
    if not manifest:
        inner = sorted(p.parent for p in Path(run_dir).glob(f"*/{MANIFEST}"))
        if inner:
            return _inner_runs_table(Path(run_dir), inner)
        raise FileNotFoundError(f"{run_dir}: not a run folder (no {MANIFEST})")
    entries = manifest.get("stages", {})
    order = _stage_order(manifest)
    rows = [("stage", "kind", "status", "steps", "time", "result")]
    errors = []
    for name in order:
        entry = entries.get(name, {})
        steps = entry.get("steps", entry.get("step", "–"))  # "step": where a failed or stopped stage ended
        rows.append((name, entry.get("stage", "–"), entry.get("status", "not started"), str(steps),
                     _duration(entry.get("wall_time_s")), _key_metric(run_dir, name, entry) if entry else "–"))
        if entry.get("error"):
            errors.append(f"{name}: {entry['error']}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([f"{manifest.get('pipeline', run_dir)} ({run_dir})", *lines, *errors]) + "\n"


def _stage_order(manifest: dict[str, Any]) -> list[str]:
    """The stages of a run in pipeline order (in the order of their entries for manifests without an identity)."""
    return [name for name, _ in manifest.get("identity", {}).get("stages", [])] or list(manifest.get("stages", {}))


def _inner_runs_table(folder: Path, runs: list[Path]) -> str:
    """The run folders inside ``folder`` (a protocol's cells), each with its stages finished."""
    lines = [f"{folder} holds {plural(len(runs), 'run folder')} (a protocol's cells); `mnm pipeline status FOLDER` "
             "shows one:"]
    for run in runs:
        manifest = read_manifest(run)
        names = _stage_order(manifest)
        done = sum(manifest.get("stages", {}).get(name, {}).get("status") == "finished" for name in names)
        lines.append(f"  {run}  {done}/{len(names)} stages finished")
    return "\n".join(lines) + "\n"
