"""Saliency methods: maps of where a network looks, on the model grid, batched and on the device."""

from mammoxai.saliency.gradcam import GradCAM

__all__ = ["GradCAM"]
