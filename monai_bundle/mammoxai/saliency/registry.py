"""Saliency methods by name, so a config selects one with a string: ``get_method("rise", nn_module=net, preset="fast")``.

Presets hold the published settings of a method (``faithful``) and a cheaper variant (``fast``); explicit
settings override the preset's.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.saliency.correlax import CorRELAX
from mammoxai.saliency.gradcam import CAM, ClassIndex, GradCAM, GradCAMPlusPlus, HiResCAM
from mammoxai.saliency.occlusion import Occlusion
from mammoxai.saliency.relax import RELAX
from mammoxai.saliency.rise import RISE

__all__ = ["SaliencyMethod", "METHODS", "PRESETS", "check_grid", "get_method", "method_settings"]


class SaliencyMethod(Protocol):
    """What every method is: a batch (B, channels, H, W) and target classes in, maps (B, K, H, W) in [0, 1] on the
    input grid (restorable with :meth:`~mammoxai.io.geometry.ImageGeometry.restore`) and class scores (B, C) out."""

    settings: Mapping[str, Any]

    def __call__(self, x: torch.Tensor, class_idx: ClassIndex = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps, scores) of the batch ``x`` for the classes ``class_idx`` names (see :data:`ClassIndex`)."""


METHODS: dict[str, type] = {
    "cam": CAM,
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "occlusion": Occlusion,
    "rise": RISE,
    "relax": RELAX,
    "correlax": CorRELAX,
}
"""Method name → class."""

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "occlusion": {"faithful": {"patch": 32, "stride": 8}, "fast": {"patch": 32, "stride": 16}},
    "rise": {  # Petsiuk et al. 2018
        "faithful": {"num_masks": 4000, "grid": 7, "keep_prob": 0.5},
        "fast": {"num_masks": 1000, "grid": 7, "keep_prob": 0.5},
    },
    "relax": {  # Wickstrøm et al. 2022
        "faithful": {"num_masks": 3000, "grid": 7, "keep_prob": 0.5},
        "fast": {"num_masks": 500, "grid": 7, "keep_prob": 0.5},
    },
    "correlax": {  # Mellado et al. 2025
        "faithful": {
            "view_size": 256,
            "stride": 32,
            "num_masks": 1280,
            "grid": 8,
            "keep_prob": 0.5,
            "min_breast_fraction": 0.0,
            "refine_fraction": 1.0,
        },
        # The published stride: a coarser one costs the pointing game (stride 64 lost 4.5 points on calcifications
        # against 32, model card), while the prediction map needs no masked pass and so stays cheap. The savings
        # are in the masks: a fifth of them, on the most suspicious 1/16 of the views (as many as 1/4 at stride 64).
        "fast": {
            "view_size": 256,
            "stride": 32,
            "num_masks": 256,
            "grid": 8,
            "keep_prob": 0.5,
            "min_breast_fraction": 0.25,
            "refine_fraction": 0.0625,
        },
    },
}
"""Method name → preset name → settings; a method without presets takes its settings as given."""


def method_settings(name: str) -> set[str]:
    """The settings (constructor arguments other than the network) that method ``name`` accepts."""
    parameters = inspect.signature(_method_class(name)).parameters
    return set(parameters) - {"nn_module"}


def get_method(name: str, nn_module: nn.Module, preset: str | None = None, **settings: Any) -> SaliencyMethod:
    """Build saliency method ``name`` for ``nn_module`` with a preset's settings, overridden by ``settings``.

    Raises:
        MammoXAIError: an unknown method, preset or setting (the message lists the valid ones).

    Example:
        cam = get_method("gradcam", nn_module=net, target_layer="features.block4")
        correlax = get_method("correlax", nn_module=lesion_net, preset="faithful", representation_layer="pool")
    """
    method = _method_class(name)
    presets = PRESETS.get(name, {})
    if preset is not None and preset not in presets:
        fix = f"use one of {sorted(presets)}" if presets else "leave preset out: it has none"
        raise MammoXAIError(f"saliency preset for {name}", f"{preset!r} is not a preset", fix)
    arguments = {**presets.get(preset, {}), **settings} if preset is not None else dict(settings)
    unknown = sorted(set(arguments) - method_settings(name))
    if unknown:
        raise MammoXAIError(
            f"saliency settings for {name}", f"{unknown} are not settings", f"use {sorted(method_settings(name))}"
        )
    return method(nn_module, **arguments)


def check_grid(method: SaliencyMethod, grid: tuple[int, int], source: str, model: str = "the model") -> None:
    """Refuse a method whose local views (CorRELAX) do not fit the model grid, before any image is read.

    The grid is fixed by the config, so this is a settings error, known once: not a warning per image.

    Raises:
        MammoXAIError: the grid is smaller than one local view; the message names the grid, the view and the fix.
    """
    view = getattr(method, "view_size", None)
    if view is not None and min(grid) < view:
        raise MammoXAIError(
            source,
            f"{model} runs on {grid[0]}x{grid[1]} pixels, smaller than one {view}x{view} local view",
            "raise the model's image_size to the full-resolution grid, or lower view_size in the saliency settings",
        )


def _method_class(name: str) -> type:
    if name not in METHODS:
        raise MammoXAIError("saliency method", f"{name!r} is not available", f"use one of {list(METHODS)}")
    return METHODS[name]
