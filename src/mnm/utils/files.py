"""Files written atomically (a temporary file beside the target, fsynced, then renamed over it), and strict JSON.

One home for writing: checkpoints (:func:`atomic_torch_save`), text and JSON (``null``, never ``NaN``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_torch_save", "atomic_write_json", "atomic_write_text", "current_umask", "finite_or_null",
           "strict_json"]


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
