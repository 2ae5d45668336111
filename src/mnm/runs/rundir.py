"""The run folder: the one module that knows the layout of ``runs/<pipeline>/<stage>/``.

A run folder holds ``manifest.json`` (one entry per stage) and a folder per stage::

    <run>/manifest.json
    <run>/<stage>/config.yaml            the resolved LightningCLI config
    <run>/<stage>/metrics.json           fit scalars, evaluation, wall time, steps
    <run>/<stage>/csv/metrics.csv        the CSV log (attempts merged after a resume)
    <run>/<stage>/checkpoints/           step=*.ckpt and last.ckpt (training states), final.ckpt (weights)
    <run>/.stage-<stage>.lock            who runs the stage now (mnm.runs.runlock; outside the stage folder,
                                         which a changed config moves aside); removed when the stage is released
    <run>/.manifest.lock                 held while one process updates manifest.json; removed after

Report, compare, ensemble and the runner read and write runs through this module only.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities import rank_zero_only

from mnm.runs.file_lock import exclusive_lock
from mnm.runs.yaml_layers import ConfigError
from mnm.utils.files import atomic_write_json

__all__ = [
    "CELL_RECORD", "LINEAR_PROBE_CACHE", "MANIFEST", "PROBE_CACHE", "RESULTS", "STEP_CHECKPOINT_FILENAME", "TIME_FORMAT",
    "StageDir", "merge_csv_logs", "read_csv_rows", "read_manifest", "read_stage_metrics", "set_aside_csv_log",
    "stage_lock_file", "update_manifest",
]

MANIFEST = "manifest.json"
#: files a run folder holds beside its stages, and what writes them
RESULTS = "results.json"  # mnm benchmark: the report's numbers (report.md, figures beside it)
PROBE_CACHE = "probe.json"  # mnm protocol: the kNN probe of each arm's starting backbone, per cell
LINEAR_PROBE_CACHE = "linear_probe.json"  # mnm unsupervised: the linear probe of each arm, per cell
CELL_RECORD = "protocol_cell.json"  # read only: what ran a protocol cell, before each stage recorded it
#: ModelCheckpoint ``filename`` of the periodic training states (``step=0000100.ckpt``; :meth:`StageDir.step_checkpoints`)
STEP_CHECKPOINT_FILENAME = "{step:07d}"
#: how run folders write times (local time): the manifest's started/finished, a stage lock's holder
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
CSV_LOGGER_NAME = "csv"  # Lightning's CSVLogger writes <save_dir>/<name>/metrics.csv (version "")


@dataclass(frozen=True)
class StageDir:
    """The files of one stage's folder."""

    root: Path

    @classmethod
    def of(cls, run_dir: str | Path, stage: str) -> StageDir:
        """The folder of ``stage`` in ``run_dir``."""
        return cls(Path(run_dir) / stage)

    @classmethod
    def of_checkpoint(cls, path: str | Path) -> StageDir:
        """The stage folder a checkpoint file of this layout lies in."""
        return cls(Path(path).parent.parent)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final_checkpoint(self) -> Path:
        """The weights the stage hands on (written when it finishes)."""
        return self.checkpoints / "final.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        """The training state a resumed stage starts from."""
        return self.checkpoints / "last.ckpt"

    def step_checkpoints(self) -> list[Path]:
        """The periodic full training states (``final.ckpt`` holds weights only)."""
        return list(self.checkpoints.glob("step=*.ckpt"))  # Lightning writes STEP_CHECKPOINT_FILENAME so

    @property
    def csv_log(self) -> Path:
        return self.root / CSV_LOGGER_NAME / "metrics.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def csv_logger_args(self) -> dict[str, Any]:
        """``init_args`` of Lightning's ``CSVLogger`` that write :attr:`csv_log`."""
        return {"save_dir": str(self.root), "name": CSV_LOGGER_NAME, "version": ""}

    def read_config(self) -> dict[str, Any]:
        """The resolved ``config.yaml`` ({} when the stage has none yet)."""
        return (yaml.safe_load(self.config.read_text()) or {}) if self.config.is_file() else {}

    def _csv_parts(self) -> list[Path]:
        return sorted(self.csv_log.parent.glob("metrics.part*.csv"), key=lambda p: int(p.stem[len("metrics.part"):]))


def stage_lock_file(run_dir: str | Path, stage: str) -> Path:
    """The lock file of ``stage`` in ``run_dir`` (see :mod:`mnm.runs.runlock`)."""
    return Path(run_dir) / f".stage-{stage}.lock"


# -- manifest ----------------------------------------------------------------------------------
def read_manifest(run_dir: Path) -> dict[str, Any]:
    """``manifest.json`` of a run folder ({} when there is none)."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); move it away to start this run over") from None


@rank_zero_only
def update_manifest(run_dir: Path, fields: dict[str, Any], stage: str, entry: dict[str, Any]) -> None:
    """Set top-level ``fields`` and one stage's ``entry`` in ``manifest.json``, under a file lock.

    The file is re-read inside the lock, so the entries that other processes running other stages
    of the same run folder wrote meanwhile are kept.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run_dir / ".manifest.lock"):
        manifest = read_manifest(run_dir) | fields
        manifest.setdefault("stages", {})[stage] = entry
        atomic_write_json(run_dir / MANIFEST, manifest, sort_keys=True, default=str)


def read_stage_metrics(run_dir: Path, stage: str) -> dict[str, Any]:
    """A finished stage's ``metrics.json``; a clear error when the stage has not finished."""
    path = StageDir.of(run_dir, stage).metrics
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: stage {stage!r} has not finished in {run_dir}")
    return json.loads(path.read_text())


# -- CSV logs --------------------------------------------------------------------------------------------
def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV log as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@rank_zero_only
def set_aside_csv_log(stage: StageDir) -> None:
    """Keep the CSV log of an interrupted attempt (Lightning's CSVLogger would replace it on resume)."""
    if stage.csv_log.exists():
        stage.csv_log.rename(stage.csv_log.with_name(f"metrics.part{len(stage._csv_parts())}.csv"))


@rank_zero_only
def merge_csv_logs(stage: StageDir) -> None:
    """Join the CSV logs of all attempts into one; rows of a later attempt replace
    those of earlier ones from the step it resumed at."""
    current, parts = stage.csv_log, stage._csv_parts()
    if not parts:
        return
    tables = [read_csv_rows(p) for p in [*parts, current] if p.exists()]
    rows: list[dict[str, str]] = []
    for table in tables:
        steps = [int(r["step"]) for r in table if r.get("step")]
        first = min(steps, default=0)
        rows = [r for r in rows if int(r.get("step") or 0) < first] + table
    fields = list(dict.fromkeys(k for t in tables for r in t for k in r))
    with open(current, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    for p in parts:
        p.unlink()


