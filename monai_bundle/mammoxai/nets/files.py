"""Reading saved weights: one place that turns "this file is not a checkpoint" into a message a user can act on."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mammoxai.errors import MammoXAIError

__all__ = ["check_recorded_settings", "checkpoint_weights", "read_torch_file", "recorded_input_setting"]


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


def check_recorded_settings(path: str | os.PathLike, settings: Mapping[str, tuple[Any, Any]]) -> None:
    """Refuse weights that record other training settings than those of the run loading them.

    A CNN runs on any grid and its logits carry no names, so weights trained at another image or view size, or
    with the class names in another order, give numbers and no error. Checkpoints record what they were trained
    with; every reader compares that record with its own settings here, so the refusal reads the same everywhere.

    Args:
        path: the checkpoint, named in the error.
        settings: flag of the loading run -> (value recorded in the checkpoint, value of the run); ``None`` on
            either side is not compared (a checkpoint older than the record, a run that leaves it open).
            Tuples and lists compare equal.

    Raises:
        MammoXAIError: naming the first setting that differs and the flag value that fits the weights.
    """
    for flag, (recorded, here) in settings.items():
        if recorded is None or here is None:
            continue
        recorded, here = json.loads(json.dumps(recorded)), json.loads(json.dumps(here))
        if recorded == here:
            continue
        problem = f"was trained with {flag} {json.dumps(recorded)}, not the {json.dumps(here)} of this run"
        if isinstance(recorded, list) and isinstance(here, list) and sorted(recorded) == sorted(here):
            problem += " (the same values in another order)"
        fix = f"pass --{flag} {shlex.quote(json.dumps(recorded))}, or retrain with this run's settings"
        raise MammoXAIError(path, problem, fix)


#: What a checkpoint's record of its model input means by a setting it does not name: records older than the setting
#: were all made under the one value there was.
_INPUT_SETTING_DEFAULTS = {"intensity_scaling": "breast_percentiles", "field_of_view": "breast"}


def recorded_input_setting(record: Mapping[str, Any], name: str) -> str:
    """How a checkpoint's training images were made, as its input record names it: ``name`` is
    ``"intensity_scaling"`` or ``"field_of_view"`` (:func:`~mammoxai.io.preprocess.prepare_image`).

    Records older than a setting name none, and every model of theirs was trained on the only value there was
    (``"breast_percentiles"``, ``"breast"``).
    """
    return str(record.get(name, _INPUT_SETTING_DEFAULTS[name]))


def checkpoint_weights(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict of a checkpoint: the one under ``"model"`` where ``train.json`` saved it (beside the training
    ``"grid"``, ``"classes"`` and ``"views"``), else ``state`` itself, a bare state dict."""
    weights = state.get("model")
    return weights if isinstance(weights, Mapping) else state
