"""Occlusion sensitivity: how much each class's logit drops when a patch of the image is blanked out.

Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014, https://arxiv.org/abs/1311.2901.
A square patch of background value slides over the image; each pixel's score is the mean logit drop over the
patches covering it. All patch positions of all images run through :class:`~mammoxai.saliency.masking.MaskedForward`
in chunks, and the drops are spread back onto the pixels with one ``einsum`` per chunk.
"""

from __future__ import annotations

import torch
from torch import nn

from mammoxai.saliency.gradcam import ClassIndex, class_indices, normalise_maps
from mammoxai.saliency.masking import MaskedForward, PatchMasks

__all__ = ["Occlusion"]


class Occlusion:
    """Occlusion maps of a batch, for one or several classes, on the device.

    Positive values (a drop of the logit when the patch is hidden) are the evidence for the class; maps are
    ``ReLU`` of the mean drop, min-max normalised per image and class.

    Args:
        nn_module: the classifier (logits out).
        patch: side of the occluding square in pixels of the model grid.
        stride: step between patch positions.
        chunk_size: masked images per forward pass (see :class:`~mammoxai.saliency.masking.MaskedForward`).
        amp: mixed precision on CUDA.

    Example:
        maps, logits = Occlusion(net, patch=32, stride=16)(images, class_idx=[2])
    """

    def __init__(
        self, nn_module: nn.Module, patch: int = 32, stride: int = 16, chunk_size: int = 256, amp: bool = True
    ):
        self.patch, self.stride = int(patch), int(stride)
        self.engine = MaskedForward(nn_module, chunk_size=chunk_size, amp=amp)

    @property
    def settings(self) -> dict[str, int | str]:
        return {"patch": self.patch, "stride": self.stride, "score": "logit drop"}

    def __call__(self, x: torch.Tensor, class_idx: ClassIndex = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps (B, K, H, W) in [0, 1], logits (B, C))``; ``class_idx`` as in :class:`~mammoxai.saliency.GradCAM`."""
        _, logits = self.engine.forward(x)
        targets = torch.stack(class_indices(logits, class_idx), dim=1)  # (B, K)
        clean = logits.gather(1, targets)
        patches = PatchMasks(tuple(x.shape[2:]), self.patch, self.stride, device=x.device)
        drops = x.new_zeros(x.shape[0], targets.shape[1], *x.shape[2:], dtype=torch.float32)
        coverage = x.new_zeros(*x.shape[2:], dtype=torch.float32)
        for chunk in self.engine(x, patches):
            hidden = 1.0 - chunk.masks
            scores = chunk.logits.gather(2, targets[:, None, :].expand(-1, chunk.masks.shape[0], -1))
            drops += torch.einsum("bnk,nhw->bkhw", clean[:, None, :] - scores, hidden)
            coverage += hidden.sum(dim=0)
        return normalise_maps(torch.relu(drops / coverage)), logits
