"""Ctrl-C during training stops the way SIGTERM does: after the current step, with a checkpoint saved."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["CtrlC"]


class CtrlC:
    """While the ``with`` block runs (in the main thread), the first Ctrl-C (SIGINT) is sent on as a SIGTERM to
    this process: Lightning ends the step, ``SigtermCheckpoint`` saves ``last.ckpt`` and ``SIGTERMException``
    stops the fit. A second Ctrl-C, or one while Lightning does not listen for SIGTERM, interrupts at once.
    Forked DataLoader workers, which inherit the handler, ignore Ctrl-C: the main process stops them.

    ``pressed`` counts the Ctrl-Cs, so a caller can tell a stop the user asked for from a failure.
    """

    def __init__(self) -> None:
        self.pressed = 0
        self._previous: Any = None
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker (a terminal's Ctrl-C reaches the whole group):
            return  # it keeps serving batches until the main process ends the step and stops it
        self.pressed += 1
        if self.pressed > 1 or signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt
        print("\n[mnm] Ctrl-C: stopping after this step with a checkpoint (press Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> CtrlC:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
