"""Safe, atomic checkpoint files: weights-only loading with clear errors, rename-on-write saving.

Plain torch (no Lightning): the core reads weights through it; Lightning's
``CheckpointIO`` wrapper lives with the stage CLI (:class:`mnm.stage_cli.AtomicCheckpointIO`).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

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


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _atomic_file(path: str | os.PathLike, mode: str) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; the file gets the mode open() would give
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    with _atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to a temporary file and rename it over ``path``."""
    with _atomic_file(path, "w") as fh:
        fh.write(text)


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (a missing value, e.g. the std of one seed) replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(value) for value in obj]
    return obj


def strict_json(obj: Any, **kwargs: Any) -> str:
    """Standard JSON (``null`` for missing or non-finite numbers, never ``NaN``), indented, with a final newline;
    ``kwargs`` go to :func:`json.dumps` (``sort_keys``, ``default``)."""
    return json.dumps(finite_or_null(obj), indent=2, allow_nan=False, **kwargs) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> None:
    """Write ``obj`` as :func:`strict_json` atomically."""
    atomic_write_text(path, strict_json(obj, **kwargs))


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
