"""One run per run folder: a lock per stage, held by the process that runs it for the whole run.

A lock is a file (:func:`mnm.runs.rundir.stage_lock_file`) locked with ``flock`` (the kernel drops the lock when
its holder dies, however it dies) that names its holder: PID, host and start time. A second command
that wants a stage someone holds stops at once with :class:`RunFolderInUse`; a lock file left by a
process that is gone (the file names it, but nobody holds the ``flock``) is taken over with a message.
A released lock's file is removed (:func:`mnm.runs.rundir.exclusive_lock` says why that is safe), so only a lock
file of a process that died stays behind.
Commands on disjoint stages of one folder (``--only``, protocol ``--arms``) may run side by side.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from mnm.runs.file_lock import exclusive_lock
from mnm.runs.rundir import TIME_FORMAT, stage_lock_file

__all__ = ["RunFolderInUse", "lock_stages"]


class RunFolderInUse(RuntimeError):
    """Another live process runs a stage of this run folder."""


def _holder_text(holder: dict[str, Any]) -> str:
    return f"PID {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"


def _read_holder(fh: IO[str]) -> dict[str, Any]:
    fh.seek(0)
    text = fh.read().strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"pid": "?", "since": f"? (unreadable lock file: {text[:40]!r})"}  # no host: taken over when free


def _holder_of_held_lock(path: Path) -> str:
    """Who holds the lock file ``path`` (read without locking it; the holder wrote itself in)."""
    try:
        with open(path) as fh:
            return _holder_text(_read_holder(fh))
    except FileNotFoundError:  # released and removed just now
        return _holder_text({})


@contextmanager
def _stage_lock(run_dir: Path, stage: str) -> Iterator[None]:
    path = stage_lock_file(run_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            held = stack.enter_context(exclusive_lock(path, wait=False))
        except BlockingIOError:
            raise RunFolderInUse(
                f"{run_dir} is in use by {_holder_of_held_lock(path)} (stage {stage!r}); "
                "wait for that command to end or stop it"
            ) from None
        fh, host = held.file, socket.gethostname()
        stale = _read_holder(fh)
        if stale and stale.get("host") not in (host, None):
            held.keep = True
            raise RunFolderInUse(
                f"{run_dir} may be in use by {_holder_text(stale)} (stage {stage!r}), another machine; "
                f"if that command is gone, delete {path}"
            )
        if stale:
            print(f"[mnm] {run_dir}: taking over the lock of stage {stage!r} left by {_holder_text(stale)} "
                  "(that process is gone)", file=sys.stderr)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": host, "since": time.strftime(TIME_FORMAT)}) + "\n")
        fh.flush()
        yield


@contextmanager
def lock_stages(run_dir: str | Path, stages: Iterable[str]) -> Iterator[None]:
    """Hold the locks of ``stages`` of ``run_dir`` for the ``with`` block; :class:`RunFolderInUse` at once
    when another process holds one of them."""
    with ExitStack() as stack:
        for stage in stages:
            stack.enter_context(_stage_lock(Path(run_dir), stage))
        yield
