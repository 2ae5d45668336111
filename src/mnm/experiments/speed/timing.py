"""Wall-clock timing: named laps of a run, warm-up, median of repeats, a time budget."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

__all__ = ["Laps", "Timing", "sync", "time_call", "time_laps"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Laps:
    """Named wall-clock laps of one run: ``with laps("mix"): ...`` (device synchronised around it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3


class Timing(NamedTuple):
    """Median milliseconds per lap (and ``total``) and the number of timed runs behind them."""

    ms: dict[str, float]
    repeats: int


def time_laps(
    run: Callable[[Laps], object],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
) -> Timing:
    """Median milliseconds of every lap of ``run`` and of the whole run (``total``).

    ``run`` is called ``warmup`` times untimed, then up to ``repeats`` times timed; once ``budget_s``
    seconds have passed since the start (warm-up included) no further timed run starts, but there is
    always at least one. A lap that a run does not enter counts 0 ms in that run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    start = time.perf_counter()
    for _ in range(warmup):
        run(Laps(device))
    samples: list[dict[str, float]] = []
    while len(samples) < repeats and not (
        samples and budget_s is not None and time.perf_counter() - start > budget_s
    ):
        laps = Laps(device)
        with laps("total"):
            run(laps)
        samples.append(laps.ms)
    names = dict.fromkeys(name for s in samples for name in s)  # a run may skip a phase: it counts 0 ms
    return Timing({name: statistics.median(s.get(name, 0.0) for s in samples) for name in names}, len(samples))


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()`` (:func:`time_laps` of a run with no inner laps)."""
    return time_laps(lambda laps: fn(), device, warmup=warmup, repeats=repeats).ms["total"]
