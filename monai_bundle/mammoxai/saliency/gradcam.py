"""Grad-CAM that stays on the device and explains every image of a batch, for one or several classes at once.

Based on:

    Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization,
    ICCV 2017, https://arxiv.org/abs/1610.02391

The map of class ``c`` is ``ReLU(sum_k alpha_k^c A^k)`` where ``A^k`` are the target layer's activations and
``alpha_k^c`` the spatial mean of ``d y^c / d A^k``, with ``y^c`` the class **logit** (before softmax, as in the
paper: softmax gradients also carry the other classes' scores). It matches :class:`monai.visualize.GradCAM`
but, unlike it, never leaves the device (MONAI normalises through NumPy), computes the maps of several classes
from one forward pass, and normalises every map of every image on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from mammoxai.errors import MammoXAIError

__all__ = ["GradCAM"]


class GradCAM:
    """Gradient-weighted class activation maps for a batch of images.

    The target layer is named as in ``nn_module.named_modules()``, so a config can set it as a string. Images
    of a batch are independent (the summed logits of a batch have per-image gradients), so one backward pass
    serves the whole batch; several classes need one backward each, all from a single forward pass.

    Maps are upsampled bilinearly to the input size (``align_corners=False``, the continuous-coordinate
    convention of :class:`mammoxai.io.geometry.ImageGeometry`) and min-max normalised to [0, 1] per image and
    per class; a map that is constant (the class has no positive evidence anywhere) becomes all zeros.

    Args:
        nn_module: the classifier; it returns logits (B, C). It is run in eval mode and restored afterwards.
        target_layer: name of the layer whose activations (B, K, h, w) are weighted, e.g. ``"features.block4"``.

    Example:
        from mammoxai.nets.classifier import MammoClassifier
        net = MammoClassifier(num_classes=3)
        cam = GradCAM(net, target_layer="features.block4")
        maps, logits = cam(torch.rand(2, 1, 256, 208))                   # (2, 1, 256, 208): predicted class
        maps, logits = cam(torch.rand(2, 1, 256, 208), class_idx=[0, 1, 2])  # (2, 3, 256, 208): every class
    """

    def __init__(self, nn_module: nn.Module, target_layer: str) -> None:
        layers = dict(nn_module.named_modules())
        if target_layer not in layers:
            candidates = ", ".join(name for name in layers if name)
            problem = f"the network has no layer named {target_layer!r}"
            raise MammoXAIError("saliency target_layer", problem, f"use one of: {candidates}")
        self.nn_module = nn_module
        self.target_layer = target_layer
        self._layer = layers[target_layer]

    def __call__(
        self, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the maps and the logits of one forward pass.

        Args:
            x: input batch (B, channels, H, W) on the network's device.
            class_idx: which class each map explains:

                - ``None``: the predicted class of each image → maps (B, 1, H, W);
                - an ``int``: that class for every image → (B, 1, H, W);
                - a 1-D ``torch.Tensor`` of B class indices: one class per image → (B, 1, H, W);
                - a sequence of ints: one map per listed class, in that order → (B, len, H, W).

        Returns:
            ``(maps, logits)``: float32 maps in [0, 1] on the input's device, and the detached logits (B, C).
        """
        captured: list[torch.Tensor] = []
        handle = self._layer.register_forward_hook(lambda _module, _input, output: captured.append(output))
        was_training = self.nn_module.training
        self.nn_module.eval()
        try:
            with torch.enable_grad():
                # the input requires grad so the activations do even when the network's weights are frozen
                logits = self.nn_module(x.detach().requires_grad_(True))
                activations = captured[-1]
                targets = self._targets(logits, class_idx)
                last = len(targets) - 1
                maps = [self._weighted_activations(activations, t, retain=i < last) for i, t in enumerate(targets)]
        finally:
            handle.remove()
            self.nn_module.train(was_training)
        cams = torch.stack(maps, dim=1)
        cams = F.interpolate(cams, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
        return _normalise(cams), logits.detach()

    @staticmethod
    def _targets(logits: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None) -> list[torch.Tensor]:
        """One scalar per requested map: the batch sum of the logits to differentiate."""
        num_classes = logits.shape[1]
        if class_idx is None:
            per_image = logits.argmax(dim=1)
        elif isinstance(class_idx, torch.Tensor):
            per_image = class_idx.to(device=logits.device, dtype=torch.long).reshape(-1)
            if per_image.numel() != logits.shape[0]:
                raise ValueError(f"class_idx has {per_image.numel()} entries for a batch of {logits.shape[0]} images")
        else:
            indices = [int(class_idx)] if isinstance(class_idx, Integral) else [int(index) for index in class_idx]
            for index in indices:
                if not 0 <= index < num_classes:
                    raise ValueError(f"class index {index} is out of range for {num_classes} classes")
            return [logits[:, index].sum() for index in indices]
        return [logits.gather(1, per_image[:, None]).sum()]

    @staticmethod
    def _weighted_activations(activations: torch.Tensor, target: torch.Tensor, retain: bool) -> torch.Tensor:
        """ReLU of the channel sum of activations weighted by their spatially averaged gradients: (B, h, w)."""
        (gradients,) = torch.autograd.grad(target, activations, retain_graph=retain)
        weights = gradients.float().mean(dim=(2, 3), keepdim=True)
        return F.relu((weights * activations.detach().float()).sum(dim=1))


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each (image, class) map to [0, 1] on its device; constant maps become zeros."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    span = maps.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))
