"""Hardware profiles (``--set trainer=cpu|gpu|ddp`` -> ``conf/trainer/<name>.yaml``): which trainer settings a profile
replaces, which an experiment keeps, and how gradient accumulation keeps the images per update on several processes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mnm.runs.yaml_layers import ConfigError, read_yaml, resolve_file

if TYPE_CHECKING:
    from mnm.runs.config import StageSpec

__all__ = ["EXPERIMENT_KEYS", "HARDWARE_KEYS", "experiment_settings", "hardware_profile", "is_profile",
           "keep_images_per_update"]

#: the trainer settings a hardware profile (``--set trainer=cpu`` -> ``conf/trainer/cpu.yaml``) replaces
HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "sync_batchnorm", "benchmark")
#: the numerics of an experiment: a setting of these outside ``conf/trainer/`` (``conf/release/training.yaml``)
#: survives ``--set trainer=<profile>``
EXPERIMENT_KEYS = ("precision", "sync_batchnorm")


def hardware_profile(name: str, base_dir: Path) -> dict[str, Any]:
    """The hardware settings (:data:`HARDWARE_KEYS`) of ``conf/trainer/<name>.yaml`` (or of the file ``name``)."""
    ref = name if name.endswith((".yaml", ".yml")) else f"conf/trainer/{name}.yaml"
    path = resolve_file(ref, base_dir)
    if not path.is_file():
        folder = resolve_file("conf/trainer", base_dir)
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ConfigError(f"--set trainer={name}: no trainer profile {ref} (profiles: {', '.join(known) or 'none'})")
    trainer = read_yaml(path, f"--set trainer={name}").get("trainer") or {}
    return {k: v for k, v in trainer.items() if k in HARDWARE_KEYS}


def is_profile(ref: Any, base_dir: Path) -> bool:
    """Whether a config layer is a hardware profile (a file in ``conf/trainer/``)."""
    return isinstance(ref, str) and resolve_file(ref, base_dir).resolve().parent == (
        resolve_file("conf/trainer", base_dir).resolve())


def experiment_settings(layers: dict[str, Any]) -> dict[str, Any]:
    """The :data:`EXPERIMENT_KEYS` a merged layer sets in its ``trainer`` section."""
    return {k: v for k, v in (layers.get("trainer") or {}).items() if k in EXPERIMENT_KEYS}


def _process_count(trainer: dict[str, Any]) -> int | None:
    """Training processes of a trainer section (devices x num_nodes); None where only the machine knows."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, list):
        count = len(devices)
    elif str(devices).isdigit() and int(devices) > 0:
        count = int(devices)
    elif trainer.get("accelerator") in ("gpu", "cuda") and torch.cuda.is_available():  # -1 / "auto": every GPU
        count = torch.cuda.device_count()
    else:
        return None
    return count * int(trainer.get("num_nodes", 1))


def keep_images_per_update(stage: StageSpec, profile: str) -> None:
    """Divide a stage's ``accumulate_grad_batches`` by its processes so an update sees the pipeline's images.

    A stage that sets ``accumulate_grad_batches`` (``A``, 1 included) fixes its images per update
    as on one device; on ``W`` processes it accumulates ``A / W``, and a ``W`` that does not divide
    ``A`` is refused. A stage that leaves it unset takes a batch per process.
    """
    trainer = stage.config.setdefault("trainer", {})
    if "accumulate_grad_batches" not in trainer:
        return
    batches = int(trainer["accumulate_grad_batches"])
    where = f"--set trainer={profile}: stage {stage.name!r} accumulates {batches} batch(es) per update as on one device"
    processes = _process_count(trainer)
    if processes is None:
        raise ConfigError(f"{where}, and devices: {trainer.get('devices')} cannot be counted on this machine; "
                          "set trainer.devices=N")
    if batches % processes:
        raise ConfigError(
            f"{where}; {processes} processes cannot share them, so each update would see other images than the "
            f"pipeline's (docs/release-fidelity.md); use a device count dividing {batches}, or "
            f"--set stages.{stage.name}.trainer.devices=1")
    trainer["accumulate_grad_batches"] = batches // processes
