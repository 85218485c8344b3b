"""Files that readers see whole or not at all: the served weights, labels, the datastore index, cache entries.

A server reads these while another process writes them (the predictor's hot reload, a second server, a training
run), and a crash or a full disk can stop a write midway. :func:`atomic_write` writes into a temporary file
beside the destination and moves it over the destination in one ``os.replace``, so a reader finds the old
content or the complete new one, and a failed write leaves the old file and no temporary behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes"]


@contextmanager
def atomic_write(path: str | os.PathLike, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` when the block ends without an exception.

    Args:
        path: the file to write; its folder must exist.
        durable: ``fsync`` the content before the replace, so that a power cut cannot leave an empty file in its
            place. Cache entries, which are computed again when lost, skip it.

    Example:
        with atomic_write("models/model.pt") as stream:
            torch.save(state, stream)
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` through :func:`atomic_write` (durable)."""
    with atomic_write(path) as stream:
        stream.write(data)
