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
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml
from lightning.pytorch.utilities import rank_zero_only

from mnm.runs.config import ConfigError, StageSpec
from mnm.utils.files import atomic_write_json
from mnm.weights.checkpoints import read_checkpoint

__all__ = [
    "MANIFEST", "TIME_FORMAT", "HeldLock", "StageDir", "config_hash", "exclusive_lock", "load_stage", "merge_csv_logs", "plural", "read_csv_rows",
    "read_manifest", "read_stage_metrics",
    "set_aside_csv_log", "stage_hash", "stage_lock_file", "status_table", "stage_hashes",
]

MANIFEST = "manifest.json"
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
        return list(self.checkpoints.glob("step=*.ckpt"))

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


# -- lock files ------------------------------------------------------------------------------------------
@dataclass
class HeldLock:
    """An open lock file whose ``flock`` this process holds (see :func:`exclusive_lock`)."""

    file: IO[str]
    #: leave the file in place on release (it names a holder elsewhere that this process must not erase)
    keep: bool = False


def _is_open_file(fh: IO[str], path: Path) -> bool:
    """Whether ``path`` still names the file ``fh`` has open."""
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


@contextmanager
def exclusive_lock(path: Path, wait: bool = True) -> Iterator[HeldLock]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing, opened ``a+``) for the ``with`` block,
    then remove the file, so that finished runs leave no lock files behind; ``BlockingIOError`` at once when another
    process holds it and not ``wait``.

    Removing a lock file is safe only because taking one checks that the file locked is still the one at ``path``:
    a process that opened the file before its holder removed it gets the ``flock`` of a file nobody else can reach
    any more, so it drops it and locks the new file at ``path`` (else two processes would hold "the" lock). The
    holder removes the file before it unlocks it, and only while ``path`` is still its file (not one moved aside
    with its folder and replaced).
    """
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - closed on release below
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BaseException:
            fh.close()
            raise
        if _is_open_file(fh, path):
            break
        fh.close()  # removed by its holder while this process waited: lock the file now at path
    held = HeldLock(fh)
    try:
        yield held
    finally:
        if not held.keep:
            fh.truncate(0)  # a lock file moved aside with its folder names no holder
            if _is_open_file(fh, path):
                path.unlink()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# -- manifest and JSON ----------------------------------------------------------------------------------
def read_manifest(run_dir: Path) -> dict[str, Any]:
    """``manifest.json`` of a run folder ({} when there is none)."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); move it away to start this run over") from None


def plural(count: int, noun: str) -> str:
    """``"1 cell"``, ``"2 cells"``: a count and its noun (regular plurals only)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


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


# -- models ----------------------------------------------------------------------------------------------
def load_stage(run_dir: Path, stage: str, weights: bool = True) -> tuple[Any, Any]:
    """``(model, datamodule)`` of a finished stage, rebuilt from its resolved config.

    With ``weights`` the model gets the stage's final weights; without, it has
    the stage's initial weights for a random-init stage (same ``seed_everything``).
    The model is in eval mode on the CPU.
    """
    from mnm.runs.stage_cli import build_stage

    folder = StageDir.of(run_dir, stage)
    kind = read_manifest(Path(run_dir))["stages"][stage]["stage"]
    cfg = folder.read_config()
    cfg["model"]["pretrained_backbone"] = None
    cfg["trainer"] = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                      "enable_progress_bar": False, "enable_model_summary": False}
    cli = build_stage(kind, cfg)
    model = cli.model
    if weights:
        model.load_state_dict(read_checkpoint(folder.final_checkpoint)["state_dict"])
    return model.eval(), cli.datamodule
