"""What a result was produced with: the code version (git commit, dirty or not) and the machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from mnm.utils.paths import repo_root


def _version() -> str:
    """The installed mnm's version (from its package metadata: this package imports nothing of mnm)."""
    try:
        return importlib.metadata.version("mnm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _git(root: Path, *args: str) -> str | None:
    """The output of ``git -C root ARGS``, or ``None`` when git is missing or fails."""
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_version(root: Path | None = None) -> dict[str, Any]:
    """``{"version", "commit", "dirty"}`` of the checkout at ``root`` (default :func:`mnm.utils.paths.repo_root`);
    ``commit``/``dirty`` are ``None`` with a ``note`` outside a git checkout."""
    root = root or repo_root()
    commit = _git(root, "rev-parse", "HEAD") if root is not None else None
    if commit is None:
        return {"version": _version(), "commit": None, "dirty": None, "note": "not a git checkout"}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"version": _version(), "commit": commit, "dirty": bool(status) if status is not None else None}


def describe_code(code: dict[str, Any]) -> str:
    """``commit 1a2b3c4d (uncommitted changes)``, ``commit 1a2b3c4d`` or ``mnm 0.1.0 (not a git checkout)``."""
    if not code.get("commit"):
        return f"mnm {code.get('version', '?')} ({code.get('note', 'no commit recorded')})"
    return f"commit {code['commit'][:10]}" + (" (uncommitted changes)" if code.get("dirty") else "")


def machine() -> dict[str, Any]:
    """The host, CPU count, Python and torch versions and the accelerator torch sees."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device}


def describe_machine(info: dict[str, Any]) -> str:
    """``host (2 CPUs, cpu, torch 2.x)``."""
    return f"{info.get('host')} ({info.get('cpus')} CPUs, {info.get('device')}, torch {info.get('torch')})"
