"""Saliency methods: maps of where a network looks, on the model grid, batched and on the device; and
representation ablation: which learned knowledge a prediction rests on."""

from mammoxai.saliency.ablation import AblationStudy, LinearProbe, ablation_effects, explain_image, load_explainer
from mammoxai.saliency.gradcam import GradCAM

__all__ = ["GradCAM", "AblationStudy", "LinearProbe", "ablation_effects", "explain_image", "load_explainer"]
