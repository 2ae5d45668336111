"""Random helpers shared by mix and match: integers from uniforms drawn once, on the CPU."""

from __future__ import annotations

from torch import Tensor

__all__ = ["uniform_below"]


def uniform_below(u: Tensor, n: Tensor) -> Tensor:
    """Uniform integers in ``[0, n)`` from uniforms ``u`` in [0, 1) (0 where ``n <= 0``)."""
    return (u * n).long().minimum((n - 1).clamp(min=0))
