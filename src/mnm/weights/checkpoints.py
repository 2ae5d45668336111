"""Checkpoint files read safely: weights-only loading with clear errors, the step a training state was saved at, the
newest readable one of several.

Plain torch (no Lightning). Writing is atomic (:func:`mnm.utils.files.atomic_torch_save`); Lightning's
``CheckpointIO`` wrapper lives with the stage CLI (:class:`mnm.runs.stage_cli.AtomicCheckpointIO`).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used; the message names the file."""


#: how torch's weights-only unpickler names a class it refuses to rebuild
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load ``path`` with ``torch.load(weights_only=True)`` on the CPU.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError`
    for a file that is not a PyTorch checkpoint (truncated, corrupt, another
    format) or one that holds objects only arbitrary unpickling can rebuild
    (refused: unpickling can run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        size = path.stat().st_size
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt file, or not a PyTorch checkpoint "
            f"({'empty' if not size else f'{size} bytes'}; not the zip archive torch.save writes)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is None:
            raise CheckpointError(f"cannot read checkpoint {path}: corrupt pickle data in the archive") from None
        raise CheckpointError(
            f"refused to load {path} for safety: it holds a {refused.group(1)} object, which only arbitrary unpickling "
            "can rebuild, and unpickling can run code. mnm loads tensors and plain containers only; "
            "save just the state dict (torch.save(model.state_dict(), file)) where the file was made"
        ) from None
    except Exception as err:  # torch raises RuntimeError/EOFError/KeyError/... for damaged files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or corrupt file ({reason})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    return obj


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The ``global_step`` a readable Lightning training state was saved at (``None`` if it records none); the file is
    memory-mapped, so its tensors are not read."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    step = state.get("global_step") if isinstance(state, dict) else None
    return None if step is None else int(step)


def newest_loadable(paths: list[Path]) -> tuple[Path | None, list[str]]:
    """The newest (by modification time) of ``paths`` that loads, and why the newer ones did not."""
    problems = []
    for p in sorted(paths, key=lambda q: q.stat().st_mtime, reverse=True):
        try:
            read_checkpoint(p)
            return p, problems
        except (CheckpointError, FileNotFoundError) as err:
            problems.append(str(err))
    return None, problems
