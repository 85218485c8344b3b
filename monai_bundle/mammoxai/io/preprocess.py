"""The one preprocessing every model, the tensor cache and the server apply to a mammogram.

Training, evaluation, inference and saliency must all see the same tensor for the same file, and a
heatmap must map back through the same geometry, so this module is the only place that turns a
:class:`~mammoxai.io.mammogram.Mammogram` into model input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mammoxai.errors import MammoXAIError, check_choice
from mammoxai.io.breast import FIELDS_OF_VIEW, breast_geometry, check_field_of_view, segment_breast
from mammoxai.io.geometry import ImageGeometry
from mammoxai.io.mammogram import Mammogram

__all__ = [
    "FIELDS_OF_VIEW",
    "INTENSITY_SCALINGS",
    "check_field_of_view",
    "check_intensity_scaling",
    "check_scalable",
    "grid_shape",
    "prepare_image",
]

#: How :func:`prepare_image` maps intensities to [0, 1]; see its docstring for what each keeps and loses.
INTENSITY_SCALINGS = ("breast_percentiles", "display_range")


def grid_shape(image_size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """The model grid ``(height, width)`` from a config value: ``[height, width]``, or one int for a square grid.

    Every setting that names a grid (``image_size`` of training, inference, the cache, the saliency evaluation) is
    read through here, so ``--image_size 64`` means 64 x 64 everywhere, as MONAI's ``spatial_size`` does, and a
    value of any other shape is refused by name before a network or a cache sees it.

    Raises:
        MammoXAIError: the value is not one positive int or two.
    """
    sides = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
    valid = (
        isinstance(sides, Sequence)
        and not isinstance(sides, str)
        and len(sides) == 2
        and all(isinstance(side, (int, np.integer)) and not isinstance(side, bool) and side >= 1 for side in sides)
    )
    if not valid:
        fix = 'give "[height, width]" in pixels, e.g. "[512, 416]"'
        raise MammoXAIError(name, f"is {image_size!r}, not a grid size", fix)
    return int(sides[0]), int(sides[1])


def check_intensity_scaling(value: str, name: str = "intensity_scaling") -> str:
    """``value`` when it names one of :data:`INTENSITY_SCALINGS`, checked where a setting is read so a typo is
    refused before any image is.

    Raises:
        MammoXAIError: any other value.
    """
    return check_choice(value, INTENSITY_SCALINGS, name, "an intensity scaling")


def check_scalable(mammogram: Mammogram, intensity_scaling: str) -> None:
    """Refuse an image ``intensity_scaling`` cannot scale: ``"display_range"`` needs the value range its file
    fixes, which a float or 32-bit raster does not. A server checks uploads with it, so such a file is refused when
    it arrives rather than at every inference.

    Raises:
        MammoXAIError: ``intensity_scaling`` is unknown, or cannot scale ``mammogram``.
    """
    check_intensity_scaling(intensity_scaling)
    if intensity_scaling == "display_range" and mammogram.value_range is None:
        raise MammoXAIError(
            mammogram.source or "image",
            'fixes no value range (a float or 32-bit raster), which intensity_scaling "display_range" needs',
            'save it as 8 or 16-bit grayscale or DICOM, or use "breast_percentiles"',
        )


def prepare_image(
    mammogram: Mammogram,
    output_shape: tuple[int, int],
    percentiles: tuple[float, float] = (0.5, 99.5),
    intensity_scaling: str = "breast_percentiles",
    field_of_view: str = "breast",
) -> tuple[torch.Tensor, ImageGeometry]:
    """Breast-only, chest-wall-left, intensity-normalised model input and the geometry that made it.

    Steps:

    1. segment the breast (:func:`~mammoxai.io.breast.segment_breast`) and derive the crop and flip from
       it (:func:`~mammoxai.io.breast.breast_geometry`);
    2. scale intensities to [0, 1], as ``intensity_scaling`` says:

       * ``"breast_percentiles"`` (default): the ``percentiles`` of the breast pixels land on 0 and 1, clipping
         beyond. Vendors store 10 to 16 bits with different offsets, gains and presentation processing, so a
         fixed divisor would give each X-ray system its own brightness range; percentiles of the breast alone
         (not of the background, whose share depends on breast size, and not of the extremes, which are
         labels, markers and dead pixels) put them on a common scale, as foreground-percentile clipping does
         for CT in nnU-Net (Isensee et al., Nature Methods 2021). The price: each breast gets its own scale,
         set by its own density and composition, so the noise level and contrast an exposure leaves (what
         tells compressed thickness and kVp) are divided by a number the network never sees.
       * ``"display_range"``: the file's own value range (:attr:`Mammogram.value_range`: the DICOM display
         pipeline's output range, or a raster's bit depth) lands on 0 and 1, the same affine map for every
         image of one X-ray system. Brightness then differs between systems, but the noise level and contrast
         of each exposure survive; metadata pretraining reads thickness, kVp and same-study pairs better from
         it (the model card's comparison).
    3. set everything outside the breast to 0, so labels and markers cannot become shortcuts;
    4. crop, flip and resize onto the model grid (antialiased, see
       :meth:`~mammoxai.io.geometry.ImageGeometry.apply`), as ``field_of_view`` says:

       * ``"breast"`` (default): the crop frames the breast, so every breast fills the grid and a lesion gets as
         many grid pixels as the grid allows. The price: each image is resized by its own factor, set by its
         breast's size, so the breast's size in millimetres and the noise grain of its pixels (what tells
         compressed thickness and compression force) are lost or scaled by a number the network never sees.
       * ``"image"``: the whole image, flipped, so every image of one detector is resized by the same factor
         (:func:`~mammoxai.io.breast.breast_geometry`). A hand-made readout recovers from it the thickness and kVp
         cues the breast crop resizes away; metadata pretraining on the CPU read them better from it at 512 x 416,
         worse at 256 x 208, where the breast gets few pixels (the model card's comparison).

    Args:
        mammogram: the image, bright = dense.
        output_shape: (h, w) of the model grid.
        percentiles: breast-pixel percentiles mapped to 0 and 1 by ``"breast_percentiles"``.
        intensity_scaling: one of :data:`INTENSITY_SCALINGS`. A network must be served with the scaling it was
            trained with; checkpoints record it.
        field_of_view: one of :data:`FIELDS_OF_VIEW`; served, like the scaling, as trained and recorded.

    Returns:
        a float32 tensor (1, h, w) in [0, 1] and the :class:`~mammoxai.io.geometry.ImageGeometry` that maps
        it (and any heatmap, point or box on it) back to the original pixels.

    Raises:
        MammoXAIError: when no breast is found in the image, ``intensity_scaling`` or ``field_of_view`` is
            unknown, or the scaling is ``"display_range"`` and the file fixes no value range.

    Example:
        image, geometry = prepare_image(read_mammogram("scan.dcm"), (512, 416))
        logits = model(image[None])
    """
    check_scalable(mammogram, intensity_scaling)
    check_field_of_view(field_of_view)
    pixels = np.asarray(mammogram.pixels, dtype=np.float32)
    mask = segment_breast(pixels, source=mammogram.source or "image")
    geometry = breast_geometry(mammogram, output_shape, mask=mask, field_of_view=field_of_view)
    if intensity_scaling == "display_range":
        low, high = mammogram.value_range
    else:
        low, high = np.percentile(pixels[mask], percentiles)
    if high > low:
        scaled = np.clip((pixels - low) / (high - low), 0.0, 1.0)
    else:  # a uniform breast (a phantom) has no contrast to stretch: keep it apart from the background
        scaled = np.ones_like(pixels)
    scaled[~mask] = 0.0
    image = geometry.apply(scaled).clamp_(0.0, 1.0)
    return image.unsqueeze(0), geometry
