"""Where the repository's files are, so that commands work from any working directory.

A relative path (``conf/...``, ``../shared/...``) is read from the working directory when it exists there,
else from the repository that holds this package (:func:`repo_root`: an editable install's checkout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def repo_root() -> Path | None:
    """The checkout this package runs from (the nearest folder above this file with ``conf/`` and ``setup.cfg``:
    an editable install's), or ``None`` for an installed package."""
    return next((d for d in Path(__file__).resolve().parents if (d / "conf").is_dir() and (d / "setup.cfg").is_file()),
                None)


def find_file(ref: str | Path) -> Path:
    """``ref`` as given when it exists (or is absolute), else the same relative path in :func:`repo_root` when
    it exists there, else ``ref`` unchanged (the caller's "not found" error names it)."""
    path = Path(ref)
    root = repo_root()
    if path.is_absolute() or path.exists() or root is None or not (root / path).exists():
        return path
    return root / path


def repo_relative_paths(obj: Any) -> Any:
    """``obj`` with every relative path string (one holding a ``/``) that is missing from the working directory but
    present in the repository replaced by its absolute path there (config values such as ``../shared/data/camvid``)."""
    if isinstance(obj, dict):
        return {key: repo_relative_paths(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [repo_relative_paths(value) for value in obj]
    if isinstance(obj, str) and "/" in obj and "\n" not in obj:
        found = find_file(obj)
        return str(found) if found.is_absolute() and not Path(obj).is_absolute() else obj
    return obj


def where_to_run_hint() -> str:
    """A sentence for "file not found" errors raised outside the repository root ("" at the root)."""
    root = repo_root()
    if root is None or Path.cwd().resolve() == root:
        return ""
    return (f" (relative paths are read from the working directory {Path.cwd()} or, failing that, from the "
            f"repository {root}; run from {root} or give absolute paths)")


def shown_path(path: str | Path) -> str:
    """``path`` as reports show it: relative to :func:`repo_root` when inside it (the same from any folder)."""
    root, resolved = repo_root(), Path(path).resolve()
    return str(resolved.relative_to(root)) if root is not None and resolved.is_relative_to(root) else str(path)
