"""The measured sections of ``mnm speed``: M&M step, graph scaling, fine-tune step, data loading.

The M&M and fine-tune timings run the stages' own ``training_step`` with a phase timer
(:attr:`mnm.stages.base.BaseStage.phase_timer`) that records a lap per phase; the benchmark adds
only the backward pass and the optimiser step, as Lightning's loop does.

(About 370 lines: one function per timed section of `mnm speed`, each short; together they are what `--only`
selects from.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import math
import os
import platform
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mnm.experiments.speed.inputs import (
    NUM_CLASSES,
    InputPool,
    Variant,
    peak_memory,
    release,
    reset_peak,
    synthetic_batch,
    variants_for,
)
from mnm.experiments.speed.settings import Settings
from mnm.experiments.speed.timing import Laps, time_call, time_laps
from mnm.methods.mix import PatchSampler, crop_patches

__all__ = [
    "MNM_PHASES", "bench_data", "bench_finetune", "bench_graph", "bench_mnm", "build_mnm_stage", "environment",
    "stage_step", "summarise",
]

#: Zhan et al.: 5.8 h for 8,000 VGG-16 M&M iterations on one TITAN-X
PAPER_VGG16_S_PER_ITER = 5.8 * 3600 / 8000
OVERHEAD_TARGET = 0.05
CAMVID_CPU_SCALE = (0.4, 0.7)  # conf/data/camvid_cpu.yaml
#: the laps of an M&M step (the stage's phases, then backward and the optimiser step)
MNM_PHASES = ("mix", "match", "forward", "loss", "backward", "optimizer", "total")
FINETUNE_PHASES = ("forward", "loss", "backward", "optimizer", "total")


# ---------------------------------------------------------------------------------- environment
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def loadavg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
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
        "loadavg_1m_start": loadavg(),
        "cuda_device": None,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env


# ------------------------------------------------------------------------------- the stage's step
@contextlib.contextmanager
def _without_trainer_log_warning() -> Iterator[None]:
    """A stage's ``self.log`` warns (and logs nothing) without a Trainer; the benchmark has none."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are trying to `self.log")
        yield


def stage_step(
    stage: Any, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor], variant: Variant
) -> Callable[[Laps], None]:
    """One training step of ``stage``: its own ``training_step`` (phases timed), backward, optimiser step.

    ``training_step`` runs without a Trainer, so at global step 0: an M&M stage draws the same patches
    in every run.
    """
    device = batch["image"].device
    inputs = {**batch, "image": variant.prepare_input(batch["image"])}

    def run(laps: Laps) -> None:
        stage.phase_timer = laps
        with _without_trainer_log_warning(), variant.autocast(device):
            loss = stage.training_step(inputs, 0)
        with laps("backward"):
            loss.backward()
        with laps("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def _measure(stage: Any, batch: dict[str, Tensor], variant: Variant, settings: Settings, warmup: int,
             repeats: int, budget_s: float | None = None) -> tuple[dict[str, float], int]:
    """Median ms per phase of :func:`stage_step` and the number of timed runs."""
    device = settings.torch_device
    stage = variant.prepare_module(stage, device)
    stage.train()
    optimizer = stage.configure_optimizers()["optimizer"]
    reset_peak(device)
    ms, done = time_laps(stage_step(stage, optimizer, batch, variant), device, warmup=warmup, repeats=repeats,
                         budget_s=budget_s)
    return ms, done


# ---------------------------------------------------------------------------------- M&M section
def build_mnm_stage(backbone: str, settings: Settings, patches_per_image: int) -> Any:
    """A MixMatchStage (graph triplets, paper's optimiser) with the benchmark's patch settings."""
    from mnm.stages.mix_match import MixMatchStage

    torch.manual_seed(0)
    return MixMatchStage(
        backbone=backbone,
        triplets="graph",
        patches_per_image=patches_per_image,
        patch_size_range=settings.patch_size_range,
        patch_out_size=settings.patch_out_size,
        background_class=None,  # CamVid has no background class
    )


def overhead_ratio(ms: dict[str, float]) -> float:
    """``(mix + match + loss) / (forward + backward)``."""
    return (ms["mix"] + ms["match"] + ms["loss"]) / (ms["forward"] + ms["backward"])


def measure_mnm(
    stage: Any, variant: Variant, batch: dict[str, Tensor], settings: Settings, warmup: int, repeats: int
) -> dict[str, Any]:
    """Time M&M steps of ``stage`` on ``batch``; phases in ms, patches/s and the overhead ratio.

    Timed runs stop early once ``settings.step_budget_s`` has passed (at least one is made). A step
    with fewer than 2 nodes takes the stage's no-match path: its match and loss laps are 0 ms.
    """
    device = settings.torch_device
    with torch.no_grad():  # the nodes of the step: the stage draws the same patches in every run
        n = stage.mix(batch, stage.step_generator(0)).labels.numel()
    ms, done = _measure(stage, batch, variant, settings, warmup, repeats, settings.step_budget_s)
    ms = {p: ms.get(p, 0.0) for p in MNM_PHASES}
    result = {
        "warmup": warmup,
        "repeats": done,
        "nodes": n,
        "ms": ms,
        "patches_per_s": n / ms["total"] * 1e3,
        "images_per_s": len(batch["image"]) / ms["total"] * 1e3,
        "overhead_ratio": overhead_ratio(ms),
        **peak_memory(device),
    }
    del stage
    release(device)
    return result


def mix_crop_ms(batch: dict[str, Tensor], sampler: PatchSampler, settings: Settings, warmup: int,
                repeats: int) -> dict[str, float]:
    """Profile of mix: the time of its crop against the whole.

    The crop is timed as the same :func:`mnm.methods.mix.crop_patches` call the sampler makes, on boxes it
    sampled; the rest of mix is centre sampling and the overlap filter.
    """
    device = settings.torch_device
    generator = torch.Generator().manual_seed(0)
    mix = time_call(lambda: sampler.sample(batch["image"], batch["mask"], generator), device, warmup=warmup,
                    repeats=repeats)
    boxes = sampler.sample(batch["image"], batch["mask"], generator).boxes
    crop = time_call(lambda: crop_patches(batch["image"], boxes, sampler.out_size), device, warmup=warmup,
                     repeats=repeats)
    return {"mix_ms": mix, "crop_ms": crop, "crop_share": crop / mix}


def bench_mnm(settings: Settings, pool: InputPool) -> dict[str, Any]:
    """The M&M step of AlexNet (and VGG-16 unless quick on CPU) for every variant of the device."""
    device = settings.torch_device
    batch = pool.take(settings.images)
    ppi = settings.patches_per_image
    models: dict[str, dict[str, Any]] = {"alexnet": {}}
    for variant in variants_for(device):
        stage = build_mnm_stage("alexnet", settings, ppi)
        models["alexnet"][variant.name] = measure_mnm(
            stage, variant, batch, settings, settings.warmup, settings.repeats
        )
    sampler = stage.sampler
    if settings.vgg:
        # on CPU one VGG-16 step takes minutes: no warm-up, and the step budget allows one timed run
        warmup = settings.warmup if device.type == "cuda" else 0
        models["vgg16_bn"] = {
            v.name: measure_mnm(build_mnm_stage("vgg16_bn", settings, ppi), v, batch, settings, warmup,
                                settings.repeats)
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
        "patches_per_image": ppi,
        "patch_out_size": sampler.out_size,
        "patch_size_range": list(sampler.size_range),
        "models": models,
        "mix_profile": mix_crop_ms(batch, sampler, settings, settings.warmup, settings.repeats),
        "overhead_ratio": models["alexnet"]["fp32"]["overhead_ratio"],
        "overhead_target": OVERHEAD_TARGET,
    }


# -------------------------------------------------------------------------------- graph section
def _graph_build_ms(stage: Any, batch: dict[str, Tensor], settings: Settings) -> float:
    """Median ms of the stage's triplet builder (on CPU, as the stage runs it) over its patches of ``batch``."""
    from mnm.methods.match import Nodes, sample_triplets

    generator = torch.Generator().manual_seed(0)
    patches = stage.sampler.sample(batch["image"], batch["mask"], generator)
    embeddings = torch.randn(len(patches.labels), 256, generator=generator)  # semihard's distances; no forward
    nodes = Nodes(patches.labels.cpu(), patches.image_index.cpu(), embeddings)
    return time_call(
        lambda: sample_triplets(stage.hparams.triplets, nodes, stage.hparams.margin, generator),
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
        stage = build_mnm_stage("alexnet", settings, ppi)
        graph_ms = _graph_build_ms(stage, batch, settings)
        step = measure_mnm(stage, Variant("fp32"), batch, settings, settings.warmup, settings.repeats)
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
        del batch, stage
        release(device)
    return {"model": "alexnet", "variant": "fp32", "patches_per_image": ppi, "rows": rows}


# ----------------------------------------------------------------------------- fine-tune section
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
        stage = SegmentStage(backbone="alexnet", num_classes=NUM_CLASSES)
        ms, _ = _measure(stage, batch, variant, settings, settings.warmup, settings.repeats)
        variants[variant.name] = {
            "ms": {p: ms.get(p, 0.0) for p in FINETUNE_PHASES},
            "images_per_s": settings.finetune_batch / ms["total"] * 1e3,
            **peak_memory(device),
        }
        del stage
        release(device)
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
