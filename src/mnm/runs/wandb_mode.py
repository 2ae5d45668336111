"""Whether a pipeline's W&B runs log online or offline (offline unless set up, and when the server is out of reach).

``python -m mnm.runs.wandb_mode`` says whether the W&B server takes a connection (``make wandb-sync`` asks it first).
"""

from __future__ import annotations

import configparser
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["wandb_base_url", "wandb_offline", "wandb_unreachable"]


def wandb_offline() -> bool:
    """W&B stays offline unless the user has set it up (an API key or ``WANDB_MODE=online``)."""
    mode = os.environ.get("WANDB_MODE", "")
    return mode != "online" and not (os.environ.get("WANDB_API_KEY") and mode != "offline")


def wandb_base_url() -> str:
    """The W&B server that ``wandb`` talks to: ``WANDB_BASE_URL``, else the ``base_url`` that ``wandb login --host``
    saved in its settings file, else the installed wandb's default."""
    if url := os.environ.get("WANDB_BASE_URL"):
        return url
    saved = configparser.ConfigParser()
    saved.read(Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser() / "settings")
    if url := saved.get("default", "base_url", fallback=None):
        return url
    import wandb

    return str(wandb.Settings().base_url)


def wandb_unreachable(timeout: float = 5.0) -> str | None:
    """Why the W&B server (:func:`wandb_base_url`) takes no connection within ``timeout`` seconds; ``None`` when it
    does."""
    url = urlsplit(wandb_base_url())
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    try:
        with socket.create_connection(address, timeout=timeout):
            return None
    except OSError as err:
        return f"{address[0]}:{address[1]}: {err.strerror or err}"


def main() -> None:
    """Exit 1 with the reason on stderr when the W&B server takes no connection, 0 when it does."""
    reason = wandb_unreachable()
    if reason:
        print(reason, file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
