"""RISE: randomised input sampling for explanation of black-box models.

Petsiuk, Das & Saenko, BMVC 2018, https://arxiv.org/abs/1806.07421. The saliency of pixel ``u`` for class ``c`` is
the expected class probability over random smooth masks that keep ``u``:

    S_c(u) = 1 / (N p) * sum_m P_c(x * M_m) M_m(u)

computed here with the shared masking engine (:mod:`mammoxai.saliency.masking`): masks made on the device from a
seed, masked passes in chunks, one ``einsum`` per chunk.
"""

from __future__ import annotations

import torch
from torch import nn

from mammoxai.saliency.gradcam import ClassIndex, class_indices, normalise_maps
from mammoxai.saliency.masking import MaskedForward, RandomMasks

__all__ = ["RISE"]


class RISE:
    """RISE maps of a batch, for one or several classes, on the device.

    Args:
        nn_module: the classifier (logits out; RISE weights masks with the softmax probabilities).
        num_masks: masks per image (the paper: 4000 for ResNet-50 on ImageNet).
        grid: cells per side of the random grid (paper: 7).
        keep_prob: probability a cell is kept (paper: 0.5).
        seed: seed of the masks; the same seed gives the same map.
        chunk_size: masked images per forward pass.
        amp: mixed precision on CUDA.

    Example:
        maps, logits = RISE(net, num_masks=2000)(images, class_idx=[0, 1, 2])  # (B, 3, H, W)
    """

    def __init__(
        self,
        nn_module: nn.Module,
        num_masks: int = 4000,
        grid: int = 7,
        keep_prob: float = 0.5,
        seed: int = 0,
        chunk_size: int = 256,
        amp: bool = True,
    ) -> None:
        self.num_masks, self.grid, self.keep_prob, self.seed = int(num_masks), int(grid), float(keep_prob), int(seed)
        self.engine = MaskedForward(nn_module, chunk_size=chunk_size, amp=amp)

    @property
    def settings(self) -> dict[str, int | float | str]:
        return {
            "num_masks": self.num_masks,
            "grid": self.grid,
            "keep_prob": self.keep_prob,
            "seed": self.seed,
            "score": "softmax probability",
        }

    def saliency(self, x: torch.Tensor, class_idx: ClassIndex = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised ``S_c`` (B, K, H, W), the expected probability under masks keeping each pixel, and the logits."""
        _, logits = self.engine.forward(x)
        targets = torch.stack(class_indices(logits, class_idx), dim=1)  # (B, K)
        masks = RandomMasks(self.num_masks, tuple(x.shape[2:]), self.grid, self.keep_prob, self.seed, x.device)
        total = x.new_zeros(x.shape[0], targets.shape[1], *x.shape[2:], dtype=torch.float32)
        for chunk in self.engine(x, masks):
            probabilities = torch.softmax(chunk.logits, dim=2)
            weights = probabilities.gather(2, targets[:, None, :].expand(-1, chunk.masks.shape[0], -1))
            total += torch.einsum("bnk,nhw->bkhw", weights, chunk.masks)
        return total / (self.num_masks * self.keep_prob), logits

    def __call__(self, x: torch.Tensor, class_idx: ClassIndex = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps (B, K, H, W) in [0, 1], logits (B, C))``; ``class_idx`` as in :class:`~mammoxai.saliency.GradCAM`."""
        saliency, logits = self.saliency(x, class_idx)
        return normalise_maps(saliency), logits
