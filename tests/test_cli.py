"""The ``mnm`` command as a new user meets it: a fast ``--help``, seeded runnable defaults, no library noise."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def mnm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnm", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_help_is_fast_and_loads_neither_torch_nor_lightning() -> None:
    probe = "import sys; from mnm.cli import main; main(['--help']); print([m for m in ('torch', 'lightning') if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("[]"), proc.stdout + proc.stderr
    start = time.perf_counter()
    proc = mnm("--help")
    assert proc.returncode == 0 and "mnm predict STAGE_DIR" in proc.stdout
    assert time.perf_counter() - start < 2.0


def test_print_config_is_seeded_and_runs_a_finite_schedule() -> None:
    proc = mnm("mix-match", "fit", "--print_config")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "seed_everything: 0" in lines and "  max_steps: 8000" in lines
    assert "seed_everything: true" not in lines


def test_a_stage_command_prints_no_library_noise(tmp_path: Path) -> None:
    proc = mnm("segment", "fit", "--data", "mnm.datamodules.SyntheticDataModule", f"--data.root={tmp_path / 'data'}",
               "--data.num_train=4", "--data.num_val=2", "--data.image_size=[96, 96]", "--data.crop_size=[80, 80]",
               "--data.batch_size=2", "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
               f"--trainer.default_root_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    for noise in ("args parameter is intended", "LeafSpec", "litlogger"):
        assert noise not in output, output
