"""The numeric settings of the training and evaluation configs, checked before a run reads a single image.

``python -m monai.bundle run ... --epochs 0`` hands the config whatever the command line held: ``0``, ``-1``,
``'abc'``. Left alone, such a value reaches ignite, the ``DataLoader`` or the optimizer only after every image
has been read, and stops the run there with a library's traceback that names none of the settings
(``Argument max_epochs is invalid``, ``'<=' not supported between instances of 'float' and 'str'``), or worse, is
used as given: a target specificity of 1.5 or zero calibration bins still give a report. The training configs call
:func:`check_run_settings` first in their ``initialize`` section, the evaluation configs :func:`check_settings`.

Example:
    check_run_settings(epochs=30, batch_size=16, learning_rate=1e-3, weight_decay=1e-4, num_workers=2,
                       val_interval=1, val_fraction=0.2)
    check_settings(n_bootstrap=1000, target_specificity=0.9)
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real

from mammoxai.errors import MammoXAIError

__all__ = [
    "RUN_SETTINGS",
    "SETTING_RULES",
    "SettingRule",
    "another_would_overrun",
    "check_run_settings",
    "check_settings",
    "check_limits",
]


@dataclass(frozen=True)
class SettingRule:
    """What a setting must be: a finite ``kind`` (never a bool) for which ``in_range`` holds.

    Args:
        kind: ``Integral`` for counts, ``Real`` for rates and fractions.
        in_range: the test of the value.
        wanted: the rule in words, for the message (``"a positive whole number"``).
        example: a value that works, shown as ``e.g. --<name> <example>``.
    """

    kind: type
    in_range: Callable[[float], bool]
    wanted: str
    example: str


def _count(minimum: int, example: str) -> SettingRule:
    wanted = "a positive whole number" if minimum == 1 else f"a whole number of {minimum} or more"
    return SettingRule(Integral, lambda value: value >= minimum, wanted, example)


def _fraction(example: str, closed: bool = False) -> SettingRule:
    if closed:
        return SettingRule(Real, lambda value: 0 <= value <= 1, "a number from 0 to 1", example)
    return SettingRule(Real, lambda value: 0 < value < 1, "a number between 0 and 1", example)


SETTING_RULES: dict[str, SettingRule] = {
    "epochs": _count(1, "30"),
    "batch_size": _count(1, "16"),
    "learning_rate": SettingRule(Real, lambda value: value > 0, "a positive number", "0.001"),
    "weight_decay": SettingRule(Real, lambda value: value >= 0, "a number of 0 or more", "0.0001"),
    "num_workers": _count(0, "2"),
    "val_interval": _count(1, "1"),
    "val_fraction": _fraction("0.2"),
    "seed": _count(0, "0"),
    "keep_checkpoints": _count(1, "1"),
    "log_every": _count(1, "20"),
    "n_bootstrap": _count(1, "1000"),
    "calibration_bins": _count(1, "10"),
    "threshold": _fraction("0.5", closed=True),
    "target_specificity": SettingRule(Real, lambda value: 0 < value <= 1, "a specificity above 0, at most 1", "0.9"),
    "qc_min_probability": _fraction("0.9", closed=True),
    "threshold_fraction": _fraction("0.5"),
    "view_size": _count(1, "256"),
    "backgrounds": _count(0, "2"),
    "patch_size": _count(1, "64"),
    "patch_backgrounds": _count(0, "1"),
    "max_images": _count(1, "10"),
    "max_images_per_patient": _count(1, "1"),
    "max_positive_pairs": _count(1, "10000"),
    "max_minutes": SettingRule(Real, lambda value: value > 0, "a positive number of minutes", "30"),
    "deletion_steps": _count(0, "20"),
    "sanity_images": _count(0, "10"),
    "baseline_draws": _count(1, "20"),
    "overlays": _count(0, "3"),
    "tolerance": SettingRule(Real, lambda value: value >= 0, "a distance of 0 or more", "0"),
    "embed_dim": _count(1, "256"),
    "matching_dim": _count(1, "128"),
    "temperature": SettingRule(Real, lambda value: value > 0, "a positive number", "0.1"),
    "contrastive_weight": SettingRule(Real, lambda value: value >= 0, "a number of 0 or more", "1.0"),
}
"""Setting name → its rule; a config's setting of one of these names is checked with :func:`check_settings`."""


def check_settings(**settings: object) -> None:
    """Refuse settings that no run can use, naming the first such setting and a value that works.

    Counts must be whole numbers (``True`` is not one, nor is ``2.0``); rates, fractions and probabilities finite
    numbers in their range (:data:`SETTING_RULES`).

    Raises:
        MammoXAIError: a setting is of the wrong type or out of range.
        KeyError: a name without a rule (a programming error in a config, not a user's).
    """
    for name, value in settings.items():
        rule = SETTING_RULES[name]
        usable = isinstance(value, rule.kind) and not isinstance(value, bool) and math.isfinite(value)
        if not (usable and rule.in_range(value)):
            raise MammoXAIError(name, f"is {value!r}, not {rule.wanted}", f"e.g. --{name} {rule.example}")


def check_limits(**limits: object) -> None:
    """Refuse limits (``max_positive_pairs``, ``max_images``, ...) that are set and that no run can use
    (:func:`check_settings`); None is no limit.

    Raises:
        MammoXAIError: a limit that is set is of the wrong type or out of range.
    """
    check_settings(**{name: value for name, value in limits.items() if value is not None})


def another_would_overrun(start: float, done: int, max_minutes: float | None) -> bool:
    """Whether one more unit of work (an image, a seed) would end past ``max_minutes``, judged by the mean time of
    the ``done`` units since ``start`` (a :func:`time.monotonic` reading); False without a limit or before the first
    is done, so that a run with a ``max_minutes`` setting always does at least one."""
    if max_minutes is None or done < 1:
        return False
    spent = time.monotonic() - start
    return spent + spent / done > 60.0 * max_minutes


def check_run_settings(
    *,
    epochs: object,
    batch_size: object,
    learning_rate: object,
    weight_decay: object,
    num_workers: object,
    val_interval: object,
    val_fraction: object,
    seed: object = 0,
) -> None:
    """Refuse training settings that no run can use (:func:`check_settings`), and a validation interval longer
    than the run: a run that never validates never saves the weights it trained, yet ends as if it had.

    Args:
        epochs: training epochs, at least 1.
        batch_size: images per batch, at least 1.
        learning_rate: the optimizer's step size, above 0.
        weight_decay: the optimizer's weight decay, 0 or more.
        num_workers: ``DataLoader`` worker processes, 0 (read in the main process) or more.
        val_interval: epochs between validations, at least 1 and at most ``epochs``.
        val_fraction: share of patients held out for validation, between 0 and 1.
        seed: the run's seed, a whole number of 0 or more.

    Raises:
        MammoXAIError: a setting is of the wrong type or out of range; the message names the first such one.
    """
    check_settings(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        num_workers=num_workers,
        val_interval=val_interval,
        val_fraction=val_fraction,
        seed=seed,
    )
    if val_interval > epochs:
        problem = f"is {val_interval}, more than the {epochs} epochs: the run would never validate, so it would save no weights"
        raise MammoXAIError("val_interval", problem, f"e.g. --val_interval 1, or at least --epochs {val_interval}")


RUN_SETTINGS: tuple[str, ...] = tuple(inspect.signature(check_run_settings).parameters)
"""The settings :func:`check_run_settings` takes, for a caller that gathers them from a config and its overrides."""
