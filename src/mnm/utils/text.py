"""Small text helpers."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """``"1 cell"``, ``"2 cells"``: a count and its noun (regular plurals only)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
