"""Does a saliency map point at the lesion, and does it depend on the model? Metrics for heatmaps.

- :func:`pointing_game` — Zhang et al., Top-down Neural Attention by Excitation Backprop, ECCV 2016
  (https://arxiv.org/abs/1608.00507); as used for breast lesions by Byra et al. 2022 (71 %): a hit when the
  map's maximum lies within a tolerance (pixels, or millimetres with the pixel spacing) of the lesion.
  :func:`pointing_game_summary` gives per-class accuracy and the class mean; CorRELAX's aggregate (Mellado et al.
  2025) widens lesion boxes by the view stride and can ignore maps whose score is below a threshold.
  :func:`paired_pointing_difference` compares two maps of the same findings with a paired bootstrap interval.
- :func:`energy_pointing_game` — Wang et al., Score-CAM, CVPRW 2020: the fraction of the map's energy inside.
- :func:`deletion_insertion_auc` — Petsiuk et al., RISE, BMVC 2018: the class probability as the most salient
  pixels are removed (deletion, lower is better) or revealed (insertion, higher is better), restricted here to
  the breast so background pixels do not dilute the curve.
- :func:`randomisation_sanity` — Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018: a map that
  survives randomising the model's weights explains the image, not the model.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from monai.networks import eval_mode
from scipy import ndimage
from scipy.stats import spearmanr
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.metrics.classification import ConfidenceInterval, bootstrap_ci

__all__ = [
    "pointing_game",
    "pointing_game_summary",
    "paired_pointing_difference",
    "widen_box",
    "energy_pointing_game",
    "deletion_insertion_auc",
    "randomisation_sanity",
    "randomise_weights",
]


def pointing_game(
    heatmap: np.ndarray,
    region: np.ndarray,
    tolerance: float = 0.0,
    spacing: Sequence[float] | None = None,
) -> bool:
    """Whether the heatmap's maximum lies within ``tolerance`` of the ground-truth ``region``.

    Args:
        heatmap: (H, W) map; ties for the maximum count as a hit when any of them is within tolerance, but a
            constant map (e.g. the all-zero map of a method that found nothing) points nowhere and is a miss.
        region: (H, W) boolean lesion mask (a box can be drawn into one).
        tolerance: distance allowed from the region, in pixels, or in millimetres when ``spacing`` is given.
        spacing: (row, column) pixel spacing in mm; distances are then measured in mm (anisotropic pixels work).

    Raises:
        MammoXAIError: an empty region, a heatmap of another shape or holding NaN (either would silently score a
            miss), a negative tolerance or a spacing that is not positive.
    """
    region = _checked_region(heatmap, region, "pointing game")
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if tolerance < 0:
        raise MammoXAIError("pointing game tolerance", f"is {tolerance}", "use a distance of 0 or more")
    if spacing is not None and not (len(spacing) == 2 and min(spacing) > 0):
        fix = "give (row, column) spacing in mm, both > 0"
        raise MammoXAIError("pointing game spacing", f"is {list(spacing)}", fix)
    if heatmap.max() <= heatmap.min():
        return False
    peaks = heatmap >= heatmap.max()
    distance = ndimage.distance_transform_edt(~region, sampling=None if spacing is None else tuple(spacing))
    return bool((distance[peaks] <= tolerance).any())


def _checked_region(
    heatmap: np.ndarray | torch.Tensor, region: np.ndarray, metric: str, grid: str = "ground truth"
) -> np.ndarray:
    """``region`` as a boolean array, once it and ``heatmap`` are known to be scoreable together: same shape, a
    non-empty region, no NaN in the map (NaN compares false, so a NaN map would quietly score a miss)."""
    region = np.asarray(region, dtype=bool)
    shape = tuple(heatmap.shape)
    if shape != region.shape:
        problem = f"is {shape[0]}x{shape[1]} pixels, the {grid} {region.shape[0]}x{region.shape[1]}"
        raise MammoXAIError(f"{metric} heatmap", problem, f"give the map on the grid of the {grid}")
    if not region.any():
        raise MammoXAIError(f"{metric} region", "is empty", "draw the lesion's mask or box inside the image")
    if bool(np.isnan(np.asarray(heatmap, dtype=np.float64)).any()):
        raise MammoXAIError(f"{metric} heatmap", "holds NaN", "score finite maps: NaN comes from non-finite pixels")
    return region


def widen_box(box: Sequence[float], margin: float | tuple[float, float], shape: Sequence[int]) -> np.ndarray:
    """Boolean (H, W) mask of box ``(xmin, ymin, xmax, ymax)`` widened by ``margin`` pixels on every side (CorRELAX
    widens boxes by the view stride, the resolution of its maps), clipped to the image: a box wholly outside gives
    an empty mask, a box of zero width or height (a point) its pixel. ``margin`` may be ``(rows, columns)``: a stride
    on the model grid spans another number of original pixels down than across when the crop was not resized
    with its aspect ratio."""
    x0, y0, x1, y1 = box
    row_margin, column_margin = (margin, margin) if np.isscalar(margin) else margin
    mask = np.zeros(tuple(shape), dtype=bool)
    mask[_span(y0, y1, row_margin), _span(x0, x1, column_margin)] = True
    return mask


def _span(low: float, high: float, margin: float) -> slice:
    """The pixels from ``low - margin`` to ``high + margin``, at least the one at ``low`` (a point annotation), both
    ends clipped at 0: a negative end would count from the far edge of the image."""
    start = int(np.floor(low - margin))
    stop = max(int(np.ceil(high + margin)), start + 1)
    return slice(max(0, start), max(0, stop))


def pointing_game_summary(
    hits: Iterable[tuple[str, bool]] | Iterable[tuple[str, bool, float]], score_threshold: float | None = None
) -> dict[str, float]:
    """Per-class pointing accuracy, the class mean and the overall hit rate from ``(class, hit[, score])`` rows.

    With ``score_threshold`` (CorRELAX's aggregate), rows whose score is below it are left out: the method did not
    claim a lesion there. Returns ``{"<class>": accuracy, ..., "class_mean": ..., "overall": ..., "n": count}``.
    """
    per_class: dict[str, list[bool]] = defaultdict(list)
    for row in hits:
        name, hit, *score = row
        if score_threshold is not None and score and score[0] < score_threshold:
            continue
        per_class[str(name)].append(bool(hit))
    summary = {name: float(np.mean(values)) for name, values in sorted(per_class.items())}
    everything = [hit for values in per_class.values() for hit in values]
    summary["class_mean"] = float(np.mean(list(summary.values()))) if summary else float("nan")
    summary["overall"] = float(np.mean(everything)) if everything else float("nan")
    summary["n"] = float(len(everything))
    return summary


def paired_pointing_difference(
    categories: Sequence[str],
    hits_a: Sequence[bool],
    hits_b: Sequence[bool],
    groups: Sequence[str] | None = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    statistics: Sequence[str] = ("overall", "class_mean"),
) -> dict[str, ConfidenceInterval]:
    """Pointing game of map A minus that of map B on the same findings, overall and as the class mean, with paired
    bootstrap intervals.

    Both maps' outcomes of a finding are resampled together (whole images or patients when ``groups`` is given),
    so which findings happen to be easy is shared and cancels in the difference. That is what makes a claim such as
    "the fast preset points within 0.02 of the faithful one" testable on a few hundred findings: two unpaired hit
    rates of that size carry intervals of about ±0.05 each. A resample that loses a finding class leaves the class
    mean undefined and is dropped (:func:`~mammoxai.metrics.bootstrap_ci`).

    Args:
        categories: (N,) finding class of each finding.
        hits_a, hits_b: (N,) pointing-game outcomes of the two maps on the same findings, in the same order.
        groups: (N,) cluster ids (image or patient of each finding); ``None`` resamples findings.
        n, seed, level: as in :func:`~mammoxai.metrics.bootstrap_ci`.
        statistics: which differences to bootstrap, ``"overall"`` and / or ``"class_mean"`` (each costs ``n``
            resamples; for the findings of one class the two coincide).

    Returns:
        ``{statistic: interval}`` of A - B, for each of ``statistics``.

    Raises:
        ValueError: the three sequences differ in length, or a statistic is unknown.
    """
    if not len(categories) == len(hits_a) == len(hits_b):
        raise ValueError(f"{len(categories)} categories, {len(hits_a)} and {len(hits_b)} hits: pair every finding")
    unknown = sorted(set(statistics) - {"overall", "class_mean"})
    if unknown:
        raise ValueError(f"unknown statistics {unknown}: use 'overall' and / or 'class_mean'")
    pairs = np.stack([np.asarray(hits_a, dtype=np.float64), np.asarray(hits_b, dtype=np.float64)], axis=1)
    codes = np.unique(np.asarray(categories, dtype=str), return_inverse=True)[1]
    classes = np.unique(codes)

    def class_mean(pair: np.ndarray, code: np.ndarray) -> float:
        if not np.isin(classes, code).all():
            return float("nan")
        return float(np.mean([pair[code == c, 0].mean() - pair[code == c, 1].mean() for c in classes]))

    def overall(pair: np.ndarray, _code: np.ndarray) -> float:
        return float(pair[:, 0].mean() - pair[:, 1].mean()) if len(pair) else float("nan")

    functions = {"overall": overall, "class_mean": class_mean}
    return {
        name: bootstrap_ci(functions[name], pairs, codes, n=n, seed=seed, level=level, groups=groups)
        for name in statistics
    }


def energy_pointing_game(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Fraction of the (non-negative part of the) map's sum that lies inside ``region``; 0 for an all-zero map.

    Raises:
        MammoXAIError: as :func:`pointing_game`, for an empty region or a heatmap of another shape or holding NaN.
    """
    region = _checked_region(heatmap, region, "energy pointing game")
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    total = heatmap.sum()
    return float(heatmap[region].sum() / total) if total > 0 else 0.0


def deletion_insertion_auc(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    heatmap: torch.Tensor,
    class_index: int,
    breast: torch.Tensor | None = None,
    steps: int = 20,
    baseline: float = 0.0,
    softmax: bool = True,
) -> tuple[float, float]:
    """Area under the deletion and insertion curves (Petsiuk et al. 2018) of one image, restricted to the breast.

    Breast pixels are ranked by the heatmap; at each of ``steps + 1`` points the top fraction is set to
    ``baseline`` (deletion) or copied onto an all-``baseline`` image (insertion), and the softmax probability of
    ``class_index`` is recorded. All curve points go through the model as one batch.

    Args:
        model: logits of a batch (n, channels, H, W), or class probabilities when ``softmax`` is False (e.g.
            CorRELAX's image score, the highest probability over its local views).
        image: (channels, H, W). heatmap: (H, W).
        breast: (H, W) boolean mask of the pixels ranked; ``None``: the non-zero pixels of the image.
        softmax: turn the model's outputs into probabilities with a softmax.

    Returns:
        ``(deletion_auc, insertion_auc)`` by the trapezoidal rule over the fraction of breast pixels in [0, 1].

    Raises:
        MammoXAIError: no breast pixel to rank (e.g. an all-zero image), a heatmap of another shape than the image
            or holding NaN, fewer than 1 step, or a class the model does not score.
    """
    if steps < 1:
        raise MammoXAIError("deletion/insertion steps", f"is {steps}", "use 1 or more points per curve")
    if breast is None:
        breast = image.abs().sum(dim=0) > 0
    if not breast.any():
        problem = "has no pixel (the image is all background): there is nothing to delete or insert"
        raise MammoXAIError("deletion/insertion breast", problem, "pass a breast mask, or an image with a breast")
    _checked_region(heatmap.detach().cpu(), breast.cpu().numpy(), "deletion/insertion", "image")
    order = torch.argsort(heatmap.flatten().masked_fill(~breast.flatten(), float("-inf")), descending=True)
    count = int(breast.sum())
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    cuts = torch.linspace(0, count, steps + 1, device=image.device).round()
    top = (rank.reshape(heatmap.shape)[None] < cuts[:, None, None]).unsqueeze(1)  # (steps + 1, 1, H, W)
    empty = torch.full_like(image, baseline)
    deleted = torch.where(top, empty, image)
    inserted = torch.where(top, image, torch.where(breast, empty, image))  # outside the breast stays as it was
    outputs = _evaluated(model, torch.cat([deleted, inserted]))
    if not 0 <= class_index < outputs.shape[1]:
        fix = f"use 0 to {outputs.shape[1] - 1}"
        raise MammoXAIError("deletion/insertion class_index", f"{class_index} is not one of the model's classes", fix)
    probabilities = (torch.softmax(outputs, dim=1) if softmax else outputs)[:, class_index].double().cpu()
    curves = probabilities.reshape(2, steps + 1)  # deletion, insertion over the fraction of the breast changed
    areas = torch.trapezoid(curves, dx=1.0 / steps, dim=1)  # np.trapz is deprecated in NumPy 2 and later removed
    return float(areas[0]), float(areas[1])


def _evaluated(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Float32 outputs of ``model`` on ``images`` without gradients, a network in eval mode and put back as it was:
    in train mode, BatchNorm would normalise the curve's images by each other and dropout would add noise."""
    with eval_mode(model):
        return model(images).float()


def randomisation_sanity(original: np.ndarray, randomised: np.ndarray) -> float:
    """Spearman rank correlation of maps before and after randomising the model's weights (Adebayo et al. 2018).

    A faithful method gives a low value (the maps decorrelate); close to 1 means the map ignores the model.
    """
    original, randomised = np.ravel(original), np.ravel(randomised)
    if np.ptp(original) == 0 or np.ptp(randomised) == 0:
        return 0.0  # a constant map carries no ranking to compare
    return float(spearmanr(original, randomised).correlation)


def randomise_weights(network: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``network`` with every layer re-initialised (Adebayo et al.'s full model randomisation), seeded.

    Every sub-module with ``reset_parameters`` (convolutions, linear and normalisation layers, whose running
    statistics are reset too) gets fresh weights; the original is left untouched, and so are the random states of
    the CPU and of the GPUs the network is on: the draws the caller makes next (RISE or RELAX masks, a sampler)
    stay as the caller's seed made them.
    """
    randomised = copy.deepcopy(network)
    gpus = sorted({p.device.index for p in randomised.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=gpus):
        torch.random.default_generator.manual_seed(seed)
        for gpu in gpus:
            torch.cuda.default_generators[gpu].manual_seed(seed)
        for module in randomised.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return randomised.eval()
