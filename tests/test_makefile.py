"""Makefile targets that need no training: ``make wandb-sync`` finds the offline runs the pipelines write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFLINE_RUN = "import sys, wandb; wandb.init(mode='offline', dir=sys.argv[1], project='mnm', id=sys.argv[2]); wandb.finish()"


def make(*args: str, wandb: str = "echo") -> subprocess.CompletedProcess:
    """``make -s`` in the repository, never reinstalling (``-o`` the install stamp); ``wandb`` replaced by echo."""
    return subprocess.run(["make", "-s", "-o", ".venv/.mnm-installed", *args, f"WANDB={wandb}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_wandb_sync_finds_the_offline_runs_of_every_stage(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for stage_dir, run_id in ((runs / "a" / "mix_match", "amm"), (runs / "a" / "finetune", "aft"),
                              (runs / "b" / "finetune", "bft"), (runs / ".superseded-a" / "finetune-old", "old")):
        stage_dir.mkdir(parents=True)
        subprocess.run([sys.executable, "-c", OFFLINE_RUN, str(stage_dir), run_id], env=env, check=True, timeout=60)
    every = make("wandb-sync", f"RUN={runs}")
    assert every.returncode == 0, every.stderr
    synced = every.stdout.splitlines()[-1].split()
    assert synced[0] == "sync" and sorted(Path(p).name.rsplit("-", 1)[1] for p in synced[1:]) == ["aft", "amm", "bft"]
    assert all(Path(p).is_dir() and Path(p).parent.name == "wandb" for p in synced[1:])
    one = make("wandb-sync", f"RUN={runs / 'b'}")
    assert [Path(p).parent.parent for p in one.stdout.splitlines()[-1].split()[1:]] == [runs / "b" / "finetune"]
    none = make("wandb-sync", f"RUN={tmp_path / 'empty'}")
    assert none.returncode == 2 and "no offline W&B runs under" in none.stdout


def test_make_help_describes_the_label_efficient_protocol_of_its_file() -> None:
    from mnm.config import load_pipeline

    line = next(row for row in make("help").stdout.splitlines() if "camvid-label-efficient" in row)
    pipeline = load_pipeline(REPO / "conf/benchmarks/camvid_label_efficient.yaml")
    fractions = [f"1/{round(1 / f)}" if f < 1 else "all" for f in pipeline.protocol["fractions"]]
    assert f"{', '.join(fractions[:-1])} and {fractions[-1]} labels x {len(pipeline.protocol['seeds'])} seeds" in line
    assert f"{len(pipeline.report['arms'])} arms" in line


def test_wandb_sync_gives_up_after_its_timeout_with_a_message(tmp_path: Path) -> None:
    """A ``wandb sync`` that hangs (no network) is stopped after ``WANDB_SYNC_TIMEOUT`` seconds."""
    (tmp_path / "runs" / "a" / "finetune" / "wandb" / "offline-run-20260101_000000-aft").mkdir(parents=True)
    hanging = tmp_path / "wandb"
    hanging.write_text("#!/bin/sh\nsleep 60\n")
    hanging.chmod(0o755)
    done = make("wandb-sync", f"RUN={tmp_path / 'runs'}", "WANDB_SYNC_TIMEOUT=1", wandb=str(hanging))
    assert done.returncode != 0
    assert "error: wandb sync did not end within WANDB_SYNC_TIMEOUT=1 s" in done.stdout
