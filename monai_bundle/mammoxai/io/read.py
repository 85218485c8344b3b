"""One entry point for every mammogram file: :func:`read_mammogram` picks the reader from the file's content.

The first bytes decide, not the name: a PACS export called ``IM0001`` with no extension is DICOM, a ``.dcm``
that is really a PNG is read as PNG. DICOM written without its 128-byte preamble, as older archives hold it under
names like ``1.2.840.113619.2.55.3.604``, is known by its first element: a file meta (0002) or identifying
(0008) group tag. Only files whose content says nothing fall back to the extension.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from mammoxai.errors import MammoXAIError
from mammoxai.io.dicom import read_dicom, read_dicom_mask
from mammoxai.io.mammogram import Mammogram
from mammoxai.io.raster import read_raster, read_raster_mask

__all__ = ["read_mammogram", "read_mask", "iter_mammograms", "read_mammograms", "sniff_format"]

_DICOM_MARKER = (128, b"DICM")
#: The first group of a DICOM stream without preamble: file meta (always little endian), else the dataset's
#: identifying group 0008, little or big endian.
_BARE_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
_RASTER_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",  # TIFF and BigTIFF, little and big endian
    b"P5", b"P2",  # binary and plain PGM
)  # fmt: skip
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ""})


def read_mammogram(path: str | os.PathLike) -> Mammogram:
    """Read a 2D mammogram from DICOM (MG, DX, CR of the breast) or an 8 / 16-bit grayscale PNG, TIFF or PGM.

    Args:
        path: the image file.

    Returns:
        a :class:`Mammogram`: float32 pixels (H, W), bright = dense, in the orientation of the file; for DICOM
        also spacing, laterality, view and header fields (see :func:`mammoxai.io.dicom.read_dicom`).

    Raises:
        MammoXAIError: the file is missing, empty, of another kind, damaged, or not a 2D mammogram; the
            message names the file, the problem and what to do.

    Example:
        mammogram = read_mammogram("exports/IM0001")
        mammogram.pixels.shape, mammogram.spacing, mammogram.laterality, mammogram.view
    """
    path = Path(path)
    return read_raster(path) if _kind(path) == "raster" else read_dicom(path)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a lesion mask as a boolean (H, W) array, True inside: DICOM (CBIS-DDSM's ROI masks, by their stored
    values, :func:`~mammoxai.io.dicom.read_dicom_mask`) or a grayscale PNG, TIFF or PGM
    (:func:`~mammoxai.io.raster.read_raster_mask`), told apart by content as :func:`read_mammogram` does.

    Raises:
        MammoXAIError: the file is missing, of another kind, damaged, or not a grayscale image.

    Example:
        inside = read_mask(finding.mask)
    """
    path = Path(path)
    return read_raster_mask(path) if _kind(path) == "raster" else read_dicom_mask(path)


def _kind(path: Path) -> str:
    """``"raster"`` or ``"dicom"``: what the first bytes say, else DICOM for a name DICOM files have.

    Raises:
        MammoXAIError: neither the content nor the name says the file is one of the formats read.
    """
    kind = sniff_format(path)
    if kind == "raster":
        return kind
    if kind == "dicom" or path.suffix.lower() in _DICOM_SUFFIXES:
        return "dicom"
    raise MammoXAIError(path, "is neither DICOM nor a PNG, TIFF or PGM image", "convert it to one of these formats")


def sniff_format(path: str | os.PathLike) -> str | None:
    """What the first bytes of a file say it is: ``"dicom"``, ``"raster"`` (PNG, TIFF, PGM) or None.

    The folder scan of :mod:`mammoxai.data.manifest` asks this of files whose name says nothing, so that it lists
    exactly what :func:`read_mammogram` reads.

    Raises:
        MammoXAIError: the file is missing, cannot be read, or is empty.
    """
    if not Path(path).is_file():
        raise MammoXAIError(path, "does not exist or is not a file", "check the path")
    try:
        with open(path, "rb") as stream:
            head = stream.read(_DICOM_MARKER[0] + len(_DICOM_MARKER[1]))
    except OSError as error:
        raise MammoXAIError(path, f"cannot be read ({error.strerror})", "check its permissions") from error
    if not head:
        raise MammoXAIError(path, "is empty (0 bytes)", "copy or export the image again")
    if head[_DICOM_MARKER[0] :] == _DICOM_MARKER[1] or head.startswith(_BARE_DICOM_GROUPS):
        return "dicom"
    if head.startswith(_RASTER_SIGNATURES):
        return "raster"
    return None


def iter_mammograms(paths: Iterable[str | os.PathLike]) -> Iterator[Mammogram | MammoXAIError]:
    """Read files one at a time, yielding each :class:`Mammogram`, or the :class:`MammoXAIError` that says why a
    file could not be read, in the order of ``paths``; one bad file never stops the rest.

    Only one image is held at a time, so this scales to whole archives.

    Example:
        for result in iter_mammograms(paths):
            if isinstance(result, MammoXAIError):
                print("skipped:", result)
    """
    for path in paths:
        try:
            yield read_mammogram(path)
        except MammoXAIError as error:
            yield error


def read_mammograms(paths: Iterable[str | os.PathLike]) -> tuple[list[Mammogram], list[MammoXAIError]]:
    """Read every file, returning the mammograms and, separately, the errors of the files that failed.

    All images are held in memory at once: for large collections use :func:`iter_mammograms`.
    """
    mammograms, errors = [], []
    for result in iter_mammograms(paths):
        (errors if isinstance(result, MammoXAIError) else mammograms).append(result)
    return mammograms, errors
