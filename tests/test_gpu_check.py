"""``mnm gpu-check``: refuses at once without CUDA; its checks run on the CPU as well (CPU against itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnm.experiments import gpu_check

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path: Path) -> None:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mnm", "gpu-check", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 1 and time.perf_counter() - start < 60
    assert done.stderr.startswith("mnm: error: gpu-check needs a CUDA GPU; torch "), done.stderr
    assert not list(tmp_path.iterdir())


def test_agreement_draws_and_loss_on_the_cpu() -> None:
    result = gpu_check.check_agreement("cpu", images=2, size=128, patches_per_image=4)
    assert result["patches"] == 8 and result["patches_max_diff"] == 0 and result["loss_fp32_error"] == 0
    assert result["loss_bf16_error"] < gpu_check.TOLERANCE["bf16"] * max(1.0, result["loss_cpu"])


def test_release_step_timing_projects_8000_iterations() -> None:
    result = gpu_check.time_release_step("vgg16", "cpu", size=96, repeats=1, shape=("alexnet", 2, 3, 4))
    assert result["micro_batches"] == 4 and result["paper_hours"] == 5.8
    assert result["mix_host_syncs"] is None  # counted on CUDA only
    update = result["update_s"]
    assert update > 0 and result["hours_8000"] == round(update * 8000 / 3600, 2)
    assert update == pytest.approx(4 * (result["mix_s"] + result["forward_s"] + result["backward_s"]), abs=1e-3)


def test_pixel_contrast_bf16_error_is_small_and_the_summaries_are_written(tmp_path: Path) -> None:
    error = gpu_check.pixel_contrast_bf16_error("cpu", pixels=256, dim=32)
    assert 0 < error["error"] < 0.05  # the projection runs in bf16; the similarities and the loss in fp32
    results = {"env": gpu_check.environment(), "pixel_contrast_bf16": {"ok": True, **error},
               "tiny": {"ok": False, "error": "GpuCheckError: boom"}}
    json_path, md_path = gpu_check.write_summary(results, tmp_path)
    assert json.loads(json_path.read_text())["pixel_contrast_bf16"]["error"] == error["error"]
    assert "| pixel_contrast_bf16 | ok |" in md_path.read_text() and "| tiny | FAILED: GpuCheckError: boom |" in md_path.read_text()
