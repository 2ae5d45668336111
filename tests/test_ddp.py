"""Two CPU processes under ``strategy: ddp`` (the subprocess launcher, gloo): faults on one rank end every rank."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from test_pipeline import TINY, manifest, mnm_cmd, subprocess_env

from mnm.weights.checkpoints import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def run_two_ranks(out: Path, data_root: Path, *sets: str, pipeline: Path = TINY,
                  only: str = "mix_match") -> subprocess.CompletedProcess:
    """``mnm pipeline run PIPELINE --only ONLY`` on 2 gloo processes launched as subprocesses (``strategy: ddp``)."""
    cmd = mnm_cmd("pipeline", "run", str(pipeline), "--out", str(out), "--only", only, "--set", f"data_root={data_root}",
                  "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp", *[a for s in sets for a in ("--set", s)])
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def fault(name: str, **args: int) -> str:
    return f"stages.mix_match.trainer.callbacks=[{json.dumps({'class_path': f'faults.{name}', 'init_args': args})}]"


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_sigterm_on_one_rank_checkpoints_on_all_and_ends_both(rank: int, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = run_two_ranks(out, tmp_path / "data", "steps=20", fault("SigtermAt", step=2, rank=rank),
                         "stages.mix_match.model.global_graph=true")  # one graph over both ranks' patches
    assert done.returncode == 143, done.stderr[-3000:]
    assert "interrupted by SIGTERM" in done.stderr
    entry = manifest(out)["stages"]["mix_match"]
    assert entry["status"] == "interrupted"
    last = read_checkpoint(out / "mix_match" / "checkpoints" / "last.ckpt")
    assert 3 <= last["global_step"] < 20 and "optimizer_states" in last


@pytest.mark.slow
def test_nan_on_one_rank_ends_both_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = run_two_ranks(out, tmp_path / "data", "steps=20", fault("PoisonWeightsAt", step=3, rank=1))
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("mnm: error:")]
    assert len(errors) == 1 and "stage 'mix_match': loss is nan at step 3" in errors[0], done.stderr[-3000:]
    assert manifest(out)["stages"]["mix_match"]["status"] == "failed"
    good = read_checkpoint(out / "mix_match" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_pixel_contrast_with_a_layer_it_never_uses_runs_under_ddp(tmp_path: Path) -> None:
    """tiny_pixcon (feature_maps: [3], conv5 unused) on 2 ranks without find_unused_parameters."""
    out = tmp_path / "run"
    done = run_two_ranks(out, tmp_path / "data", "steps=2", pipeline=TINY.with_name("tiny_pixcon.yaml"),
                         only="pixel_contrast")
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest(out)["stages"]["pixel_contrast"]["status"] == "finished"
    ranks = read_checkpoint(out / "pixel_contrast" / "checkpoints" / "last.ckpt")["callbacks"]["RNGStateCheckpoint"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # each rank its own stream
