"""``mnm bench``: speed and cost of M&M tuning, graph scaling, fine-tuning and data loading.

Sections (``--only`` picks some; the rest of an earlier ``bench.json`` of the same device is kept):

- ``mnm``: one M&M tuning step split into mix (:func:`mnm.mix.sample_patches`), match
  (:func:`mnm.match.graph_triplets`), backbone forward, triplet loss, backward and the optimiser
  step, and ``overhead_ratio = (mix + match + loss) / (forward + backward)`` (AlexNet, fp32).
- ``graph``: graph build time and whole-step time against the number of nodes (paper, Fig. 5).
- ``finetune``: a SegmentStage training step (AlexNet + FCN head) in images per second.
- ``data``: :func:`mnm.datamodules.loader_throughput` on CamVid, next to the fine-tuning rate.

Every timing goes through :func:`time_laps` (``time.perf_counter``, warm-up runs, median of the
repeats, device synchronised at every lap boundary). Results are a dict, written atomically as JSON
and printed as a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mnm.checkpoints import atomic_write_text

__all__ = ["Laps", "Settings", "Timing", "main", "render_table", "run_bench", "time_call", "time_laps"]

SECTIONS = ("mnm", "graph", "finetune", "data")
#: Zhan et al.: 5.8 h for 8,000 VGG-16 M&M iterations on one TITAN-X
PAPER_VGG16_S_PER_ITER = 5.8 * 3600 / 8000
OVERHEAD_TARGET = 0.05
CAMVID_CPU_SCALE = (0.4, 0.7)  # conf/data/camvid_cpu.yaml
NUM_CLASSES = 11  # CamVid; also used for the synthetic label maps


# --------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Laps:
    """Named wall-clock laps of one run: ``with laps("mix"): ...`` (device synchronised around it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        _sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3


class Timing(NamedTuple):
    """Median milliseconds per lap (and ``total``) and the number of timed runs behind them."""

    ms: dict[str, float]
    repeats: int


def time_laps(
    run: Callable[[Laps], object],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
) -> Timing:
    """Median milliseconds of every lap of ``run`` and of the whole run (``total``).

    ``run`` is called ``warmup`` times untimed, then up to ``repeats`` times timed; once ``budget_s``
    seconds have passed since the start (warm-up included) no further timed run starts, but there is
    always at least one.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    start = time.perf_counter()
    for _ in range(warmup):
        run(Laps(device))
    samples: list[dict[str, float]] = []
    while len(samples) < repeats and not (
        samples and budget_s is not None and time.perf_counter() - start > budget_s
    ):
        laps = Laps(device)
        with laps("total"):
            run(laps)
        samples.append(laps.ms)
    return Timing({name: statistics.median(s[name] for s in samples) for name in samples[0]}, len(samples))


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()`` (:func:`time_laps` of a run with no inner laps)."""
    return time_laps(lambda laps: fn(), device, warmup=warmup, repeats=repeats).ms["total"]


# ------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What to measure and how big (defaults: the paper's M&M batch and the CamVid CPU preset)."""

    out: Path
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
    patch_size: int = 128
    size_range: tuple[int, int] = (64, 256)
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


def _machine_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> Settings:
    """Command line -> :class:`Settings` (``--quick``: fewer repeats, smaller graphs, no CPU VGG-16)."""
    p = argparse.ArgumentParser(prog="mnm bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench", help="output folder (bench.json)")
    p.add_argument("--camvid-root", help="CamVid root: real M&M batches and the data-loader section")
    p.add_argument("--only", nargs="+", action="extend", choices=SECTIONS, help="sections to run")
    p.add_argument(
        "--quick", action="store_true", help="2 repeats, 10 s step budget, nodes up to 400, no VGG-16 on CPU"
    )
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--threads", type=int, default=_machine_threads(), help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, help="untimed runs before timing (default 1)")
    p.add_argument("--repeats", type=int, help="timed runs, median reported (default 5, quick 2)")
    p.add_argument("--images", type=int, default=16, help="M&M images per step")
    p.add_argument("--patches-per-image", type=int, default=9)
    p.add_argument(
        "--image-size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"), help="synthetic input only"
    )
    p.add_argument("--patch-size", type=int, default=128, help="side patches are resized to")
    p.add_argument("--size-range", type=int, nargs=2, default=(64, 256), metavar=("LO", "HI"))
    p.add_argument(
        "--nodes", type=int, nargs="+", help="graph sizes (default 100 200 400 1600; quick up to 400)"
    )
    p.add_argument(
        "--scale-patches-per-image", type=int, default=10, help="patches per image in the graph section"
    )
    p.add_argument("--no-vgg", action="store_true", help="skip the VGG-16 M&M step")
    p.add_argument("--finetune-batch", type=int, default=8)
    p.add_argument("--finetune-size", type=int, nargs=2, default=(180, 240), metavar=("H", "W"))
    p.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument(
        "--step-budget",
        type=float,
        help="seconds after which a training-step timing stops repeating (default 30)",
    )
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available")
    sizes = [a.images, a.patches_per_image, a.patch_size, *a.image_size, *a.size_range, a.finetune_batch]
    if min(sizes + [*(a.nodes or [1]), a.scale_patches_per_image, a.loader_batches]) < 1:
        raise ValueError("sizes, counts and --nodes must be positive")
    on_cpu = torch.device(device).type == "cpu"
    nodes = a.nodes or ((100, 200, 400) if a.quick else (100, 200, 400, 1600))
    return Settings(
        out=Path(a.out),
        device=device,
        only=tuple(s for s in SECTIONS if s in (a.only or SECTIONS)),
        quick=a.quick,
        threads=max(1, a.threads),
        warmup=1 if a.warmup is None else a.warmup,
        repeats=a.repeats or (2 if a.quick else 5),
        camvid_root=Path(a.camvid_root).expanduser() if a.camvid_root else None,
        images=a.images,
        patches_per_image=a.patches_per_image,
        image_size=tuple(a.image_size),
        patch_size=a.patch_size,
        size_range=tuple(a.size_range),
        nodes=tuple(nodes),
        scale_patches_per_image=a.scale_patches_per_image,
        vgg=not a.no_vgg and not (a.quick and on_cpu),
        finetune_batch=a.finetune_batch,
        finetune_size=tuple(a.finetune_size),
        loader_workers=tuple(a.loader_workers),
        loader_batches=a.loader_batches,
        step_budget_s=a.step_budget or (10.0 if a.quick else 30.0),
    )


# ---------------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def environment(settings: Settings) -> dict[str, Any]:
    """Device, library versions, CPU, threads and load average (a shared machine makes timings noisy)."""
    import lightning
    import torchvision

    device = settings.torch_device
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "loadavg_1m_start": _loadavg(),
        "cuda_device": None,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env


# ----------------------------------------------------------------------------------------- inputs


def synthetic_batch(n: int, size: tuple[int, int], seed: int = 0) -> dict[str, Tensor]:
    """Random images with blocky label maps (11 classes, 4% ignore), the data contract's layout."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.randint(0, NUM_CLASSES, (n, 1, max(1, h // 30), max(1, w // 30)), generator=g)
    mask = F.interpolate(coarse.float(), size=(h, w), mode="nearest")[:, 0].long()
    mask[torch.rand(n, h, w, generator=g) < 0.04] = 255
    return {"image": torch.rand(n, 3, h, w, generator=g), "mask": mask}


def camvid_batch(root: Path, n: int) -> dict[str, Tensor]:
    """The first ``n`` CamVid train images at full size (cycling when ``n`` exceeds the split)."""
    from mnm.datamodules import CamVidDataModule
    from mnm.datamodules.datasets import pad_collate

    dm = CamVidDataModule(root=str(root), val_split="train", max_samples=n)
    dm.setup("validate")
    dataset = dm.datasets["val"]
    batch = pad_collate([dataset[i] for i in range(n)])
    return {"image": batch["image"], "mask": batch["mask"]}


class InputPool:
    """M&M input images, loaded once (CamVid when given, else synthetic) and sliced per measurement."""

    def __init__(self, settings: Settings, needed: int) -> None:
        root = settings.camvid
        if root is not None:
            batch = camvid_batch(root, needed)
            self.source = f"CamVid train ({root})"
        else:
            batch = synthetic_batch(needed, settings.image_size)
            self.source = "synthetic blocky label maps"
        device = settings.torch_device
        self.image, self.mask = batch["image"].to(device), batch["mask"].to(device)
        self.image_size = tuple(self.image.shape[-2:])

    def take(self, n: int) -> dict[str, Tensor]:
        """The first ``n`` images and masks (repeated if the pool is smaller)."""
        index = torch.arange(n, device=self.image.device) % self.image.shape[0]
        return {"image": self.image[index], "mask": self.mask[index]}


# --------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """Numerics of a training step: fp32, or bf16 autocast, optionally channels-last."""

    name: str
    bf16: bool = False
    channels_last: bool = False

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def prepare_input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare_module(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        module = module.to(device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module


def variants_for(device: torch.device) -> list[Variant]:
    """fp32 everywhere; on CUDA also bf16 autocast and bf16 + channels-last."""
    fp32 = Variant("fp32")
    if device.type != "cuda":
        return [fp32]
    return [fp32, Variant("bf16"), Variant("bf16+channels_last", bf16=True, channels_last=True)]


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------- M&M section


def build_mnm_stage(backbone: str, settings: Settings, patches_per_image: int) -> Any:
    """A MixMatchStage (graph triplets, paper's optimiser) with the benchmark's patch settings."""
    from mnm.stages.mix_match import MixMatchStage

    torch.manual_seed(0)
    return MixMatchStage(
        backbone=backbone,
        triplets="graph",
        patches_per_image=patches_per_image,
        patch_size_range=settings.size_range,
        patch_out_size=settings.patch_size,
        background_class=None,  # CamVid has no background class
    )


def mnm_step(
    stage: Any,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    variant: Variant,
    nodes_seen: list[int],
) -> Callable[[Laps], None]:
    """One M&M training step, as :class:`MixMatchStage` does it, with a lap per phase."""
    from mnm.stages.mix_match import TRIPLET_BUILDERS

    build = TRIPLET_BUILDERS[stage.hparams.triplets]
    generator = torch.Generator().manual_seed(0)
    device = batch["image"].device

    def run(laps: Laps) -> None:
        with laps("mix"):
            patches = stage.mix(batch, generator)
        with laps("match"):
            triplets = build(patches.labels.cpu(), generator=generator).to(device)
        with laps("forward"), variant.autocast(device):
            embeddings = stage.backbone.embed(variant.prepare_input(patches.patches))
        with laps("loss"), variant.autocast(device):
            loss = stage.loss_fn(embeddings, triplets).loss
        with laps("backward"):
            loss.backward()
        with laps("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        nodes_seen.append(patches.labels.numel())

    return run


def overhead_ratio(ms: dict[str, float]) -> float:
    """``(mix + match + loss) / (forward + backward)``."""
    return (ms["mix"] + ms["match"] + ms["loss"]) / (ms["forward"] + ms["backward"])


def measure_mnm(
    backbone: str,
    variant: Variant,
    batch: dict[str, Tensor],
    settings: Settings,
    patches_per_image: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Time M&M steps of ``backbone`` on ``batch``; phases in ms, patches/s and the overhead ratio.

    Timed runs stop early once ``settings.step_budget_s`` has passed (at least one is made).
    """
    device = settings.torch_device
    stage = variant.prepare_module(build_mnm_stage(backbone, settings, patches_per_image), device)
    stage.train()
    optimizer = stage.configure_optimizers()["optimizer"]
    nodes: list[int] = []
    _reset_peak(device)
    run = mnm_step(stage, optimizer, batch, variant, nodes)
    ms, done = time_laps(run, device, warmup=warmup, repeats=repeats, budget_s=settings.step_budget_s)
    n = statistics.median_low(nodes[warmup:])
    result = {
        "warmup": warmup,
        "repeats": done,
        "nodes": n,
        "ms": ms,
        "patches_per_s": n / ms["total"] * 1e3,
        "images_per_s": len(batch["image"]) / ms["total"] * 1e3,
        "overhead_ratio": overhead_ratio(ms),
        **_peak_memory(device),
    }
    del stage, optimizer
    _release(device)
    return result


def mix_crop_ms(batch: dict[str, Tensor], settings: Settings, warmup: int, repeats: int) -> dict[str, float]:
    """Profile of mix: the time of its crop against the whole.

    The crop is timed as the same :func:`mnm.mix.crop_patches` call :func:`mnm.mix.sample_patches`
    makes, on boxes it sampled; the rest of mix is centre sampling and the overlap filter.
    """
    from mnm.mix import crop_patches, sample_patches

    device = settings.torch_device
    kw = {
        "patches_per_image": settings.patches_per_image,
        "size_range": settings.size_range,
        "out_size": settings.patch_size,
        "background_class": None,
    }
    generator = torch.Generator().manual_seed(0)
    mix = time_call(
        lambda: sample_patches(batch["image"], batch["mask"], generator=generator, **kw),
        device,
        warmup=warmup,
        repeats=repeats,
    )
    boxes = sample_patches(batch["image"], batch["mask"], generator=generator, **kw).boxes
    crop = time_call(
        lambda: crop_patches(batch["image"], boxes, settings.patch_size),
        device,
        warmup=warmup,
        repeats=repeats,
    )
    return {"mix_ms": mix, "crop_ms": crop, "crop_share": crop / mix}


def bench_mnm(settings: Settings, pool: InputPool) -> dict[str, Any]:
    """The M&M step of AlexNet (and VGG-16 unless quick on CPU) for every variant of the device."""
    device = settings.torch_device
    batch = pool.take(settings.images)
    models: dict[str, dict[str, Any]] = {"alexnet": {}}
    for variant in variants_for(device):
        models["alexnet"][variant.name] = measure_mnm(
            "alexnet", variant, batch, settings, settings.patches_per_image, settings.warmup, settings.repeats
        )
    if settings.vgg:
        # on CPU one VGG-16 step takes minutes: no warm-up, and the step budget allows one timed run
        warmup = settings.warmup if device.type == "cuda" else 0
        models["vgg16_bn"] = {
            v.name: measure_mnm(
                "vgg16_bn", v, batch, settings, settings.patches_per_image, warmup, settings.repeats
            )
            for v in variants_for(device)
        }
        best = min(r["ms"]["total"] for r in models["vgg16_bn"].values()) / 1e3
        models["vgg16_bn"]["paper"] = {
            "s_per_iter": PAPER_VGG16_S_PER_ITER,
            "best_s_per_iter": best,
            "speedup_vs_paper": PAPER_VGG16_S_PER_ITER / best,
            "hours_for_8000_iters": best * 8000 / 3600,
        }
    return {
        "input": pool.source,
        "images": settings.images,
        "image_size": list(pool.image_size),
        "patches_per_image": settings.patches_per_image,
        "patch_size": settings.patch_size,
        "size_range": list(settings.size_range),
        "models": models,
        "mix_profile": mix_crop_ms(batch, settings, settings.warmup, settings.repeats),
        "overhead_ratio": models["alexnet"]["fp32"]["overhead_ratio"],
        "overhead_target": OVERHEAD_TARGET,
    }


# -------------------------------------------------------------------------------- graph section


def _graph_build_ms(batch: dict[str, Tensor], settings: Settings) -> float:
    """Median ms of :func:`graph_triplets` (on CPU, as the stage runs it) over the patches of ``batch``."""
    from mnm.match import graph_triplets
    from mnm.mix import sample_patches

    generator = torch.Generator().manual_seed(0)
    labels = sample_patches(
        batch["image"],
        batch["mask"],
        patches_per_image=settings.scale_patches_per_image,
        size_range=settings.size_range,
        out_size=settings.patch_size,
        background_class=None,
        generator=generator,
    ).labels.cpu()
    return time_call(
        lambda: graph_triplets(labels, generator=generator),
        torch.device("cpu"),
        warmup=settings.warmup,
        repeats=10 * settings.repeats,
    )


def bench_graph(settings: Settings, pool: InputPool) -> dict[str, Any]:
    """Graph build time and whole AlexNet step time against the number of nodes (Fig. 5 trade-off)."""
    device = settings.torch_device
    ppi = settings.scale_patches_per_image
    rows = []
    for target in settings.nodes:
        n_images = math.ceil(target / ppi)
        batch = pool.take(n_images)
        graph_ms = _graph_build_ms(batch, settings)
        step = measure_mnm(
            "alexnet", Variant("fp32"), batch, settings, ppi, settings.warmup, settings.repeats
        )
        rows.append(
            {
                "target_nodes": target,
                "images": n_images,
                "nodes": step["nodes"],
                "graph_ms": graph_ms,
                "mix_ms": step["ms"]["mix"],
                "step_ms": step["ms"]["total"],
                "patches_per_s": step["patches_per_s"],
                "repeats": step["repeats"],
            }
        )
        del batch
        _release(device)
    return {"model": "alexnet", "variant": "fp32", "patches_per_image": ppi, "rows": rows}


# ----------------------------------------------------------------------------- fine-tune section


def finetune_step(
    stage: Any, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor], variant: Variant
) -> Callable[[Laps], None]:
    """One SegmentStage training step (head on the backbone, pixel-wise cross-entropy)."""
    from mnm.stages.segment import masked_cross_entropy

    device = batch["image"].device
    ignore = stage.hparams.ignore_index

    def run(laps: Laps) -> None:
        with laps("forward"), variant.autocast(device):
            logits = stage(variant.prepare_input(batch["image"]))
        with laps("loss"), variant.autocast(device):
            loss = masked_cross_entropy(logits, batch["mask"], ignore)
        with laps("backward"):
            loss.backward()
        with laps("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def bench_finetune(settings: Settings) -> dict[str, Any]:
    """AlexNet + FCN head segmentation step at the CPU preset size, per variant, in images/s."""
    from mnm.stages.segment import SegmentStage

    device = settings.torch_device
    batch = {
        k: v.to(device) for k, v in synthetic_batch(settings.finetune_batch, settings.finetune_size).items()
    }
    variants = {}
    for variant in variants_for(device):
        torch.manual_seed(0)
        stage = variant.prepare_module(SegmentStage(backbone="alexnet", num_classes=NUM_CLASSES), device)
        stage.train()
        optimizer = stage.configure_optimizers()["optimizer"]
        _reset_peak(device)
        ms = time_laps(
            finetune_step(stage, optimizer, batch, variant),
            device,
            warmup=settings.warmup,
            repeats=settings.repeats,
        ).ms
        variants[variant.name] = {
            "ms": ms,
            "images_per_s": settings.finetune_batch / ms["total"] * 1e3,
            **_peak_memory(device),
        }
        del stage, optimizer
        _release(device)
    return {
        "model": "alexnet+fcn",
        "batch": settings.finetune_batch,
        "size": list(settings.finetune_size),
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "variants": variants,
    }


# ---------------------------------------------------------------------------------- data section


def bench_data(settings: Settings) -> dict[str, Any]:
    """CamVid train-loader images/s (CPU preset crop and scale) for each worker count."""
    root = settings.camvid
    if root is None:
        return {"skipped": f"no CamVid folder (--camvid-root {settings.camvid_root})"}
    from mnm.datamodules import CamVidDataModule, loader_throughput

    workers = {}
    for n in settings.loader_workers:
        dm = CamVidDataModule(
            root=str(root),
            batch_size=settings.finetune_batch,
            crop_size=settings.finetune_size,
            scale_range=CAMVID_CPU_SCALE,
            num_workers=n,
        )
        workers[str(n)] = loader_throughput(dm, num_batches=settings.loader_batches, warmup=2)
        del dm
        gc.collect()
    return {
        "root": str(root),
        "batch": settings.finetune_batch,
        "crop": list(settings.finetune_size),
        "scale_range": list(CAMVID_CPU_SCALE),
        "batches": settings.loader_batches,
        "images_per_s": workers,
    }


# --------------------------------------------------------------------------------------- summary


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Patches/s of M&M, images/s of fine-tuning and of the loader side by side; is the loader the bottleneck?"""
    summary: dict[str, Any] = {}
    mnm = results.get("mnm", {}).get("models", {}).get("alexnet", {}).get("fp32")
    if mnm:
        summary["mnm_patches_per_s"] = mnm["patches_per_s"]
        summary["mnm_images_per_s"] = mnm["images_per_s"]
    finetune = results.get("finetune", {}).get("variants", {})
    if finetune:
        summary["finetune_images_per_s"] = max(v["images_per_s"] for v in finetune.values())
    loader = results.get("data", {}).get("images_per_s")
    if loader:
        summary["loader_images_per_s"] = loader
        if "finetune_images_per_s" in summary:  # the loader feeds fine-tuning crops
            summary["loader_is_bottleneck"] = max(loader.values()) < summary["finetune_images_per_s"]
    return summary


# ------------------------------------------------------------------------------------------ table


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _grid(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]


_PHASES = ("mix", "match", "forward", "loss", "backward", "optimizer", "total")


def _mnm_lines(sec: dict[str, Any]) -> list[str]:
    h, w = sec["image_size"]
    lines = [
        f"M&M tuning step: {sec['images']} images x {sec['patches_per_image']} patches -> "
        f"{sec['patch_size']}x{sec['patch_size']} (sides {sec['size_range'][0]}-{sec['size_range'][1]}) "
        f"from {sec['input']} {h}x{w}; median ms"
    ]
    rows = []
    for model, variants in sec["models"].items():
        for name, r in variants.items():
            if name != "paper":
                rows.append(
                    [
                        model,
                        name,
                        f"{r['repeats']}/{r['warmup']}",
                        r["nodes"],
                        *(r["ms"][p] for p in _PHASES),
                        r["patches_per_s"],
                        r["overhead_ratio"],
                    ]
                )
    lines += _grid(["model", "variant", "reps/warm", "nodes", *_PHASES, "patches/s", "overhead"], rows)
    prof = sec["mix_profile"]
    lines.append(
        f"mix profile: crop {_fmt(prof['crop_ms'])} ms of {_fmt(prof['mix_ms'])} ms "
        f"({prof['crop_share']:.0%}); the rest is centre sampling and the overlap filter"
    )
    verdict = "meets" if sec["overhead_ratio"] <= sec["overhead_target"] else "ABOVE"
    lines.append(
        f"overhead_ratio (alexnet fp32) = (mix + match + loss) / (forward + backward) = "
        f"{sec['overhead_ratio']:.3f}  [{verdict} target <= {sec['overhead_target']}]"
    )
    paper = sec["models"].get("vgg16_bn", {}).get("paper")
    if paper:
        lines.append(
            f"VGG-16 M&M step: {paper['best_s_per_iter']:.2f} s/iter -> {paper['hours_for_8000_iters']:.2f} h "
            f"for 8000 iters (paper: {paper['s_per_iter']:.2f} s/iter, 5.8 h on one TITAN-X; "
            f"x{paper['speedup_vs_paper']:.2f})"
        )
    return lines


def _graph_lines(sec: dict[str, Any]) -> list[str]:
    lines = [
        f"Graph size ({sec['model']} {sec['variant']}, {sec['patches_per_image']} patches/image; Fig. 5 trade-off)"
    ]
    rows = [
        [
            r["target_nodes"],
            r["images"],
            r["nodes"],
            r["graph_ms"],
            r["mix_ms"],
            r["step_ms"],
            r["patches_per_s"],
            r["repeats"],
        ]
        for r in sec["rows"]
    ]
    return lines + _grid(
        ["nodes", "images", "got", "graph ms", "mix ms", "step ms", "patches/s", "reps"], rows
    )


def _finetune_lines(sec: dict[str, Any]) -> list[str]:
    lines = [
        f"Fine-tune step ({sec['model']}, {sec['batch']} x {sec['size'][0]}x{sec['size'][1]}); median ms"
    ]
    phases = ("forward", "loss", "backward", "optimizer", "total")
    rows = [[name, *(r["ms"][p] for p in phases), r["images_per_s"]] for name, r in sec["variants"].items()]
    return lines + _grid(["variant", *phases, "images/s"], rows)


def _throughput_lines(results: dict[str, Any]) -> list[str]:
    s = results.get("summary", {})
    rows = []
    if "mnm_patches_per_s" in s:
        rows.append(
            [
                "M&M tuning step (alexnet fp32)",
                f"{_fmt(s['mnm_patches_per_s'])} patches/s",
                f"{_fmt(s['mnm_images_per_s'])} images/s",
            ]
        )
    if "finetune_images_per_s" in s:
        rows.append(["fine-tune step (alexnet+fcn)", "", f"{_fmt(s['finetune_images_per_s'])} images/s"])
    data = results.get("data", {})
    for n, ips in s.get("loader_images_per_s", {}).items():
        rows.append([f"CamVid loader, {n} workers", "", f"{_fmt(ips)} images/s"])
    if "skipped" in data:
        rows.append(["CamVid loader", "", f"skipped: {data['skipped']}"])
    lines = ["Throughput"] + _grid(["", "", ""], rows)[1:]
    if "loader_is_bottleneck" in s:
        lines.append(
            "-> the loader is the bottleneck"
            if s["loader_is_bottleneck"]
            else "-> the loader keeps up (the training step is the bottleneck)"
        )
    return lines


def render_table(results: dict[str, Any]) -> str:
    """The printed report of a results dict."""
    env = results["env"]
    lines = [
        f"mnm bench on {env['device']}"
        + (f" ({env['cuda_device']})" if env.get("cuda_device") else "")
        + f": {env['cpu']}, {env['threads']} threads; torch {env['torch']}, torchvision {env['torchvision']}, "
        f"lightning {env['lightning']}; load avg {env['loadavg_1m_start']} -> {env.get('loadavg_1m_end')}"
    ]
    load, cores = env.get("loadavg_1m_start"), env.get("cpu_count") or 1
    if load is not None and load > 0.75 * cores:
        lines.append(f"note: the machine is busy (load avg {load} on {cores} CPUs); timings are noisy")
    for name, render in (("mnm", _mnm_lines), ("graph", _graph_lines), ("finetune", _finetune_lines)):
        if name in results:
            lines += ["", *render(results[name])]
    lines += ["", *_throughput_lines(results)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def _previous(path: Path, device: str) -> dict[str, Any]:
    """Sections of an earlier bench.json of the same device (kept when ``--only`` skips them)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict) or old.get("env", {}).get("device") != device:
        return {}
    return {k: old[k] for k in SECTIONS if k in old}


def _images_needed(settings: Settings) -> int:
    """How many M&M input images the selected sections use (0: none)."""
    counts = [settings.images] if "mnm" in settings.only else []
    if "graph" in settings.only:
        counts += [math.ceil(n / settings.scale_patches_per_image) for n in settings.nodes]
    return max(counts, default=0)


def run_bench(settings: Settings) -> dict[str, Any]:
    """Run the selected sections and return the results dict (also written to ``out/bench.json``)."""
    start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    results: dict[str, Any] = {"env": environment(settings), "settings": settings.to_json()}
    path = settings.out / "bench.json"
    if set(settings.only) != set(SECTIONS):
        results.update(_previous(path, results["env"]["device"]))
    needed = _images_needed(settings)
    pool = InputPool(settings, needed) if needed else None
    stamp = {"measured_at": results["env"]["started"]}
    if "mnm" in settings.only:
        results["mnm"] = {**bench_mnm(settings, pool), **stamp}
    if "graph" in settings.only:
        results["graph"] = {**bench_graph(settings, pool), **stamp}
    del pool
    if "finetune" in settings.only:
        results["finetune"] = {**bench_finetune(settings), **stamp}
    if "data" in settings.only:
        results["data"] = {**bench_data(settings), **stamp}
    results["summary"] = summarise(results)
    results["env"]["loadavg_1m_end"] = _loadavg()
    results["env"]["wall_s"] = round(time.perf_counter() - start, 1)
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``mnm bench``: run, write ``<out>/bench.json`` and print the table."""
    settings = parse_args(argv)
    results = run_bench(settings)
    print(render_table(results))
    print(f"\n[mnm] bench: wrote {settings.out / 'bench.json'} in {results['env']['wall_s']} s")
    return results
