"""Saliency methods: maps of where a network looks, on the model grid, batched and on the device; and
representation ablation: which learned knowledge a prediction rests on.

Every method takes a batch and target classes and returns maps (B, K, H, W) in [0, 1] on the input grid plus the
class scores; :func:`get_method` builds one by name (``cam``, ``gradcam``, ``gradcampp``, ``hirescam``,
``occlusion``, ``rise``, ``relax``, ``correlax``) with a ``faithful`` or ``fast`` preset.
"""

from mammoxai.saliency.ablation import AblationStudy, LinearProbe, ablation_effects, explain_image, load_explainer
from mammoxai.saliency.correlax import CorRELAX, CorRELAXResult
from mammoxai.saliency.gradcam import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, normalise_maps
from mammoxai.saliency.masking import MaskedForward, PatchMasks, RandomMasks
from mammoxai.saliency.occlusion import Occlusion
from mammoxai.saliency.registry import METHODS, PRESETS, SaliencyMethod, check_grid, get_method, method_settings
from mammoxai.saliency.relax import RELAX, RELAXResult
from mammoxai.saliency.rise import RISE

__all__ = [
    "CAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "Occlusion",
    "RISE",
    "RELAX",
    "RELAXResult",
    "CorRELAX",
    "CorRELAXResult",
    "MaskedForward",
    "RandomMasks",
    "PatchMasks",
    "SaliencyMethod",
    "METHODS",
    "PRESETS",
    "check_grid",
    "get_method",
    "method_settings",
    "normalise_maps",
    "AblationStudy",
    "LinearProbe",
    "ablation_effects",
    "explain_image",
    "load_explainer",
]
