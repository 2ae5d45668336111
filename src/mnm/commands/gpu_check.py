"""``mnm gpu-check``: a first GPU session's checks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from mnm.experiments.gpu_check import run_checks, write_summary

DESCRIPTION = "``mnm gpu-check``: what a first GPU session must confirm, in about ten minutes on one GPU.\n\nPrints the environment (torch, CUDA, cuDNN, TF32, bf16) and checks, each a section of\n``<out>/gpu_check.json`` and ``<out>/gpu_check.md``:\n\n- ``agreement``: CPU and CUDA draw the same patches, labels and triplets from one generator, and\n  give the same M&M loss (within 1e-2 in fp32, 5e-2 under bf16 autocast);\n- ``steps``: VGG-16 (16 × 9 patches, 4 micro-batches per update) and AlexNet (40 × 10) M&M steps\n  with the release's patch quota on 512² crops: mix / forward / backward times and the projected\n  8,000 iterations against the paper's 5.8 h / 3.5 h;\n- ``pixel_contrast_bf16``: the pixel-contrast loss under bf16 autocast against fp32;\n- ``tiny``: ``conf/pipelines/tiny.yaml --set trainer=gpu`` end to end; ``speed``: ``mnm speed --device cuda --quick``;\n- with two GPUs or more: ``global_graph``, the NCCL gradient of one graph across ranks against the whole\n  graph's on one process, and ``tiny_ddp``, the tiny pipeline under ``trainer=ddp`` on 2 GPUs.\n\nWithout CUDA it stops at once. The check functions take a device, so the tests run them on the CPU."


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``mnm gpu-check [--out DIR]``: stops at once without CUDA; otherwise runs every check and writes the summaries."""
    parser = argparse.ArgumentParser(prog="mnm gpu-check", description=DESCRIPTION.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="where the summaries go")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise RuntimeError(f"gpu-check needs a CUDA GPU; torch {torch.__version__} (CUDA build {torch.version.cuda}) "
                           "sees none on this machine")
    results = run_checks(args.out)
    paths = write_summary(results, args.out)
    print(paths[1].read_text())
    failed = [name for name, value in results.items() if name != "env" and not value.get("ok")]
    if failed:
        raise RuntimeError(f"gpu-check: {len(failed)} check(s) failed: {', '.join(failed)} (see {paths[0]})")
    return results
