"""The in-memory record of one mammogram, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Mammogram:
    """Pixels plus the geometry and header facts the rest of MammoXAI relies on.

    Args:
        pixels: float32 array (H, W), bright = dense tissue, in the orientation of the file. Rescale and
            VOI LUT / window have been applied as the header says; MONOCHROME1 has been inverted.
        spacing: (row, column) pixel spacing in millimetres, or None when the file does not say.
        laterality: "L" or "R", or None when unknown.
        view: "CC", "MLO", "ML", "LM", "XCCL", ... or None when unknown.
        header: header fields by DICOM keyword (Manufacturer, KVP, PatientID, StudyInstanceUID, ...); values
            are plain Python types so the record serialises to JSON. Empty for PNG / TIFF / PGM.
        source: path of the file the image was read from.
        value_range: (lowest, highest) value the file's pixels can take as read: the output range of the DICOM
            display pipeline (Modality LUT, VOI LUT), or 0 to 255 / 65535 for an 8 / 16-bit raster; None when the
            file does not fix one (a float or 32-bit raster, an image built in memory).
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None = None
    laterality: str | None = None
    view: str | None = None
    header: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    value_range: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    @property
    def patient_id(self) -> str | None:
        return self.header.get("PatientID")

    @property
    def study_uid(self) -> str | None:
        return self.header.get("StudyInstanceUID")
