"""Whether a pipeline's W&B runs log online or offline (offline unless set up, and when the server is out of reach)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

__all__ = ["DEFAULT_BASE_URL", "wandb_offline", "wandb_unreachable"]

DEFAULT_BASE_URL = "https://api.wandb.ai"


def wandb_offline() -> bool:
    """W&B stays offline unless the user has set it up (an API key or ``WANDB_MODE=online``)."""
    mode = os.environ.get("WANDB_MODE", "")
    return mode != "online" and not (os.environ.get("WANDB_API_KEY") and mode != "offline")


def wandb_unreachable(timeout: float = 5.0) -> str | None:
    """Why the W&B server (``WANDB_BASE_URL``, else W&B's own) takes no connection within ``timeout`` seconds;
    ``None`` when it does."""
    url = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    try:
        with socket.create_connection(address, timeout=timeout):
            return None
    except OSError as err:
        return f"{address[0]}:{address[1]}: {err.strerror or err}"
