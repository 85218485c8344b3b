"""RELAX: representation learning explainability, with its uncertainty (U-RELAX).

Wickstrøm, Trosten, Løkse, Boubekki, Mikalsen, Kampffmeyer & Jenssen, "RELAX: Representation Learning
Explainability", International Journal of Computer Vision 2023 (arXiv 2021, https://arxiv.org/abs/2112.10161).
An image's representation ``h = f(x)`` is compared with the representations of randomly masked copies,
``s_m = cos(f(x * M_m), h)``; a pixel is important when keeping it keeps the representation:

    R(u) = sum_m s_m M_m(u) / sum_m M_m(u)                          (importance: mask-weighted mean)
    U(u) = sum_m M_m(u) (s_m - R(u))^2 / (sum_m M_m(u) - 1)         (U-RELAX uncertainty: mask-weighted variance)

The official code updates ``R`` and ``U`` mask by mask (a weighted Welford recursion); here the masked passes run
in chunks through the shared engine (:mod:`mammoxai.saliency.masking`) and the three sums are accumulated with
``einsum``. Similarities are shifted by a per-image reference before squaring so the variance does not lose its
digits to cancellation (cosines sit close to 1 and their spread is small).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mammoxai.saliency.gradcam import ClassIndex, class_indices, normalise_maps
from mammoxai.saliency.masking import MaskedForward, RandomMasks

__all__ = ["RELAX", "RELAXResult", "similarity"]


def similarity(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine similarity in float32 of masked features (B, n, D) to each image's unmasked features (B, D): (B, n)."""
    return F.cosine_similarity(features.float(), reference.float()[:, None, :], dim=2)


@dataclass
class RELAXResult:
    """Float32 maps on the input grid: ``importance`` and ``uncertainty`` (B, H, W), and the unmasked logits (B, C)."""

    importance: torch.Tensor
    uncertainty: torch.Tensor
    logits: torch.Tensor


class RELAX:
    """RELAX importance and U-RELAX uncertainty of a batch, on the device.

    RELAX explains a representation, not a class: ``class_idx`` is checked (so a class the model lacks is still an
    error) and otherwise ignored, and one map per image is returned.

    Args:
        nn_module: the network; its output are logits, and ``representation_layer`` names the representation.
        representation_layer: layer whose flattened output is ``f(x)`` (``"pool"`` in
            :class:`~mammoxai.nets.MammoClassifier`); ``None``: the logits themselves.
        num_masks: masks per image (paper: 3000).
        grid: cells per side of the random grid (paper: 7).
        keep_prob: probability a cell is kept (paper: 0.5).
        seed: seed of the masks.
        chunk_size: masked images per forward pass.
        amp: mixed precision on CUDA; similarities are always computed in float32.

    Example:
        result = RELAX(net, representation_layer="pool", num_masks=3000).explain(images)
        result.importance.shape == result.uncertainty.shape == images.shape[:1] + images.shape[2:]
    """

    def __init__(
        self,
        nn_module: nn.Module,
        representation_layer: str | None = None,
        num_masks: int = 3000,
        grid: int = 7,
        keep_prob: float = 0.5,
        seed: int = 0,
        chunk_size: int = 256,
        amp: bool = True,
    ) -> None:
        self.num_masks, self.grid, self.keep_prob, self.seed = int(num_masks), int(grid), float(keep_prob), int(seed)
        self.engine = MaskedForward(nn_module, representation_layer, chunk_size=chunk_size, amp=amp)

    @property
    def settings(self) -> dict[str, int | float | str | None]:
        return {
            "representation_layer": self.engine.representation_layer,
            "num_masks": self.num_masks,
            "grid": self.grid,
            "keep_prob": self.keep_prob,
            "seed": self.seed,
            "score": "cosine similarity of representations",
        }

    def explain(self, x: torch.Tensor) -> RELAXResult:
        """Importance and uncertainty maps of the batch ``x`` (B, channels, H, W)."""
        features, logits = self.engine.forward(x)
        masks = RandomMasks(self.num_masks, tuple(x.shape[2:]), self.grid, self.keep_prob, self.seed, x.device)
        weight = x.new_zeros(*x.shape[2:], dtype=torch.float32)
        first = x.new_zeros(x.shape[0], *x.shape[2:], dtype=torch.float32)
        second = torch.zeros_like(first)
        shift = None
        for chunk in self.engine(x, masks):
            scores = similarity(chunk.features, features)  # (B, n)
            if shift is None:
                shift = scores.mean(dim=1, keepdim=True)
            deviation = scores - shift
            weight += chunk.masks.sum(dim=0)
            first += torch.einsum("bn,nhw->bhw", deviation, chunk.masks)
            second += torch.einsum("bn,nhw->bhw", deviation.square(), chunk.masks)
        importance = shift[:, :, None] + first / weight.clamp_min(1e-10)
        uncertainty = (second - first.square() / weight.clamp_min(1e-10)) / (weight - 1.0).clamp_min(1e-10)
        return RELAXResult(importance, uncertainty.clamp_min(0.0), logits)

    def __call__(self, x: torch.Tensor, class_idx: ClassIndex = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(importance maps (B, 1, H, W) in [0, 1], logits (B, C))``."""
        result = self.explain(x)
        class_indices(result.logits, class_idx)
        return normalise_maps(result.importance[:, None]), result.logits
