"""Where the breast is in a mammogram, which side its chest wall is on, and the crop that frames it.

A mammogram is mostly background; the rest is the breast plus things that are not the breast: burned-in
labels, lead markers, paddle edges. The model should see the breast only, always the same way round, so
every image goes through :func:`breast_geometry`: segment, crop to the breast (or keep the whole image), flip
so the chest wall is on the left. The crop and flip are recorded in an :class:`~mammoxai.io.geometry.ImageGeometry`, so
everything computed on the model grid maps back to the original pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from mammoxai.errors import MammoXAIError, check_choice
from mammoxai.io.geometry import ImageGeometry
from mammoxai.io.mammogram import Mammogram

__all__ = ["FIELDS_OF_VIEW", "check_field_of_view", "segment_breast", "chest_wall_side", "breast_geometry"]

#: What :func:`breast_geometry` frames on the model grid: the breast alone, or the whole image.
FIELDS_OF_VIEW = ("breast", "image")


def check_field_of_view(value: str, name: str = "field_of_view") -> str:
    """``value`` when it names one of :data:`FIELDS_OF_VIEW`, checked where a setting is read so a typo is refused
    before any image is.

    Raises:
        MammoXAIError: any other value.
    """
    return check_choice(value, FIELDS_OF_VIEW, name, "a field of view")


def segment_breast(
    pixels: np.ndarray,
    working_size: int = 512,
    min_area: float = 0.02,
    min_contrast: float = 5.0,
    skin_fraction: float = 0.1,
    source: str = "image",
) -> np.ndarray:
    """Boolean mask (H, W) of the breast in ``pixels`` (bright = dense, any bit depth or scale).

    The segmentation runs on a copy block-averaged down to about ``working_size`` pixels on its long side,
    which suppresses detector noise and keeps the cost independent of the detector size:

    1. a 3×3 median filter removes isolated noisy pixels;
    2. Otsu's threshold (Otsu, "A threshold selection method from gray-level histograms", IEEE Trans.
       SMC 1979) separates the dark background from the tissue. It is computed on the exact sorted
       values rather than a fixed histogram, so it does not depend on the bit depth, the offset of the
       background or a very bright label stretching the range;
    3. Otsu's split lies between the class means and can cut into the faint, thin tissue at the skin line
       (more so when a bright label adds weight to the upper class), so the threshold is then lowered to
       just above the background: its median plus ``min_contrast`` noise standard deviations, or plus
       ``skin_fraction`` of the tissue's contrast where the background is noise-free;
    4. of the connected bright regions, the breast is the largest one touching the left or right image
       edge (the chest wall is always at one of them), or the largest one when none touches. Labels,
       markers and other bright objects not connected to the breast are dropped;
    5. holes inside it (dark fatty tissue below the threshold) are filled.

    The mask is brought back to full size by nearest-neighbour upsampling, so its edge is accurate to one
    working pixel; that is ample for cropping and for zeroing the background, which is dark at the skin line
    anyway. A label touching the breast stays part of it.

    Args:
        pixels: 2-D image, bright = dense.
        working_size: long side, in pixels, of the downsampled copy the segmentation runs on.
        min_area: smallest breast accepted, as a fraction of the image area.
        min_contrast: how many background noise standard deviations (robust, from the median absolute
            deviation) the threshold lies above the background, and the breast's median must lie above the
            background's median. Pure noise, a blank exposure, falls far below 5; a breast lies far above.
        skin_fraction: lowest threshold, as a fraction of the median tissue contrast above the background.
        source: name of the image in error messages.

    Raises:
        MammoXAIError: when no breast is found (blank image, noise only, or only small bright objects).

    Example:
        mask = segment_breast(read_mammogram("scan.dcm").pixels)
    """
    image = np.asarray(pixels, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 2:
        raise MammoXAIError(source, f"has shape {image.shape}, expected a 2-D image")
    if not np.isfinite(image).all():
        raise MammoXAIError(source, "contains NaN or infinite pixel values", "check the file's rescale and VOI LUT")
    factor = max(1, math.ceil(max(image.shape) / working_size))
    work = ndimage.median_filter(_block_mean(image, factor), size=3, mode="nearest")

    no_breast = MammoXAIError(source, "no breast was found", "pass a mammogram with the breast in view")
    otsu = _otsu_threshold(work)
    if otsu is None:
        raise no_breast
    background, noise = _level_and_noise(work[work <= otsu])
    tissue = np.median(work[work > otsu])
    threshold = min(otsu, background + max(min_contrast * noise, skin_fraction * (tissue - background)))
    labels, count = ndimage.label(work > threshold)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    at_side_edge = np.zeros(count + 1, dtype=bool)
    at_side_edge[np.concatenate([labels[:, 0], labels[:, -1]])] = True
    breast_label = max(range(1, count + 1), key=lambda label: (at_side_edge[label], sizes[label]))
    mask = ndimage.binary_fill_holes(labels == breast_label)

    if mask.mean() < min_area or not _stands_out(work[mask], work[~mask], min_contrast):
        raise no_breast
    return mask.repeat(factor, axis=0).repeat(factor, axis=1)[: image.shape[0], : image.shape[1]]


def chest_wall_side(mask: np.ndarray, laterality: str | None = None, min_ratio: float = 1.5) -> str:
    """``"left"`` or ``"right"``: the image edge the breast's chest wall lies against.

    The mask decides first. A compressed breast is tallest at the chest wall and tapers to the nipple, so
    the mean height of the mask over the outer tenth of its extent is compared at both ends; the taller end
    is the chest wall when it is at least ``min_ratio`` times the other. This holds whichever way the file
    was stored, and for CC and MLO alike (in an MLO the pectoral muscle makes the chest-wall end taller
    still).

    When the mask is ambiguous (e.g. a breast filling the whole detector), the laterality decides, using the
    orientation mammograms are stored in for the standard back-to-back display (the right breast's images
    hung on the left, facing the left breast's): a right breast (R) has its chest wall on the image's right
    edge, a left breast (L) on its left edge, as in VinDr-Mammo or CBIS-DDSM. With neither, ``"left"`` is
    returned, i.e. the image is left as it is.

    Args:
        mask: breast mask from :func:`segment_breast`.
        laterality: "L", "R" or None, used only when the mask is ambiguous.
        min_ratio: how much taller one end must be than the other to decide from the mask.
    """
    heights = np.asarray(mask, dtype=bool).sum(axis=0).astype(np.float64)
    columns = np.flatnonzero(heights)
    if columns.size:
        first, last = columns[0], columns[-1]
        band = max(1, (last - first + 1) // 10)
        left, right = heights[first : first + band].mean(), heights[last - band + 1 : last + 1].mean()
        if left >= min_ratio * right:
            return "left"
        if right >= min_ratio * left:
            return "right"
    return "right" if laterality == "R" else "left"


def breast_geometry(
    mammogram: Mammogram,
    output_shape: tuple[int, int],
    margin: float = 0.02,
    keep_aspect: bool = True,
    mask: np.ndarray | None = None,
    field_of_view: str = "breast",
) -> ImageGeometry:
    """The crop and flip that put the breast, chest wall on the left, onto a model grid of ``output_shape``.

    With ``field_of_view="breast"`` the crop is the bounding box of the breast mask grown by ``margin`` on
    every side (clipped to the image). With ``keep_aspect`` it is then widened or heightened, towards whichever
    side the image allows, to the aspect ratio of ``output_shape``, so the resize scales rows and columns alike
    and a round mass stays round; only where the image itself is too narrow does the remaining stretch happen.
    Every breast then fills the grid, whatever its size.

    With ``field_of_view="image"`` the crop is the whole image (only flipped): every image of one detector is
    resized by the same factor, so the breast's size in millimetres and the noise grain of its pixels reach the
    model as the detector recorded them, at the price of grid pixels spent on background. ``margin`` and
    ``keep_aspect`` do not apply; an image of another aspect ratio than the grid is stretched, by the same
    amount for every image of its detector.

    Args:
        mammogram: the image; its laterality breaks ties in :func:`chest_wall_side`.
        output_shape: (h, w) of the model grid.
        margin: fraction of the breast's height (rows) and width (columns) added on each side.
        keep_aspect: grow the crop to the aspect ratio of ``output_shape``.
        mask: a breast mask already computed with :func:`segment_breast`; computed when None.
        field_of_view: ``"breast"`` or ``"image"`` (:data:`FIELDS_OF_VIEW`).

    Example:
        geometry = breast_geometry(read_mammogram("scan.dcm"), (512, 416))
        model_image = geometry.apply(mammogram.pixels)
    """
    source = mammogram.source or "image"
    if mask is None:
        mask = segment_breast(mammogram.pixels, source=source)
    elif mask.shape != mammogram.shape or not mask.any():
        raise MammoXAIError(source, f"breast mask of shape {mask.shape} is empty or does not match the image")
    height, width = mask.shape
    flip = chest_wall_side(mask, mammogram.laterality) == "right"
    if check_field_of_view(field_of_view) == "image":
        return ImageGeometry((height, width), (0, 0, height, width), flip, output_shape)
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    pad_y, pad_x = math.ceil(margin * (y1 - y0)), math.ceil(margin * (x1 - x0))
    y0, y1, x0, x1 = max(0, y0 - pad_y), min(height, y1 + pad_y), max(0, x0 - pad_x), min(width, x1 + pad_x)
    if keep_aspect:
        aspect = output_shape[0] / output_shape[1]
        if (y1 - y0) > aspect * (x1 - x0):
            x0, x1 = _grow(x0, x1, round((y1 - y0) / aspect), width)
        else:
            y0, y1 = _grow(y0, y1, round((x1 - x0) * aspect), height)
    return ImageGeometry((height, width), (y0, x0, y1, x1), flip, output_shape)


def _grow(start: int, stop: int, size: int, limit: int) -> tuple[int, int]:
    """Widen ``[start, stop)`` about its centre to ``size`` (at most ``limit``), shifted to fit in ``[0, limit)``."""
    size = min(limit, max(size, stop - start))
    start = min(max(0, round((start + stop - size) / 2)), limit - size)
    return start, start + size


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor``×``factor`` blocks; the last partial blocks are padded with edge values."""
    if factor == 1:
        return image
    pad = [(0, -n % factor) for n in image.shape]
    padded = np.pad(image, pad, mode="edge")
    h, w = padded.shape
    return padded.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _level_and_noise(values: np.ndarray) -> tuple[float, float]:
    """Median and robust standard deviation of ``values``.

    The deviation is the median absolute deviation, or where more than half the values equal the median
    (low photon counts stored as integers) the mean absolute deviation, each scaled to a Gaussian SD.
    """
    level = float(np.median(values))
    deviations = np.abs(values - level)
    mad = float(np.median(deviations))
    return level, 1.4826 * mad if mad > 0 else 1.2533 * float(deviations.mean())


def _stands_out(inside: np.ndarray, outside: np.ndarray, min_contrast: float) -> bool:
    """Whether ``inside`` is brighter than ``outside`` by ``min_contrast`` robust noise SDs of ``outside``."""
    if outside.size == 0:  # the breast fills the detector
        return True
    background, noise = _level_and_noise(outside)
    return bool(np.median(inside) - background > min_contrast * noise)


def _otsu_threshold(image: np.ndarray) -> float | None:
    """Otsu's threshold over the exact values of ``image``; None when the image is constant.

    Every split between consecutive distinct values is scored by the between-class variance
    ``w0 * w1 * (mu0 - mu1)**2`` and the best split's midpoint is returned.
    """
    values, counts = np.unique(image, return_counts=True)
    if values.size < 2:
        return None
    weight_below = np.cumsum(counts)[:-1].astype(np.float64)
    sum_below = np.cumsum(values * counts)[:-1]
    weight_above = counts.sum() - weight_below
    sum_above = (values * counts).sum() - sum_below
    between = weight_below * weight_above * (sum_below / weight_below - sum_above / weight_above) ** 2
    best = int(np.argmax(between))
    return float((values[best] + values[best + 1]) / 2)
