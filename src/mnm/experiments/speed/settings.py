"""What ``mnm speed`` measures and how big: :class:`Settings`, its defaults, and its command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["QUICK", "SECTIONS", "Settings", "parse_args"]

SECTIONS = ("mnm", "graph", "finetune", "data")


@dataclass(frozen=True)
class Settings:
    """What to measure and how big (defaults: the paper's M&M batch and the CamVid CPU preset)."""

    out: Path = Path("runs/speed")
    device: str = "cpu"
    only: tuple[str, ...] = SECTIONS
    quick: bool = False
    threads: int = 1
    warmup: int = 1
    repeats: int = 5
    camvid_root: Path | None = None
    images: int = 16
    patches_per_image: int = 9
    image_size: tuple[int, int] = (360, 480)
    patch_out_size: int = 128
    patch_size_range: tuple[int, int] = (64, 256)
    nodes: tuple[int, ...] = (100, 200, 400, 1600)
    scale_patches_per_image: int = 10
    vgg: bool = True
    finetune_batch: int = 8
    finetune_size: tuple[int, int] = (180, 240)
    loader_workers: tuple[int, ...] = (0, 2)
    loader_batches: int = 20
    step_budget_s: float = 30.0

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def camvid(self) -> Path | None:
        """The CamVid root if it is an existing folder."""
        return self.camvid_root if self.camvid_root is not None and self.camvid_root.is_dir() else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in d.items()
        }


#: what ``--quick`` changes (and no VGG-16 on the CPU)
QUICK: dict[str, Any] = {"repeats": 2, "nodes": (100, 200, 400), "step_budget_s": 10.0}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}


def _machine_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _default(name: str) -> str:
    """``default X (quick Y)`` for a help text, from :class:`Settings` and :data:`QUICK`."""
    show = lambda v: " ".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    quick = f", quick {show(QUICK[name])}" if name in QUICK else ""
    return f"default {show(DEFAULTS[name])}{quick}"


def parse_args(argv: list[str] | None, prog: str = "mnm speed", description: str = "") -> Settings:
    """Command line -> :class:`Settings`; options left out keep the :class:`Settings` defaults."""
    p = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=f"output folder ({_default('out')})")
    p.add_argument("--camvid-root", type=Path, help="CamVid root: real M&M batches and the data-loader section")
    p.add_argument("--only", nargs="+", action="extend", choices=SECTIONS, help="sections to run")
    p.add_argument("--quick", action="store_true", help=f"smaller and shorter: {QUICK}, no VGG-16 on CPU")
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: the CPUs this process may use)")
    p.add_argument("--warmup", type=int, help=f"untimed runs before timing ({_default('warmup')})")
    p.add_argument("--repeats", type=int, help=f"timed runs, median reported ({_default('repeats')})")
    p.add_argument("--images", type=int, help=f"M&M images per step ({_default('images')})")
    p.add_argument("--patches-per-image", type=int, help=_default("patches_per_image"))
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help=f"synthetic input only ({_default('image_size')})")
    p.add_argument("--patch-out-size", "--patch-size", type=int, dest="patch_out_size",
                   help=f"side patches are resized to ({_default('patch_out_size')})")
    p.add_argument("--patch-size-range", "--size-range", type=int, nargs=2, metavar=("LO", "HI"),
                   dest="patch_size_range", help=f"patch sides before resizing ({_default('patch_size_range')})")
    p.add_argument("--nodes", type=int, nargs="+", help=f"graph sizes ({_default('nodes')})")
    p.add_argument("--scale-patches-per-image", type=int,
                   help=f"patches per image in the graph section ({_default('scale_patches_per_image')})")
    p.add_argument("--no-vgg", action="store_false", dest="vgg", help="skip the VGG-16 M&M step")
    p.add_argument("--finetune-batch", type=int, help=_default("finetune_batch"))
    p.add_argument("--finetune-size", type=int, nargs=2, metavar=("H", "W"), help=_default("finetune_size"))
    p.add_argument("--loader-workers", type=int, nargs="+", help=_default("loader_workers"))
    p.add_argument("--loader-batches", type=int, help=_default("loader_batches"))
    p.add_argument("--step-budget", type=float, dest="step_budget_s",
                   help=f"seconds after which a training-step timing stops repeating ({_default('step_budget_s')})")
    given = vars(p.parse_args(argv))
    quick = given.get("quick", False)
    values: dict[str, Any] = {**(QUICK if quick else {}), **given}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    device = values.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available")
    settings = Settings(**values)
    sizes = [settings.images, settings.patches_per_image, settings.patch_out_size, *settings.image_size,
             *settings.patch_size_range, settings.finetune_batch, *settings.nodes, settings.scale_patches_per_image,
             settings.loader_batches]
    if min(sizes) < 1:
        raise ValueError("sizes, counts and --nodes must be positive")
    return dataclasses.replace(
        settings,
        only=tuple(s for s in SECTIONS if s in settings.only),
        threads=max(1, values.get("threads", _machine_threads())),
        camvid_root=settings.camvid_root.expanduser() if settings.camvid_root else None,
        vgg=settings.vgg and not (quick and torch.device(device).type == "cpu"),
    )
