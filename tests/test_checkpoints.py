"""Checkpoint reading: a damaged or foreign file is told apart from one that needs unpickling; neither
message ever suggests switching the weights-only safety off."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from mnm.cli import main
from mnm.utils.files import atomic_torch_save, atomic_write_text
from mnm.weights.checkpoints import CheckpointError, read_checkpoint


class Payload:
    """Loading an instance of this needs arbitrary unpickling."""


def damaged_files(folder: Path) -> dict[str, Path]:
    """Files that are no usable checkpoint: random bytes, text, empty, a cut-off checkpoint, a plain pickle."""
    torch.save({"state_dict": {"w": torch.ones(500)}}, folder / "good.ckpt")
    good = (folder / "good.ckpt").read_bytes()
    contents = {"garbage": bytes(range(256)) * 4, "text": b"hello\n", "empty": b"", "cut": good[: len(good) // 2],
                "pickle": pickle.dumps({"w": 1})}
    for name, data in contents.items():
        (folder / f"{name}.ckpt").write_bytes(data)
    return {name: folder / f"{name}.ckpt" for name in contents}


def test_damaged_files_are_called_corrupt_not_unsafe(tmp_path: Path) -> None:
    for name, path in damaged_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert f"{name}.ckpt: truncated or corrupt file" in message, message
        assert "unpickling" not in message and "weights_only" not in message
    assert read_checkpoint(tmp_path / "good.ckpt")["state_dict"]["w"].shape == (500,)


def test_a_file_that_needs_unpickling_is_refused_by_class_name(tmp_path: Path) -> None:
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"refused to load {path} for safety") and "test_checkpoints.Payload" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def test_cli_names_a_garbage_checkpoint_in_one_line(tmp_path: Path, capsys) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "config.yaml").write_text("data: {class_path: mnm.datamodules.SyntheticDataModule}\n")
    garbage = damaged_files(tmp_path)["garbage"]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(stage), str(tmp_path), "--out", str(tmp_path / "out"), "--ckpt", str(garbage)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mnm: error: cannot read checkpoint {garbage}: truncated or corrupt") and err.count("\n") == 2


def test_atomic_files_get_the_mode_of_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "a.ckpt")
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == 0o640


def test_rng_states_restore_draws_in_the_per_rank_and_the_older_flat_format() -> None:
    import random

    import numpy as np

    from mnm.runs.callbacks import RNGStateCheckpoint

    def draws() -> tuple:
        return torch.rand(3).tolist(), float(np.random.rand()), random.random()

    callback = RNGStateCheckpoint()
    torch.manual_seed(3)
    saved = callback.state_dict()
    assert len(saved["ranks"]) == 1 and ("cuda" in saved["ranks"][0]) == torch.cuda.is_initialized()
    expected = draws()
    callback.load_state_dict(saved)
    assert draws() == expected
    callback.load_state_dict(saved["ranks"][0])  # a checkpoint written before per-rank states
    assert draws() == expected
