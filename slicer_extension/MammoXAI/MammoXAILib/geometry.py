"""Where a point on the screen lies in the mammogram: RAS <-> IJK for a 2D image volume, and heatmap checks.

3D Slicer holds a 2D mammogram as a volume one slice thick and places markups (fiducial points, ROI boxes) in
patient RAS millimetres. The label JSON wants (x, y) in the original pixels, with the convention of
``mammoxai.io.geometry``: pixel ``i`` covers ``[i, i + 1)`` and its centre is ``i + 0.5``. Slicer's IJK index
``i`` is the centre of voxel ``i``, so ``x = i + 0.5`` and ``y = j + 0.5`` where ``(i, j, k)`` is the RAS
point multiplied by the volume's RAS-to-IJK matrix (``vtkMRMLVolumeNode.GetRASToIJKMatrix``). Going through the
volume's own matrix, rather than assuming a spacing or an orientation, keeps the conversion right for any
spacing, origin or flip the volume has.

Image and heatmap are both given :func:`ijk_to_ras` (what ITK assigns a 2D image without patient position:
identity directions in LPS, origin at the first pixel, the file's pixel spacing), so the heatmap lies exactly
over the image whatever the readers of the two file formats would have chosen.

Example:
    ras_to_ijk = [[-1 / 0.1, 0, 0, 0], [0, -1 / 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    ras_to_pixel(ras_to_ijk, (-12.0, -3.0, 0.0))  # (120.5, 30.5)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from .errors import MammoXAIClientError

__all__ = [
    "DEFAULT_SPACING_MM",
    "ijk_to_ras",
    "ras_to_pixel",
    "point_lesion",
    "box_lesion",
    "read_nrrd_geometry",
    "check_heatmap",
]

DEFAULT_SPACING_MM = 1.0
"""Spacing the server gives a heatmap when the image states none (PNG, DICOM without PixelSpacing)."""

Matrix = Sequence[Sequence[float]]

_VECTOR = re.compile(r"\(([^)]*)\)")


def ijk_to_ras(spacing_mm: Sequence[float] | None) -> list[list[float]]:
    """The IJK-to-RAS matrix of a 2D mammogram with ``spacing_mm`` = (row, column) mm (``None``: 1 mm).

    I runs along the columns and J along the rows; LPS identity directions become RAS ``-x``, ``-y``.
    """
    row_mm, column_mm = spacing_mm or (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    return [[-column_mm, 0.0, 0.0, 0.0], [0.0, -row_mm, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]


def ras_to_pixel(ras_to_ijk: Matrix, ras: Sequence[float]) -> tuple[float, float]:
    """Continuous original-pixel (x, y) of the RAS point ``ras`` through the volume's RAS-to-IJK matrix."""
    position = (ras[0], ras[1], ras[2], 1.0)
    i, j = (sum(ras_to_ijk[row][column] * position[column] for column in range(4)) for row in range(2))
    return i + 0.5, j + 0.5


def point_lesion(
    ras_to_ijk: Matrix, ras: Sequence[float], image_shape: Sequence[int], finding: str | None = None
) -> dict[str, Any]:
    """A label ``point`` lesion from a fiducial at ``ras``; refuses a point outside the image."""
    x, y = ras_to_pixel(ras_to_ijk, ras)
    rows, columns = image_shape
    if not (0 <= x <= columns and 0 <= y <= rows):
        raise MammoXAIClientError(
            f"The lesion point at pixel ({x:.1f}, {y:.1f}) lies outside the {rows} x {columns} image: "
            "move it onto the mammogram or delete it",
            "input",
        )
    return _lesion("point", [round(x, 2), round(y, 2)], finding)


def box_lesion(
    ras_to_ijk: Matrix, ras_bounds: Sequence[float], image_shape: Sequence[int], finding: str | None = None
) -> dict[str, Any]:
    """A label ``box`` lesion [x0, y0, x1, y1] from an ROI's RAS bounds (xmin, xmax, ymin, ymax, zmin, zmax).

    The four in-plane corners are mapped (so any flip or 90 degree turn of the volume is handled) and the box
    is clipped to the image; a box with no area inside the image is refused.
    """
    r0, r1, a0, a1, s0, s1 = ras_bounds
    s = (s0 + s1) / 2
    corners = [ras_to_pixel(ras_to_ijk, (r, a, s)) for r in (r0, r1) for a in (a0, a1)]
    rows, columns = image_shape
    x0, x1 = (min(max(f(x for x, _ in corners), 0.0), columns) for f in (min, max))
    y0, y1 = (min(max(f(y for _, y in corners), 0.0), rows) for f in (min, max))
    if not (x0 < x1 and y0 < y1):
        raise MammoXAIClientError(
            f"The lesion box has no area inside the {rows} x {columns} image: draw it over the mammogram or delete it",
            "input",
        )
    return _lesion("box", [round(value, 2) for value in (x0, y0, x1, y1)], finding)


def read_nrrd_geometry(path: str) -> tuple[tuple[int, int], tuple[float, float]]:
    """(rows, columns) and (row, column) spacing in mm of a 2D NRRD file, read from its header only."""
    fields = {}
    with open(path, "rb") as stream:  # the header is plain text even when the data is gzip-encoded
        magic = stream.readline()
        if not magic.startswith(b"NRRD"):
            raise MammoXAIClientError(
                f"The heatmap {path} is not an NRRD file: the server sent something else", "bad_response"
            )
        for line in stream:
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                break
            key, separator, value = text.partition(": ")
            if separator and not key.startswith("#"):
                fields[key.strip()] = value.strip()
    try:
        sizes = [int(size) for size in fields["sizes"].split()]
        if "space directions" in fields:
            vectors = [[float(v) for v in group.split(",")] for group in _VECTOR.findall(fields["space directions"])]
            spacings = [math.hypot(*vector) for vector in vectors]
        else:
            spacings = [float(value) for value in fields.get("spacings", "1 1").split()]
    except (KeyError, ValueError) as error:
        raise MammoXAIClientError(
            f"The heatmap {path} has no readable size or spacing ({error})", "bad_response"
        ) from error
    if len(sizes) != 2 or len(spacings) != 2:
        raise MammoXAIClientError(f"The heatmap {path} is not a 2D image (sizes {sizes})", "bad_response")
    # NRRD lists the fastest axis (columns) first
    return (sizes[1], sizes[0]), (spacings[1], spacings[0])


def check_heatmap(path: str, image_shape: Sequence[int], spacing_mm: Sequence[float] | None) -> None:
    """Refuse a heatmap whose grid differs from the image it should overlay (shape and spacing)."""
    shape, spacing = read_nrrd_geometry(path)
    expected = tuple(spacing_mm or (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM))
    if tuple(shape) != tuple(image_shape) or any(abs(a - b) > 1e-6 * max(1.0, b) for a, b in zip(spacing, expected)):
        raise MammoXAIClientError(
            f"The heatmap grid {shape[0]} x {shape[1]} at {spacing[0]:g} x {spacing[1]:g} mm does not match the image "
            f"{image_shape[0]} x {image_shape[1]} at {expected[0]:g} x {expected[1]:g} mm: it cannot be overlaid; "
            "run the model again",
            "bad_response",
        )


def _lesion(kind: str, coordinates: list[float], finding: str | None) -> dict[str, Any]:
    lesion: dict[str, Any] = {"type": kind, kind: coordinates}
    if finding:
        lesion["finding"] = finding
    return lesion
