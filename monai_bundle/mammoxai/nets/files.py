"""Reading saved weights: one place that turns "this file is not a checkpoint" into a message a user can act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mammoxai.errors import MammoXAIError

__all__ = ["read_torch_file"]


def read_torch_file(
    path: str | os.PathLike, description: str, fix: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)``, with any failure to read it reported as a :class:`MammoXAIError`.

    torch raises many exception types for a file that is not a checkpoint (``EOFError`` with no message for an
    empty file, ``IndexError`` for text, ``UnpicklingError``, ``RuntimeError`` for a truncated zip, ...), so
    every reader of weights goes through here instead of guessing the list.

    Args:
        path: the file.
        description: what the file should be, e.g. ``"PyTorch checkpoint"``; the message says it is not one.
        fix: what the user should do.
        map_location: where the tensors are loaded.

    Raises:
        MammoXAIError: the file cannot be read as a (weights-only) PyTorch file.
    """
    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - see the docstring: the type says nothing useful
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MammoXAIError(path, f"is not a readable {description} ({detail})", fix) from error
