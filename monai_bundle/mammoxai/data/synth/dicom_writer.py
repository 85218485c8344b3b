"""Digital Mammography X-Ray Image Storage - For Presentation files, as a screening modality writes them.

The header follows the DX and Digital Mammography image modules of DICOM PS3.3 (A.27, C.8.11): ImageLaterality,
ViewPosition with its SNOMED-CT ViewCodeSequence, PatientOrientation, ImagerPixelSpacing, BodyPartThickness,
CompressionForce, KVP, AnodeTargetMaterial, FilterMaterial, PresentationIntentType, Pixel Intensity Relationship,
VOI windows. Pixel data is written in the system's transfer syntax: explicit or implicit VR little endian, RLE
lossless, or JPEG 2000 lossless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from openjpeg.utils import encode_array
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from mammoxai import __version__
from mammoxai.data.synth.imaging import window_values
from mammoxai.data.synth.vendors import Exposure, XraySystem

__all__ = ["DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION", "MammogramHeader", "write_mammogram"]

DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"

# CID 4014 "View for Mammography" (SNOMED CT)
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
# (row direction, column direction) for images stored with the chest wall on the left for L and right for R:
# lateral is up on CC, superior (and lateral) up on MLO (IHE Mammography Image profile)
_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "CC"): ["P", "L"],
    ("R", "MLO"): ["P", "FL"],
}


@dataclass(frozen=True)
class MammogramHeader:
    """The patient, study and acquisition facts of one image.

    Args:
        patient_id: PatientID.
        birth_date: PatientBirthDate, YYYYMMDD.
        age: PatientAge, e.g. "056Y".
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        sop_uid: SOPInstanceUID.
        study_date: StudyDate, YYYYMMDD.
        study_time: StudyTime, HHMMSS.
        accession: AccessionNumber.
        series_number: SeriesNumber.
        instance_number: InstanceNumber.
        laterality: "L" or "R".
        view: "CC" or "MLO".
        angle_deg: PositionerPrimaryAngle (C-arm rotation).
        spacing_mm: square pixel spacing.
        thickness_mm: BodyPartThickness.
        compression_force_n: CompressionForce.
        exposure: the technique (KVP, anode, filter, mAs, dose).
        device_serial: DeviceSerialNumber.
    """

    patient_id: str
    birth_date: str
    age: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    study_time: str
    accession: str
    series_number: int
    instance_number: int
    laterality: str
    view: str
    angle_deg: float
    spacing_mm: float
    thickness_mm: float
    compression_force_n: float
    exposure: Exposure
    device_serial: str


def write_mammogram(path: str | os.PathLike, pixels: np.ndarray, system: XraySystem, header: MammogramHeader) -> None:
    """Write ``pixels`` (uint16, stored values, file orientation) as a DICOM file of ``system``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = header.sop_uid
    meta.TransferSyntaxUID = system.transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MAMMOXAI_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian = True
    ds.is_implicit_VR = system.transfer_syntax == ImplicitVRLittleEndian
    _patient_and_study(ds, header)
    _equipment(ds, system, header)
    _acquisition(ds, header)
    _image(ds, pixels, system, header)
    _pixel_data(ds, pixels, system)
    ds.save_as(path, write_like_original=False)


def _patient_and_study(ds: Dataset, header: MammogramHeader) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    ds.SOPInstanceUID = header.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = header.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = header.study_time
    ds.AccessionNumber = header.accession
    ds.Modality = "MG"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Screening mammography, bilateral"
    ds.SeriesDescription = f"{header.laterality} {header.view}"
    ds.PatientName = f"Synthetic^{header.patient_id}"
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = header.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = header.age
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = header.accession[-8:]
    ds.SeriesNumber = header.series_number
    ds.InstanceNumber = header.instance_number
    ds.BurnedInAnnotation = "NO"


def _equipment(ds: Dataset, system: XraySystem, header: MammogramHeader) -> None:
    ds.Manufacturer = system.manufacturer
    ds.ManufacturerModelName = system.model
    ds.InstitutionName = "MammoXAI synthetic screening centre"
    ds.DeviceSerialNumber = header.device_serial
    ds.SoftwareVersions = system.software
    ds.DetectorType = system.detector_type


def _acquisition(ds: Dataset, header: MammogramHeader) -> None:
    exposure = header.exposure
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = header.laterality
    ds.ViewPosition = header.view
    ds.ViewCodeSequence = [_code(*_VIEW_CODES[header.view])]
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = []
    ds.AnatomicRegionSequence = [_code("76752008", "Breast")]
    ds.PatientOrientation = _ORIENTATION[(header.laterality, header.view)]
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.PositionerPrimaryAngle = f"{header.angle_deg:.1f}"
    ds.BodyPartThickness = f"{header.thickness_mm:.1f}"
    ds.CompressionForce = f"{header.compression_force_n:.1f}"
    ds.KVP = f"{exposure.kvp:g}"
    ds.Exposure = int(round(exposure.mas))
    ds.ExposureInuAs = int(round(exposure.mas * 1000))
    ds.AnodeTargetMaterial = exposure.anode
    ds.FilterMaterial = exposure.filter
    ds.OrganDose = f"{exposure.organ_dose_mgy:.2f}"
    ds.EntranceDoseInmGy = f"{exposure.organ_dose_mgy * 4.5:.2f}"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"


def _image(ds: Dataset, pixels: np.ndarray, system: XraySystem, header: MammogramHeader) -> None:
    inverted = system.photometric == "MONOCHROME1"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = system.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = system.bits_stored
    ds.HighBit = system.bits_stored - 1
    ds.PixelRepresentation = 0
    spacing = [f"{header.spacing_mm:.6g}"] * 2
    ds.ImagerPixelSpacing = spacing
    if system.writes_pixel_spacing:
        ds.PixelSpacing = spacing
    ds.EstimatedRadiographicMagnificationFactor = "1.0"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if inverted else -1  # -1: higher value = less X-ray intensity
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "INVERSE" if inverted else "IDENTITY"
    centres, widths = window_values(system)
    ds.WindowCenter = [f"{value:g}" for value in centres]
    ds.WindowWidth = [f"{value:g}" for value in widths]
    ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER", "SOFTER"][: len(centres)]
    ds.VOILUTFunction = "SIGMOID" if system.curve == "voi" else "LINEAR"
    ds.LossyImageCompression = "00"
    ds.QualityControlImage = "NO"


def _pixel_data(ds: Dataset, pixels: np.ndarray, system: XraySystem) -> None:
    pixels = np.ascontiguousarray(pixels, dtype=np.uint16)
    if system.transfer_syntax == RLELossless:
        ds.compress(RLELossless, pixels, encoding_plugin="pylibjpeg")
    elif system.transfer_syntax == JPEG2000Lossless:
        ds.PixelData = encapsulate([encode_array(pixels, bits_stored=system.bits_stored, use_mct=False)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item
