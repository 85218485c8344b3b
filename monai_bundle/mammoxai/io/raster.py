"""Reading a mammogram from a PNG, TIFF or PGM file (8 or 16 bit grayscale), as public data sets ship them.

These formats carry no header, so spacing, laterality and view are None (a label CSV usually supplies the
latter two) and the pixels are taken as bright = dense, which is how INbreast, VinDr-Mammo, CBIS-DDSM and
mini-MIAS exports are written. TIFF's WhiteIsZero photometric is honoured.

Colour is refused rather than converted to luminance: a mammogram has no colour, so colour in the file means
burned-in annotations, rulers or overlays that a model would learn as if they were tissue. Grayscale saved in
RGB (all channels equal, alpha, if any, fully opaque) is read exactly when it is 8-bit; 16-bit colour (RGB, RGBA,
gray + alpha) is refused, because Pillow reads it with 8 bits per channel and would silently drop the low byte of
every pixel. PGM files with a maximum value other than 255 or 65535 are stretched to the full 8 / 16-bit range by
Pillow; the stretch is linear, so contrast and order are kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from mammoxai.errors import MammoXAIError
from mammoxai.io.mammogram import Mammogram

__all__ = ["read_raster", "read_raster_mask"]

_GRAY_MODES = frozenset({"L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_GRAY_AS_COLOUR_MODES = frozenset({"LA", "RGB", "RGBA", "P", "PA"})
_TIFF_WHITE_IS_ZERO = 0  # value of the TIFF PhotometricInterpretation tag (262)


def read_raster(path: str | os.PathLike) -> Mammogram:
    """Read a grayscale PNG, TIFF or PGM image as a :class:`Mammogram` with float32 pixels and no header.

    Raises:
        MammoXAIError: the file is not a readable image, holds several pages, is colour, black-and-white or
            transparent.

    Example:
        mammogram = read_raster("mdb001.pgm")
    """
    path = Path(path)
    pixels, value_range = _gray_pixels(path)
    return Mammogram(pixels=np.ascontiguousarray(pixels, dtype=np.float32), source=str(path), value_range=value_range)


def read_raster_mask(path: str | os.PathLike) -> np.ndarray:
    """A lesion mask from a PNG, TIFF or PGM file as a boolean (H, W) array, True where its gray value is not 0.

    The grayscale rules of :func:`read_raster` apply, so an opaque alpha channel is dropped rather than read as a
    channel that is non-zero everywhere (which made an RGBA mask all lesion), and colour or transparency is refused;
    a 1-bit image, a usual mask format, is read too.

    Raises:
        MammoXAIError: the file is not a readable image, holds several pages, is colour or transparent.

    Example:
        inside = read_raster_mask("masks/case1_mass.png")
    """
    return _gray_pixels(Path(path), bilevel=True)[0] != 0


def _gray_pixels(path: Path, bilevel: bool = False) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The gray values of a PNG, TIFF or PGM file as stored (8 or 16 bit; bool for a 1-bit image, which only
    ``bilevel`` accepts), WhiteIsZero undone, and the range its bit depth fixes (None for 32-bit and float files);
    see :func:`read_raster` for what is refused."""
    try:
        with Image.open(path) as image:
            kind = image.format  # Pillow reads 16-bit colour as 8-bit: only the stored raw mode tells
            wide_colour = image.mode in _GRAY_AS_COLOUR_MODES and any(";16" in mode for mode in _raw_modes(image))
            image.load()
            pages, mode = getattr(image, "n_frames", 1), image.mode
            white_is_zero = image.format == "TIFF" and image.tag_v2.get(262) == _TIFF_WHITE_IS_ZERO
            array = np.asarray(image.convert("RGBA") if mode in ("P", "PA") else image)
    except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, ... on damaged files
        problem = f"is not a readable PNG, TIFF or PGM image ({error})"
        raise MammoXAIError(path, problem, "re-export the image") from error
    if wide_colour:
        problem = f"is a 16-bit {kind} in colour mode {mode}, which can only be read with 8 bits per channel"
        raise MammoXAIError(path, problem, "save it as 16-bit grayscale (one channel), e.g. a 16-bit grayscale PNG")
    if pages > 1:
        problem = f"holds {pages} pages (a stack or volume); only 2D mammograms are supported"
        raise MammoXAIError(path, problem, "save one image per file")
    pixels = _grayscale(array, mode, path, bilevel)
    if white_is_zero and pixels.dtype.itemsize == 2:  # Pillow inverts 8-bit WhiteIsZero TIFFs itself, not 16-bit
        pixels = np.iinfo(pixels.dtype).max - pixels
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize <= 2:
        value_range = (0.0, float(np.iinfo(pixels.dtype).max))
    elif kind == "PPM" and mode == "I":  # Pillow reads a 16-bit PGM as 32-bit, stretched to 0 .. 65535
        value_range = (0.0, 65535.0)
    else:
        value_range = None
    return pixels, value_range


def _raw_modes(image: Image.Image) -> list[str]:
    """How the file stores its pixels (Pillow's raw modes, e.g. ``RGB;16B``), known before the image is loaded."""
    modes = []
    for tile in image.tile:
        args = tile[3]
        modes.append(args if isinstance(args, str) else str(args[0]) if isinstance(args, tuple) and args else "")
    return modes


def _grayscale(array: np.ndarray, mode: str, path: Path, bilevel: bool = False) -> np.ndarray:
    """The single gray channel of ``array`` (in Pillow ``mode``); refuses what is not grayscale, and a 1-bit image
    unless ``bilevel``."""
    if mode in _GRAY_MODES or (mode == "1" and bilevel):
        return array
    if mode == "1":
        raise MammoXAIError(path, "is a 1-bit black-and-white image (a mask?), not a mammogram", "pass the mammogram")
    if mode not in _GRAY_AS_COLOUR_MODES:
        raise MammoXAIError(path, f"has pixel mode {mode}, not 8 or 16-bit grayscale", "save it as grayscale")
    if mode in ("LA", "RGBA", "P", "PA"):  # palette images were converted to RGBA
        if (array[..., -1] != 255).any():
            raise MammoXAIError(path, "has transparent pixels, which have no intensity", "save it without transparency")
        array = array[..., :-1]
    if (array != array[..., :1]).any():
        raise MammoXAIError(
            path,
            "is a colour image; a mammogram is grayscale, so colour means burned-in annotations or overlays",
            "export the original grayscale image",
        )
    return array[..., 0]
