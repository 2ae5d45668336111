"""Phase timers: a training step wraps its phases (mix, match, forward, loss) in ``timer(name)``.

The default timer does nothing; the speed benchmark passes one that records wall-clock laps.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

#: ``timer("forward")`` returns a context manager around that phase
PhaseTimer = Callable[[str], AbstractContextManager]


def no_phase_timer(name: str) -> AbstractContextManager:
    """The no-op timer."""
    return nullcontext()
