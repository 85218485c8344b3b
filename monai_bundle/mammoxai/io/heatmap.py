"""Heatmaps as float32 NRRD files in the geometry of the image they explain.

NRRD lists its axes fastest first, so the first NRRD axis is the image's columns (x) and the second its rows
(y): the array (rows, columns) of a mammogram is written in C order, and the header reads ``sizes: columns
rows``. That is the order ITK, SimpleITK and 3D Slicer use for every 2D image, so a viewer that opens the
DICOM (or PNG) and the heatmap lays one exactly over the other. The space is two-dimensional (``space
dimension: 2``: ITK refuses 3-D space directions on a 2-D image), the origin is the centre of the first pixel
at (0, 0) as ITK assigns a mammogram without a patient position, and the spacing is the image's pixel
spacing, or 1 mm when the file does not say, as ITK does for a PNG.

Read the file back with :func:`read_heatmap_nrrd`, or with pynrrd as ``nrrd.read(path, index_order="C")``.

Example:
    write_heatmap_nrrd("out/case1_heatmap.nrrd", heatmap, mammogram)
    heatmap, (row_mm, column_mm) = read_heatmap_nrrd("out/case1_heatmap.nrrd")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import nrrd
import numpy as np

from mammoxai.errors import MammoXAIError
from mammoxai.io.mammogram import Mammogram

__all__ = ["DEFAULT_SPACING_MM", "write_heatmap_nrrd", "read_heatmap_nrrd"]

DEFAULT_SPACING_MM = 1.0
"""Spacing written when the image does not state its own (PNG, DICOM without PixelSpacing)."""


def write_heatmap_nrrd(
    path: str | os.PathLike,
    heatmap: np.ndarray,
    mammogram: Mammogram,
    fields: Mapping[str, str] | None = None,
) -> Path:
    """Write ``heatmap`` (H, W), on the pixel grid of ``mammogram``, as a gzip-compressed float32 NRRD.

    Args:
        path: output file; its folder is created when missing.
        heatmap: array of the mammogram's shape (rows, columns).
        mammogram: the image the heatmap explains; gives the pixel spacing.
        fields: extra key/value pairs stored in the header (e.g. the saliency method and target class).

    Returns:
        the path written.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != mammogram.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from the image shape {mammogram.shape}")
    row_mm, column_mm = mammogram.spacing or (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    header = {
        "space dimension": 2,
        # one vector per NRRD axis, fastest (columns, x) first
        "space directions": np.array([[column_mm, 0.0], [0.0, row_mm]]),
        "space origin": np.zeros(2),
        "kinds": ["domain", "domain"],
        **{str(key): str(value) for key, value in (fields or {}).items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), np.ascontiguousarray(heatmap), header, index_order="C")
    return path


def read_heatmap_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a heatmap written by :func:`write_heatmap_nrrd` (or any 2-D NRRD with spacing).

    Returns:
        ``(heatmap, (row_mm, column_mm))``: float32 array (rows, columns) and the pixel spacing.

    Raises:
        MammoXAIError: when the file is missing, is not NRRD, or is not a 2-D image.
    """
    try:
        data, header = nrrd.read(str(path), index_order="C")
    except FileNotFoundError as error:
        raise MammoXAIError(path, "no such heatmap file") from error
    except (nrrd.NRRDError, OSError, ValueError) as error:
        raise MammoXAIError(path, f"is not a readable NRRD file ({error})") from error
    if data.ndim != 2:
        raise MammoXAIError(path, f"holds a {data.ndim}-D image, expected a 2-D heatmap")
    if "space directions" in header:
        # axis lengths of the direction vectors, fastest axis (columns) first
        directions = np.asarray(header["space directions"], dtype=float)
        column_mm, row_mm = (float(np.linalg.norm(vector)) for vector in directions)
    elif "spacings" in header:
        column_mm, row_mm = (float(value) for value in header["spacings"])
    else:
        column_mm = row_mm = DEFAULT_SPACING_MM
    return data.astype(np.float32, copy=False), (row_mm, column_mm)
