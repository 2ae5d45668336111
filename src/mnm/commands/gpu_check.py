"""``mnm gpu-check``: a first GPU session's checks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from mnm.experiments import gpu_check as gpu_check_module
from mnm.experiments.gpu_check import run_checks, write_summary

DESCRIPTION = gpu_check_module.__doc__ or ""  # the help text is the module's docstring


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
