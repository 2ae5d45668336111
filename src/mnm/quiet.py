"""Silence the library messages that tell an mnm user nothing (set once by the ``mnm`` command and the stage CLI)."""

from __future__ import annotations

import functools
import logging
import re
import warnings

#: warnings about how mnm calls Lightning on purpose, or about Lightning's own use of torch
WARNINGS = (
    "LightningCLI's args parameter is intended to run from within Python",  # mnm passes the stage's argv itself
    "`isinstance(treespec, LeafSpec)` is deprecated",  # inside lightning.pytorch.utilities._pytree
)
#: Lightning's advert for an online logging service (mnm runs offline)
LOG_NOISE = ("💡 Tip: For seamless cloud logging",)


def _not_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LOG_NOISE)


@functools.cache
def quiet_library_messages() -> None:
    """Ignore :data:`WARNINGS` and drop :data:`LOG_NOISE` from Lightning's rank-zero log (idempotent)."""
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message))
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_noise)
