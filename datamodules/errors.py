"""The one error type raised for bad data (re-exported by :mod:`mnm.datamodules.base`)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing data; the message names the file (or setting) and the problem."""
