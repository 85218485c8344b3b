"""The numeric settings every training config shares, checked before a run reads a single image.

``python -m monai.bundle run ... --epochs 0`` hands the config whatever the command line held: ``0``, ``-1``,
``'abc'``. Left alone, such a value reaches ignite, the ``DataLoader`` or the optimizer only after every image
has been read, and stops the run there with a library's traceback that names none of the settings
(``Argument max_epochs is invalid``, ``'<=' not supported between instances of 'float' and 'str'``). The training
configs call :func:`check_run_settings` first in their ``initialize`` section instead.

Example:
    check_run_settings(epochs=30, batch_size=16, learning_rate=1e-3, weight_decay=1e-4, num_workers=2,
                       val_interval=1, val_fraction=0.2)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from numbers import Integral, Real

from mammoxai.errors import MammoXAIError

__all__ = ["RUN_SETTINGS", "check_run_settings"]


def check_run_settings(
    *,
    epochs: object,
    batch_size: object,
    learning_rate: object,
    weight_decay: object,
    num_workers: object,
    val_interval: object,
    val_fraction: object,
) -> None:
    """Refuse training settings that no run can use, naming the setting and a value that works.

    Counts must be whole numbers (``True`` is not one, nor is ``2.0``); rates and fractions finite numbers.

    Args:
        epochs: training epochs, at least 1.
        batch_size: images per batch, at least 1.
        learning_rate: the optimizer's step size, above 0.
        weight_decay: the optimizer's weight decay, 0 or more.
        num_workers: ``DataLoader`` worker processes, 0 (read in the main process) or more.
        val_interval: epochs between validations, at least 1.
        val_fraction: share of patients held out for validation, between 0 and 1.

    Raises:
        MammoXAIError: a setting is of the wrong type or out of range; the message names the first such one.
    """
    _require("epochs", epochs, Integral, lambda value: value >= 1, "a positive whole number", "30")
    _require("batch_size", batch_size, Integral, lambda value: value >= 1, "a positive whole number", "16")
    _require("learning_rate", learning_rate, Real, lambda value: value > 0, "a positive number", "0.001")
    _require("weight_decay", weight_decay, Real, lambda value: value >= 0, "a number of 0 or more", "0.0001")
    _require("num_workers", num_workers, Integral, lambda value: value >= 0, "a whole number of 0 or more", "2")
    _require("val_interval", val_interval, Integral, lambda value: value >= 1, "a positive whole number", "1")
    _require("val_fraction", val_fraction, Real, lambda value: 0 < value < 1, "a number between 0 and 1", "0.2")


RUN_SETTINGS: tuple[str, ...] = tuple(inspect.signature(check_run_settings).parameters)
"""The settings :func:`check_run_settings` takes, for a caller that gathers them from a config and its overrides."""


def _require(
    name: str, value: object, kind: type, in_range: Callable[[float], bool], wanted: str, example: str
) -> None:
    """Raise unless ``value`` is a finite ``kind`` (not a bool, which Python counts as an int) and ``in_range``."""
    usable = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and in_range(value)
    if not usable:
        raise MammoXAIError(name, f"is {value!r}, not {wanted}", f"e.g. --{name} {example}")
