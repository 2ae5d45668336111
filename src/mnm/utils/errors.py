"""Error texts: the message of an exception as the user should read it."""

from __future__ import annotations

import re

#: the first line torch puts before an exception re-raised from a DataLoader worker
_WORKER_WRAPPER = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.")


def error_message(err: BaseException) -> str:
    """The message of ``err`` as raised, without torch's DataLoader-worker wrapper.

    An exception raised in a worker process reaches the main process as the same
    type, its message replaced by "Caught X in DataLoader worker process N." and
    the worker's traceback; the original message is the traceback's last line.
    """
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = text.strip().splitlines()
    if lines and _WORKER_WRAPPER.match(lines[0]):
        return lines[-1].split(": ", 1)[-1]
    return text
