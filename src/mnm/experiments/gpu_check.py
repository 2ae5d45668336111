"""``mnm gpu-check``: what a first GPU session must confirm, in about ten minutes on one GPU.

Prints the environment (torch, CUDA, cuDNN, TF32, bf16) and checks, each a section of
``<out>/gpu_check.json`` and ``<out>/gpu_check.md``:

- ``agreement``: CPU and CUDA draw the same patches, labels and triplets from one generator, and
  give the same M&M loss (within 1e-2 in fp32, 5e-2 under bf16 autocast);
- ``steps``: VGG-16 (16 × 9 patches, 4 micro-batches per update) and AlexNet (40 × 10) M&M steps
  with the release's patch quota on 512² crops: mix / forward / backward times and the projected
  8,000 iterations against the paper's 5.8 h / 3.5 h;
- ``pixel_contrast_bf16``: the pixel-contrast loss under bf16 autocast against fp32;
- ``tiny``: ``conf/pipelines/tiny.yaml --set trainer=gpu`` end to end; ``speed``: ``mnm speed --device cuda --quick``;
- with two GPUs or more: ``global_graph``, the NCCL gradient of one graph across ranks against the whole
  graph's on one process, and ``tiny_ddp``, the tiny pipeline under ``trainer=ddp`` on 2 GPUs.

Without CUDA it stops at once. The check functions take a device, so the tests run them on the CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mnm.methods.losses import TripletLoss, within_image_pixel_contrastive_loss
from mnm.methods.match import Nodes, gather_nodes, graph_triplets, sample_triplets
from mnm.utils.files import atomic_write_text
from mnm.utils.paths import repo_root

REPO = repo_root() or Path.cwd()  # the checkout: conf/ files and `python -m mnm` run there
#: hours the paper reports for 8,000 M&M iterations (one update = 4 micro-batches for VGG-16)
PAPER_HOURS = {"vgg16": 5.8, "alexnet": 3.5}
#: the release's M&M steps: backbone, images per micro-batch, patches per image, micro-batches per update
RELEASE_STEPS = {"vgg16": ("vgg16_bn", 16, 9, 4), "alexnet": ("alexnet_caffe", 40, 10, 1)}
TOLERANCE = {"fp32": 1e-2, "bf16": 5e-2}


class GpuCheckError(RuntimeError):
    """A GPU check that failed; the message names the check and the numbers."""


def environment() -> dict[str, Any]:
    """torch, CUDA, cuDNN, TF32 and bf16 support, and the GPUs."""
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "bf16": cuda and torch.cuda.is_bf16_supported(), "gpus": [torch.cuda.get_device_name(i) for i in
                                                                  range(torch.cuda.device_count())] if cuda else [],
    }  # fmt: skip


def synthetic_batch(images: int, size: int, classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images in [0, 1] and masks of square class regions with background 0 and an ignore border."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(images, 3, size, size, generator=generator)
    coarse = torch.randint(0, classes, (images, 1, 8, 8), generator=generator).float()
    mask = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    mask[:, :2] = 255
    return {"image": image, "mask": mask}


def _mix_match(backbone: str, patches_per_image: int, out_size: int = 128) -> Any:
    """An M&M stage with the release's settings: its patch quota, mean fill, loss / 2N and Caffe BGR input."""
    from mnm.stages.mix_match import MixMatchStage

    options = {"input_norm": "caffe_bgr", **({"bn_affine": False} if backbone == "alexnet_caffe" else {})}
    return MixMatchStage(backbone=backbone, patches_per_image=patches_per_image, patch_quota="release",
                         patch_fill="mean", loss_normalization="release", patch_out_size=out_size, knn_probe=False,
                         backbone_kwargs=options)  # fmt: skip


def check_agreement(device: str, images: int = 8, size: int = 256, patches_per_image: int = 9) -> dict[str, Any]:
    """CPU vs ``device``: the same patches, labels and triplets, and the M&M loss in fp32 and under bf16."""
    batch = synthetic_batch(images, size)
    torch.manual_seed(0)
    stage = _mix_match("alexnet", patches_per_image, out_size=96).eval()
    on = {"cpu": (stage, batch), device: (_copy_to(stage, device), {k: v.to(device) for k, v in batch.items()})}
    drawn = {}
    for where, (module, data) in on.items():
        patches = module.mix(data, torch.Generator().manual_seed(7))
        triplets = graph_triplets(patches.labels.cpu(), generator=torch.Generator().manual_seed(7))
        drawn[where] = (patches, triplets)
    (cpu, cpu_triplets), (dev, dev_triplets) = drawn["cpu"], drawn[device]
    result: dict[str, Any] = {"patches": int(cpu.labels.numel())}
    if not (torch.equal(cpu.labels, dev.labels.cpu()) and torch.equal(cpu_triplets, dev_triplets)):
        raise GpuCheckError(f"agreement: the {device} draws other patch labels or triplets than the CPU")
    result["boxes_max_diff"] = float((cpu.boxes - dev.boxes.cpu()).abs().max())
    result["patches_max_diff"] = float((cpu.patches - dev.patches.cpu()).abs().max())
    loss = TripletLoss(margin=2.1, reduction="release")
    with torch.no_grad():
        reference = float(loss(stage.backbone.embed(cpu.patches), cpu_triplets).loss)
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            with torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
                value = float(loss(on[device][0].backbone.embed(dev.patches), dev_triplets.to(device)).loss)
            result[f"loss_{precision}"], result[f"loss_{precision}_error"] = value, abs(value - reference)
            if abs(value - reference) > TOLERANCE[precision] * max(1.0, abs(reference)):
                raise GpuCheckError(f"agreement: M&M loss {value:.4f} on {device} ({precision}) vs {reference:.4f} "
                                    f"on the CPU; tolerance {TOLERANCE[precision]}")
    result["loss_cpu"] = reference
    return result


def _copy_to(stage: Any, device: str) -> Any:
    import copy

    return copy.deepcopy(stage).to(device)


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def host_syncs(call: Callable[[], Any], device: str) -> int | None:
    """How many times ``call`` makes the host wait for ``device`` (CUDA's sync debug mode); None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def time_release_step(name: str, device: str, size: int = 512, repeats: int = 3,
                      shape: tuple[str, int, int, int] | None = None) -> dict[str, Any]:
    """Mix / forward / backward seconds of one micro-batch of ``name``'s release M&M step, and its 8,000 iterations."""
    backbone, images, per_image, micro = shape or RELEASE_STEPS[name]
    stage = _mix_match(backbone, per_image).to(device).train()
    batch = {k: v.to(device) for k, v in synthetic_batch(images, size).items()}
    laps: dict[str, list[float]] = {"mix": [], "forward": [], "backward": []}
    for i in range(repeats + 1):  # the first run warms up (cuDNN autotuning, allocations)
        times = []
        _synchronize(device)
        start = time.perf_counter()
        patches = stage.mix(batch, stage.step_generator(i))
        for phase in ("mix", "forward", "backward"):
            if phase == "forward":
                triplets = graph_triplets(patches.labels.cpu(), generator=stage.step_generator(i)).to(device)
                loss = stage.loss_fn(stage.backbone.embed(patches.patches), triplets).loss
            elif phase == "backward":
                loss.backward()
                stage.zero_grad(set_to_none=True)
            _synchronize(device)
            times.append(time.perf_counter())
        if i:
            for phase, end, begin in zip(laps, times, [start, *times[:-1]], strict=True):
                laps[phase].append(end - begin)
    seconds = {phase: sorted(values)[len(values) // 2] for phase, values in laps.items()}
    step = sum(seconds.values()) * micro
    syncs = host_syncs(lambda: stage.mix(batch, stage.step_generator(0)), device)
    return {"backbone": backbone, "images": images, "patches_per_image": per_image, "micro_batches": micro,
            **{f"{k}_s": round(v, 4) for k, v in seconds.items()}, "mix_host_syncs": syncs, "update_s": round(step, 4),
            "hours_8000": round(step * 8000 / 3600, 2), "paper_hours": PAPER_HOURS.get(name)}  # fmt: skip


def pixel_contrast_bf16_error(device: str, pixels: int = 1024, dim: int = 256) -> dict[str, float]:
    """The pixel-contrast loss under bf16 autocast against fp32 on ``device`` (features from a bf16 projection)."""
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(2, pixels, dim, generator=generator).to(device)
    labels = torch.randint(0, 8, (2, pixels), generator=generator).to(device)
    weight = torch.randn(dim, dim, generator=generator).to(device) / dim**0.5
    reference = within_image_pixel_contrastive_loss(torch.nn.functional.normalize(raw @ weight, dim=2), labels, [255], 0.07)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        value = within_image_pixel_contrastive_loss(torch.nn.functional.normalize(raw @ weight, dim=2), labels, [255], 0.07)
    return {"loss_fp32": float(reference), "loss_bf16": float(value), "error": abs(float(value) - float(reference))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_graph_rank(
    rank: int, world: int, port: int, backend: str, inputs: list, labels: list, out: str, sampler: str
) -> None:
    """One rank of a DDP step over a graph gathered from every rank; gradients and triplets to ``out/<rank>.pt``."""
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    torch.manual_seed(0)
    net = torch.nn.Linear(inputs[0].shape[1], 4).to(device)
    ddp = DistributedDataParallel(net)  # kept alive: its reducer averages the gradients in backward
    images = torch.arange(len(labels[rank]), device=device) // 2  # two patches per image
    embeddings, nodes, images = gather_nodes(ddp(inputs[rank].to(device)), labels[rank].to(device), images)
    generator = torch.Generator().manual_seed(5)  # the step's seed, not the rank's
    triplets = sample_triplets(sampler, Nodes(nodes.cpu(), images.cpu(), embeddings.detach()), 2.1, generator)
    TripletLoss(margin=2.1)(embeddings, triplets.to(device)).loss.backward()
    torch.save({"grads": [p.grad.cpu() for p in net.parameters()], "triplets": triplets}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def check_global_graph(backend: str, out: Path, sampler: str = "graph") -> dict[str, Any]:
    """2 ranks with 5 and 7 nodes: the same triplets on both, and DDP's gradient equals the whole graph's.

    ``sampler`` names the triplet sampler (:data:`mnm.methods.match.TRIPLET_SAMPLERS`); ``semihard`` chooses its
    negatives on the gathered embeddings, so it checks that the choice runs over every rank's nodes.
    """
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(5, 8, generator=generator), torch.randn(7, 8, generator=generator)]
    labels = [torch.tensor([0, 1, 1, 2, 0]), torch.tensor([2, 2, 1, 0, 3, 3, 1])]
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_global_graph_rank, args=(2, _free_port(), backend, inputs, labels, str(out), sampler), nprocs=2)
    ranks = [torch.load(out / f"{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 4)
    embeddings = net(torch.cat(inputs))
    images = torch.cat([torch.arange(len(x)) // 2 * 2 + r for r, x in enumerate(labels)])  # image * world + rank
    nodes = Nodes(torch.cat(labels), images, embeddings.detach())
    triplets = sample_triplets(sampler, nodes, 2.1, torch.Generator().manual_seed(5))
    TripletLoss(margin=2.1)(embeddings, triplets).loss.backward()
    error = max(float((got - p.grad).abs().max()) for r in ranks for got, p in zip(r["grads"], net.parameters(),
                                                                                      strict=True))
    same = all(torch.equal(r["triplets"], triplets) for r in ranks)
    if not same or error > 1e-4:
        raise GpuCheckError(
            f"global_graph ({backend}, {sampler}): same triplets on every rank: {same}; gradient error {error:.2e}"
        )
    return {"backend": backend, "sampler": sampler, "triplets": len(triplets), "gradient_max_error": error}


def _mnm(out: Path, *args: str, timeout: int = 300) -> dict[str, Any]:
    """``python -m mnm ARGS`` (W&B off); its exit status, seconds and the end of its output."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mnm", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_MODE": "disabled"})
    result = {"command": "mnm " + " ".join(args), "returncode": done.returncode,
              "seconds": round(time.perf_counter() - start, 1), "output_tail": (done.stdout + done.stderr)[-1500:]}
    if done.returncode:
        raise GpuCheckError(f"{result['command']} failed ({done.returncode}): {done.stderr[-500:]}")
    return result


def tiny_pipeline(out: Path, *sets: str) -> dict[str, Any]:
    """conf/pipelines/tiny.yaml with ``sets``, end to end, and its evaluation."""
    result = _mnm(out, "pipeline", "run", str(REPO / "conf/pipelines/tiny.yaml"), "--out", str(out),
                  "--set", f"data_root={out / 'data'}", *[a for s in sets for a in ("--set", s)])
    result["eval"] = json.loads((out / "finetune" / "metrics.json").read_text())["eval"]["miou"]
    return result


def run_checks(out: Path, device: str = "cuda") -> dict[str, Any]:
    """Every check on ``device``; a failed one is recorded with its error and the others still run."""
    checks: dict[str, Callable[[], Any]] = {
        "agreement": lambda: check_agreement(device),
        "steps": lambda: {name: time_release_step(name, device) for name in RELEASE_STEPS},
        "pixel_contrast_bf16": lambda: pixel_contrast_bf16_error(device),
        "tiny": lambda: tiny_pipeline(out / "tiny", "trainer=gpu"),
        "speed": lambda: _mnm(out, "speed", "--device", device, "--quick", "--out", str(out / "speed"), timeout=240),
    }
    if torch.cuda.device_count() >= 2:
        checks["global_graph"] = lambda: check_global_graph("nccl", out / "global_graph")
        checks["global_semihard"] = lambda: check_global_graph("nccl", out / "global_semihard", "semihard")
        checks["tiny_ddp"] = lambda: tiny_pipeline(out / "tiny_ddp", "trainer=ddp", "trainer.devices=2")
    results: dict[str, Any] = {"env": environment()}
    print(json.dumps(results["env"], indent=1), flush=True)
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **_as_dict(check())}
        except Exception as err:  # noqa: BLE001 - every check reports, the summary shows which failed
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        results[name]["check_s"] = round(time.perf_counter() - start, 1)
        print(f"[mnm] gpu-check {name}: {'ok' if results[name]['ok'] else results[name]['error']}", flush=True)
    return results


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"value": value}


def write_summary(results: dict[str, Any], out: Path) -> list[Path]:
    """``gpu_check.json`` and ``gpu_check.md`` (a line per check, the step projections as a table)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# mnm gpu-check", "", f"torch {results['env']['torch']}, CUDA {results['env']['cuda']}, "
             f"cuDNN {results['env']['cudnn']}, bf16 {results['env']['bf16']}, GPUs: {results['env']['gpus']}", "",
             "| check | result |", "|---|---|"]  # fmt: skip
    for name, value in results.items():
        if name != "env":
            lines.append(f"| {name} | {'ok' if value.get('ok') else 'FAILED: ' + str(value.get('error'))} |")
    steps = results.get("steps", {})
    if steps.get("ok"):
        lines += ["", "| network | mix s | mix host syncs | forward s | backward s | update s | 8,000 iterations (h) "
                  "| paper (h) |", "|---|---|---|---|---|---|---|---|"]
        for name in RELEASE_STEPS:
            s = steps[name]
            lines.append(f"| {name} | {s['mix_s']} | {s['mix_host_syncs']} | {s['forward_s']} | {s['backward_s']} | {s['update_s']} | "
                         f"{s['hours_8000']} | {s['paper_hours']} |")
    paths = [out / "gpu_check.json", out / "gpu_check.md"]
    atomic_write_text(paths[0], json.dumps(results, indent=1, default=str))
    atomic_write_text(paths[1], "\n".join(lines) + "\n")
    return paths
