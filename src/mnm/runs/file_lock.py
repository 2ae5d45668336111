"""Lock files: an exclusive ``flock`` held for a ``with`` block, the file removed when it is released."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["HeldLock", "exclusive_lock"]


@dataclass
class HeldLock:
    """An open lock file whose ``flock`` this process holds (see :func:`exclusive_lock`)."""

    file: IO[str]
    #: leave the file in place on release (it names a holder elsewhere that this process must not erase)
    keep: bool = False


def _is_open_file(fh: IO[str], path: Path) -> bool:
    """Whether ``path`` still names the file ``fh`` has open."""
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


@contextmanager
def exclusive_lock(path: Path, wait: bool = True) -> Iterator[HeldLock]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing, opened ``a+``) for the ``with`` block,
    then remove the file, so that finished runs leave no lock files behind; ``BlockingIOError`` at once when another
    process holds it and not ``wait``.

    Removing a lock file is safe only because taking one checks that the file locked is still the one at ``path``:
    a process that opened the file before its holder removed it gets the ``flock`` of a file nobody else can reach
    any more, so it drops it and locks the new file at ``path`` (else two processes would hold "the" lock). The
    holder removes the file before it unlocks it, and only while ``path`` is still its file (not one moved aside
    with its folder and replaced).
    """
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - closed on release below
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BaseException:
            fh.close()
            raise
        if _is_open_file(fh, path):
            break
        fh.close()  # removed by its holder while this process waited: lock the file now at path
    held = HeldLock(fh)
    try:
        yield held
    finally:
        if not held.keep:
            fh.truncate(0)  # a lock file moved aside with its folder names no holder
            if _is_open_file(fh, path):
                path.unlink()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
