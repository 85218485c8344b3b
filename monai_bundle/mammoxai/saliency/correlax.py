"""CorRELAX: local RELAX over a full-resolution mammogram, correlated with a lesion classifier's predictions.

Mellado et al., CorRELAX, Frontiers in Oncology 2025. A classifier trained on multi-scale crops of annotated
lesions (mass, calcification, other, no finding) is run over ``view_size`` × ``view_size`` local views of the
full-resolution image, ``stride`` pixels apart, on the breast only. For each view ``v``

- its prediction ``p_v,c`` is the softmax of the unmasked view;
- ``num_masks`` masked copies (RELAX masks: ``grid`` × ``grid`` cells kept with probability ``keep_prob``) give
  the similarity ``s_m`` of each masked representation to the unmasked one and the class predictions
  ``p_m,c``; the view's **correlation** for class ``c`` is Pearson's ``r(s, p_c)`` over the masks: high when
  the class is predicted exactly when what the view shows is preserved.

The per-view values, spread over each view's pixels by an overlap kernel and divided by the summed kernel, form a
global **prediction map** and a global **correlation map** per class (published settings: 256-pixel views,
stride 32, 8 × 8 grid, p = 0.5, 1280 masks — the ``faithful`` preset of :func:`mammoxai.saliency.get_method`).

Two savings make the ``fast`` preset: views with little breast are skipped (``min_breast_fraction``), and
coarse-to-fine refinement (``refine_fraction``): every view gets its cheap unmasked prediction (the coarse level),
but only the views whose strongest lesion-class prediction ranks in the top ``refine_fraction`` get the masked
passes (the fine level); the others add nothing to the correlation map. All masked passes of a batch of views run
through the shared engine (:mod:`mammoxai.saliency.masking`); the assembly is one transposed convolution. The
prediction map needs no masked pass at all: asked for it alone (``map="prediction"``), CorRELAX runs none, so its
cost is one pass per view whatever the preset's masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.saliency.gradcam import ClassIndex, class_indices, normalise_maps
from mammoxai.saliency.masking import MaskedForward, RandomMasks
from mammoxai.saliency.relax import similarity

__all__ = ["CorRELAX", "CorRELAXResult", "pearson_over_masks"]


def pearson_over_masks(similarities: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over masks of ``similarities`` (V, N) with each class of ``probabilities`` (V, N, C): (V, C).

    A constant series (no variation to correlate with) gives 0.
    """
    ds = similarities - similarities.mean(dim=1, keepdim=True)
    dp = probabilities - probabilities.mean(dim=1, keepdim=True)
    covariance = torch.einsum("vn,vnc->vc", ds, dp)
    scale = torch.sqrt(ds.square().sum(dim=1)[:, None] * dp.square().sum(dim=1))
    return torch.where(scale > 0, covariance / scale.clamp_min(torch.finfo(scale.dtype).tiny), torch.zeros_like(scale))


@dataclass
class CorRELAXResult:
    """Float32 global maps (B, C, H, W) on the input grid, per class: ``prediction`` (kernel-weighted mean of the view
    probabilities; 0 where no view was run) and ``correlation`` (kernel-weighted mean of the refined views'
    Pearson r; 0 where none was refined); ``views`` and ``refined``: how many views were run / refined per image."""

    prediction: torch.Tensor
    correlation: torch.Tensor
    views: list[int]
    refined: list[int]


class CorRELAX:
    """CorRELAX prediction and correlation maps of full-resolution images, on the device.

    Args:
        nn_module: the lesion-crop classifier: a view (n, channels, view_size, view_size) in, logits out.
        representation_layer: the layer whose flattened output is the compared representation; ``None``: logits.
        view_size: side of a local view in pixels (published: 256).
        stride: step between views (published: 32).
        num_masks, grid, keep_prob: the RELAX masks of each view (published: 1280, 8, 0.5).
        min_breast_fraction: a view is run when more than this fraction of its pixels is breast (non-zero after the
            preprocessing's background zeroing); 0 runs every view that touches the breast.
        refine_fraction: fraction of the views (those with the strongest lesion prediction) given masked passes;
            1 refines them all (faithful).
        background_class: index of the "no finding" class, left out when ranking views for refinement
            (``None``: every class counts).
        kernel_sigma: the overlap kernel is a Gaussian of this standard deviation, as a fraction of ``view_size``;
            ``None``: a uniform kernel (every pixel of a view weighs the same).
        map: which global map ``__call__`` returns, ``"prediction"`` or ``"correlation"``.
        view_batch: views whose masked passes share a chunk stream.
        seed, chunk_size, amp: as for :class:`~mammoxai.saliency.RELAX`.

    Example:
        correlax = get_method("correlax", nn_module=lesion_net, preset="fast")
        result = correlax.explain(full_resolution)     # result.prediction, result.correlation: (1, 4, H, W)
        maps, scores = correlax(full_resolution, class_idx=[0, 1])
    """

    def __init__(
        self,
        nn_module: nn.Module,
        representation_layer: str | None = None,
        view_size: int = 256,
        stride: int = 32,
        num_masks: int = 1280,
        grid: int = 8,
        keep_prob: float = 0.5,
        min_breast_fraction: float = 0.0,
        refine_fraction: float = 1.0,
        background_class: int | None = None,
        kernel_sigma: float | None = 0.25,
        map: str = "prediction",
        view_batch: int = 8,
        seed: int = 0,
        chunk_size: int = 1024,
        amp: bool = True,
    ) -> None:
        if map not in ("prediction", "correlation"):
            raise MammoXAIError("saliency map", f"{map!r} is not a CorRELAX map", "use 'prediction' or 'correlation'")
        if view_size < 1 or stride < 1 or not 0.0 < refine_fraction <= 1.0:
            problem = f"view_size={view_size}, stride={stride}, refine_fraction={refine_fraction}"
            raise MammoXAIError("saliency correlax", problem, "use positive sizes and 0 < refine_fraction <= 1")
        if kernel_sigma is not None and not kernel_sigma > 0:
            problem = f"is {kernel_sigma}: a kernel of zero width gives every pixel zero weight"
            raise MammoXAIError("saliency kernel_sigma", problem, "use a fraction of view_size > 0, or None (uniform)")
        self.view_size, self.stride = int(view_size), int(stride)
        self.num_masks, self.grid, self.keep_prob, self.seed = int(num_masks), int(grid), float(keep_prob), int(seed)
        self.min_breast_fraction, self.refine_fraction = float(min_breast_fraction), float(refine_fraction)
        self.background_class, self.kernel_sigma, self.map = background_class, kernel_sigma, map
        self.view_batch = max(1, int(view_batch))
        self.engine = MaskedForward(nn_module, representation_layer, chunk_size=chunk_size, amp=amp)

    @property
    def settings(self) -> dict[str, object]:
        names = (
            "view_size",
            "stride",
            "num_masks",
            "grid",
            "keep_prob",
            "min_breast_fraction",
            "refine_fraction",
            "background_class",
            "kernel_sigma",
            "map",
            "seed",
        )
        return {
            "representation_layer": self.engine.representation_layer,
            **{name: getattr(self, name) for name in names},
        }

    def __call__(self, x: torch.Tensor, class_idx: ClassIndex = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps (B, K, H, W) in [0, 1], scores (B, C))``: the chosen global map of each requested class, and each
        class's highest value of the prediction map (the image-level score: its most suspicious region)."""
        result = self.explain(x, correlation=self.map == "correlation")
        scores = result.prediction.amax(dim=(2, 3))
        targets = torch.stack(class_indices(scores, class_idx), dim=1)  # (B, K)
        chosen = result.prediction if self.map == "prediction" else result.correlation.clamp_min(0.0)
        maps = chosen.gather(1, targets[:, :, None, None].expand(-1, -1, *chosen.shape[2:]))
        return normalise_maps(maps), scores

    def explain(self, x: torch.Tensor, correlation: bool = True) -> CorRELAXResult:
        """Global prediction and correlation maps of the batch ``x`` (B, channels, H, W), image by image.

        ``correlation=False`` skips the masked passes, the expensive part that only the correlation map needs: the
        correlation map is then 0 and no view is refined.

        Raises:
            MammoXAIError: the image is smaller than one view, has no breast pixel or no view with more than
                ``min_breast_fraction`` breast; ``background_class`` is not a class of the network.
        """
        height, width = x.shape[2:]
        if height < self.view_size or width < self.view_size:
            problem = f"{height}x{width} pixels is smaller than one {self.view_size}x{self.view_size} local view"
            raise MammoXAIError("CorRELAX input", problem, "give the full-resolution image or a smaller view_size")
        results = [self._explain_one(image[None], correlation, number) for number, image in enumerate(x)]
        return CorRELAXResult(
            torch.cat([result[0] for result in results]),
            torch.cat([result[1] for result in results]),
            [result[2] for result in results],
            [result[3] for result in results],
        )

    def _explain_one(
        self, image: torch.Tensor, correlation: bool, number: int
    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        height, width = image.shape[2:]
        size, stride = self.view_size, self.stride
        rows, cols = (math.ceil((length - size) / stride) + 1 for length in (height, width))
        padded = F.pad(image, (0, (cols - 1) * stride + size - width, 0, (rows - 1) * stride + size - height))
        breast = F.avg_pool2d((padded.abs().sum(dim=1, keepdim=True) > 0).float(), size, stride)[0, 0]  # (rows, cols)
        selected = self._selected(breast, number)
        views = padded[0].unfold(1, size, stride).unfold(2, size, stride)  # (channels, rows, cols, size, size)
        views = views[:, selected[:, 0], selected[:, 1]].transpose(0, 1)  # (V, channels, size, size)
        features, probabilities = [], []
        for start in range(0, len(views), self.view_batch):
            batch_features, batch_logits = self.engine.forward(views[start : start + self.view_batch])
            features.append(batch_features)
            probabilities.append(torch.softmax(batch_logits, dim=1))
        features, probabilities = torch.cat(features), torch.cat(probabilities)
        self._check_background_class(probabilities.shape[1])
        refined = self._refined(probabilities) if correlation else selected.new_zeros(0)
        correlations = self._correlations(views[refined], features[refined]) if len(refined) else probabilities[:0]
        grid = (rows, cols)
        prediction_map = self._assemble(probabilities, selected, grid)
        correlation_map = self._assemble(correlations, selected[refined], grid)
        return prediction_map[..., :height, :width], correlation_map[..., :height, :width], len(views), len(refined)

    def _selected(self, breast: torch.Tensor, number: int) -> torch.Tensor:
        """View-grid positions (V, 2) of the views with more than ``min_breast_fraction`` breast, from the breast
        fraction of every view (rows, cols); an image without one is an error, not an all-zero map."""
        selected = torch.nonzero(breast > self.min_breast_fraction)
        if selected.numel() == 0 and not breast.any():
            problem = f"image {number} of the batch has no breast pixel (it is all background)"
            raise MammoXAIError("CorRELAX input", problem, "explain images that show a breast")
        if selected.numel() == 0:
            size = self.view_size
            problem = (
                f"no {size}x{size} view of image {number} of the batch is more than {self.min_breast_fraction:.0%} "
                f"breast (at most {float(breast.max()):.0%})"
            )
            raise MammoXAIError("saliency min_breast_fraction", problem, "lower it, or use the faithful preset")
        return selected

    def _check_background_class(self, classes: int) -> None:
        if self.background_class is not None and not 0 <= self.background_class < classes:
            problem = f"{self.background_class} is not one of the network's {classes} classes"
            raise MammoXAIError("saliency background_class", problem, f"use 0 to {classes - 1}, or None")

    def _refined(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Indices of the views given masked passes: all, or the top fraction by strongest lesion prediction."""
        count = math.ceil(self.refine_fraction * len(probabilities))
        if count >= len(probabilities):
            return torch.arange(len(probabilities), device=probabilities.device)
        lesion = probabilities.clone()
        if self.background_class is not None:
            lesion[:, self.background_class] = -1.0
        return lesion.amax(dim=1).topk(count).indices.sort().values

    def _correlations(self, views: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Pearson r between masked-representation similarity and each class's probability, per view: (V, C)."""
        masks = RandomMasks(self.num_masks, (self.view_size,) * 2, self.grid, self.keep_prob, self.seed, views.device)
        correlations = []
        for start in range(0, len(views), self.view_batch):
            batch = views[start : start + self.view_batch]
            chunks = list(self.engine(batch, masks))
            similarities = torch.cat(
                [similarity(chunk.features, features[start : start + len(batch)]) for chunk in chunks], dim=1
            )
            probabilities = torch.cat([torch.softmax(chunk.logits, dim=2) for chunk in chunks], dim=1)
            correlations.append(pearson_over_masks(similarities, probabilities))
        return torch.cat(correlations)

    def _assemble(self, values: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Spread per-view values (V, C) at view-grid ``positions`` (V, 2) into a (1, C, H', W') map with the kernel."""
        device, size = positions.device, self.view_size
        classes = values.shape[1]
        impulses = torch.zeros(1, classes + 1, *grid, device=device)
        impulses[0, :classes, positions[:, 0], positions[:, 1]] = values.T.float()
        impulses[0, classes, positions[:, 0], positions[:, 1]] = 1.0
        kernel = self._kernel(device).expand(classes + 1, 1, size, size)
        spread = F.conv_transpose2d(impulses, kernel, stride=self.stride, groups=classes + 1)
        weight = spread[:, classes:]
        return torch.where(
            weight > 0, spread[:, :classes] / weight.clamp_min(1e-12), torch.zeros_like(spread[:, :classes])
        )

    def _kernel(self, device: torch.device) -> torch.Tensor:
        size = self.view_size
        if self.kernel_sigma is None:
            return torch.ones(1, 1, size, size, device=device)
        centre = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
        profile = torch.exp(-0.5 * (centre / (self.kernel_sigma * size)).square())
        return (profile[:, None] * profile[None, :])[None, None]
