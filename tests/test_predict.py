"""``mnm predict``: masks at the input size from a trained segment stage, and no write into any stage folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_fixtures import random_image
from PIL import Image
from run_fixtures import REPO, TinyRun, mnm_cli, tiny_run_fixture  # noqa: F401

from mnm.experiments.predict import predict


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture()
def images(tiny_run: TinyRun, tmp_path: Path) -> Path:
    """Two synthetic val images (96x96) and an odd-sized one in a subfolder (70x130)."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in sorted((tiny_run.data_root / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copy(name, folder)
    Image.fromarray(random_image((70, 130))).save(folder / "sub" / "odd.png")
    return folder


@pytest.mark.slow
def test_masks_have_the_input_size_with_val_size_and_the_stage_folder_is_untouched(
    tiny_run: TinyRun, images: Path, tmp_path: Path
) -> None:
    stage = tmp_path / "ft_random"
    shutil.copytree(tiny_run.run_dir / "ft_random", stage)
    config = yaml.safe_load((stage / "config.yaml").read_text())
    config["data"]["init_args"]["val_size"] = [64, 72]  # the network sees 64x72; masks must not
    (stage / "config.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(stage)
    out = tmp_path / "masks"
    proc = mnm_cli("predict", str(stage), str(images), "--out", str(out), "--overlays", "--probs",
                   "--batch-size", "2")
    assert "wrote 3 mask(s)" in proc.stdout
    assert snapshot(stage) == before
    for name, size in (("sub/odd", (70, 130)), *((p.stem, (96, 96)) for p in images.glob("*.jpg"))):
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P" and (mask.height, mask.width) == size
        probs = np.load(out / "probs" / f"{name}.npy")
        assert probs.shape == (6, *size) and probs.dtype == np.float16
        np.testing.assert_array_equal(np.asarray(mask), probs.astype(np.float32).argmax(0))
        assert Image.open(out / "overlays" / f"{name}.jpg").size == mask.size


def test_out_inside_the_stage_folder_and_other_stages_are_refused(tiny_run: TinyRun, images: Path) -> None:
    stage = tiny_run.run_dir / "ft_random"
    with pytest.raises(ValueError, match="inside the stage folder"):
        predict(stage, images, stage / "masks")
    assert not (stage / "masks").exists()
    with pytest.raises(ValueError, match="masks come from segment stages"):
        predict(tiny_run.run_dir / "mm_graph", images, images.parent / "out")


@pytest.mark.slow
def test_stage_cli_validate_keeps_the_training_log_and_predict_needs_a_writer(tiny_run: TinyRun, images: Path) -> None:
    stage = tiny_run.run_dir / "ft_random"
    before = snapshot(stage)
    ckpt = str(stage / "checkpoints" / "last.ckpt")
    mnm_cli("segment", "validate", "-c", str(stage / "config.yaml"), "--ckpt_path", ckpt)
    assert snapshot(stage) == before  # no CSV logger reopened (it would wipe csv/metrics.csv), no config saved
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "mnm", "segment", "predict", "-c", str(stage / "config.yaml"), "--ckpt_path", ckpt,
         "--data.init_args.predict_dir", str(images)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "mnm: error: mnm segment predict writes nothing without a prediction writer" in proc.stderr
    assert snapshot(stage) == before
