"""Reading a 2D mammogram from a DICOM file: pixels as the header says to show them, plus the facts MammoXAI uses.

The grayscale pipeline of DICOM PS3.4 Annex N is applied in order: stored values → Modality LUT (or Rescale
Slope / Intercept) → VOI LUT (the VOI LUT Sequence, else Window Center / Width with its VOI LUT Function) →
MONOCHROME1 inverted across the range the pipeline can output, so that bright always means dense → Pixel Padding
set to black. pydicom's ``apply_modality_lut`` / ``apply_windowing`` do the arithmetic, and the VOI LUT Sequence is
applied here (pydicom 2.4 indexes an 8-bit LUT with 8-bit integers); the bits above BitsStored are dropped first,
as the standard leaves them undefined.

"For Processing" images (raw detector data, typically linear or logarithmic in exposure) go through the same
pipeline: they usually carry no VOI, so they come back with their stored values (inverted when MONOCHROME1), and
``header["PresentationIntentType"]`` tells downstream code which kind of image it holds.

What cannot be trusted is refused with a :class:`~mammoxai.errors.MammoXAIError` naming the file and the
problem: a DICOMDIR, a modality that is not a mammogram, multi-frame data (tomosynthesis), no or short pixel
data, more than 16 bits, a compression no installed decoder handles, a damaged element that says what the pixels
are. A wrong header *fact* (spacing, kV, thickness, force) does not make the pixels wrong: it is dropped to None
with a :class:`HeaderWarning` and the image is still read.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.pixel_data_handlers import pylibjpeg_handler
from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_windowing, get_expected_length
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessP14,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MediaStorageDirectoryStorage,
    RLELossless,
)

from mammoxai.errors import MammoXAIError
from mammoxai.io.mammogram import Mammogram

__all__ = [
    "HEADER_KEYWORDS",
    "HeaderWarning",
    "header_fields",
    "laterality",
    "pixel_spacing",
    "read_dicom",
    "read_dicom_header",
    "read_dicom_mask",
    "view",
]


class HeaderWarning(UserWarning):
    """A header field was implausible or unreadable and has been dropped; the image itself was read."""


#: Header fields copied into :attr:`Mammogram.header` (when present): identifiers, acquisition physics used as
#: metadata-pretraining targets (Litchfield et al., SPIE 2022), and the facts that say how the pixels were made,
#: including whether they were lossy-compressed or carry burned-in text, which quality control must see.
HEADER_KEYWORDS: tuple[str, ...] = (
    "PatientID", "PatientAge", "PatientSex", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "SOPClassUID", "AccessionNumber", "StudyDate", "Modality", "BodyPartExamined", "PresentationIntentType",
    "ImageType", "Manufacturer", "ManufacturerModelName", "DetectorType", "KVP", "Exposure", "XRayTubeCurrent",
    "ExposureTime", "BodyPartThickness", "CompressionForce", "AnodeTargetMaterial", "FilterMaterial",
    "OrganDose", "EntranceDoseInmGy", "BreastImplantPresent", "ImageLaterality", "Laterality", "ViewPosition",
    "PatientOrientation", "ImagerPixelSpacing", "PixelSpacing", "EstimatedRadiographicMagnificationFactor",
    "Rows", "Columns", "BitsStored", "PhotometricInterpretation", "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "LossyImageCompression", "BurnedInAnnotation",
)  # fmt: skip

#: Plausible ranges (inclusive) of numeric header facts; a value outside is a header error, not a mammogram.
#: kVp: mammography, contrast-enhanced and tomosynthesis units use 20-49 kV. Compressed breast thickness:
#: 10-120 mm in screening populations. Compression force: powered compression stops at 200 N (IEC 60601-2-45),
#: manual compression can add more, 0 N is recorded for uncompressed and specimen views. The bounds are those
#: of ``configs/metadata_fields.json``, so what the reader keeps the metadata heads can use.
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "KVP": (15.0, 50.0),
    "BodyPartThickness": (5.0, 200.0),
    "CompressionForce": (0.0, 400.0),
}

#: Pixel spacing (mm) a mammogram can have: detectors have 0.05-0.1 mm pixels, digitised film 0.04-0.05 mm, and
#: downsampled copies (public data set releases, small synthetic phantoms) reach 1-2 mm. Below 10 µm or above
#: 5 mm per pixel (a 30 cm detector in 60 pixels) the header is wrong, typically in the wrong unit (µm or cm),
#: not the image.
SPACING_RANGE_MM: tuple[float, float] = (0.01, 5.0)

#: Presentation intent implied by the SOP Class, for files that leave PresentationIntentType out.
_INTENT_BY_SOP_CLASS = {
    "1.2.840.10008.5.1.4.1.1.1.1": "FOR PRESENTATION",  # Digital X-Ray
    "1.2.840.10008.5.1.4.1.1.1.1.1": "FOR PROCESSING",
    "1.2.840.10008.5.1.4.1.1.1.2": "FOR PRESENTATION",  # Digital Mammography X-Ray
    "1.2.840.10008.5.1.4.1.1.1.2.1": "FOR PROCESSING",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "FOR PRESENTATION",  # Breast Projection X-Ray Image
    "1.2.840.10008.5.1.4.1.1.13.1.5": "FOR PROCESSING",
}

#: ViewCodeSequence codes of DICOM CID 4014 "View for Mammography": SNOMED CT, and the SNOMED-RT codes older
#: files carry, to the ViewPosition abbreviations of the ACR BI-RADS atlas.
VIEW_CODES: dict[str, str] = {
    "399162004": "CC", "R-10242": "CC",
    "399368009": "MLO", "R-10226": "MLO",
    "399260004": "ML", "R-10224": "ML",
    "399352003": "LM", "R-10228": "LM",
    "399192008": "XCCL", "R-1024A": "XCCL",
    "399101009": "XCCM", "R-1024B": "XCCM",
    "399099002": "LMO", "R-10230": "LMO",
    "399196006": "FB", "R-10244": "FB",
    "399188001": "SIO", "R-102D0": "SIO",
    "441555000": "ISO", "R-40AAA": "ISO",
}  # fmt: skip

_UNCOMPRESSED = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
)
#: Encodings whose decoded words are the stored words, bits above BitsStored included.
_RAW_WORDS = _UNCOMPRESSED | {RLELossless}

#: The pylibjpeg plugin that decodes each compressed transfer syntax pydicom 2.4 knows.
_DECODER_PACKAGES = {
    **dict.fromkeys(
        (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessP14, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless),
        "pylibjpeg-libjpeg",
    ),
    **dict.fromkeys((JPEG2000Lossless, JPEG2000), "pylibjpeg-openjpeg"),
    RLELossless: "pylibjpeg-rle",
}

_Read = TypeVar("_Read")


def _refuses_damaged_elements(read: Callable[[str | os.PathLike], _Read]) -> Callable[[str | os.PathLike], _Read]:
    """``read`` with a header element whose value has the wrong length for its VR refused as a damaged file.

    pydicom parses an element's value when it is first used, not when the file is read, so such an element (a file
    cut inside its header, a writer that wrote one byte of a two-byte Bits Stored) raised pydicom's own
    ``BytesLengthException`` from whichever check used it first, past :func:`_read_dataset`, and the server answered
    500. Elements that are never used (a vendor's private tags) are never parsed and refuse nothing; header facts
    are parsed by :func:`header_fields`, which drops a bad one with a warning.
    """

    @functools.wraps(read)
    def refusing(path: str | os.PathLike) -> _Read:
        try:
            return read(path)
        except BytesLengthException as error:
            problem = f"has a header element that cannot be parsed ({_damaged_element(error)})"
            raise MammoXAIError(path, problem, "re-export the image from the archive") from error

    return refusing


def _damaged_element(error: BytesLengthException) -> str:
    """Which element pydicom could not parse, for a user: its tag, name and VR, without the raw bytes pydicom quotes
    (up to hundreds of them) or its advice to programmers."""
    found = re.search(r"parse (\([0-9A-Fa-f]{4}, [0-9A-Fa-f]{4}\)) according to VR '(\w+)'", str(error))
    if found is None:
        return str(error).split(" To replace this error")[0][:200]
    tag, vr = found.groups()
    name = keyword_for_tag(int(tag[1:5] + tag[7:11], 16)) or "a private element"
    return f"{tag} {name}: a value of the wrong length for its VR {vr}"


@_refuses_damaged_elements
def read_dicom(path: str | os.PathLike) -> Mammogram:
    """Read a 2D mammogram (MG, DX, or CR of the breast) from a DICOM file.

    Args:
        path: the DICOM file; the 128-byte preamble may be missing, as in some older archives.

    Returns:
        a :class:`Mammogram` with float32 pixels (bright = dense, file orientation), spacing, laterality, view
        and the :data:`HEADER_KEYWORDS` fields as plain Python values.

    Raises:
        MammoXAIError: the file is not a readable 2D mammogram; the message says why and what to do.

    Example:
        mammogram = read_dicom("1.2.840.113619.2.55.dcm")
        mammogram.pixels.shape, mammogram.laterality, mammogram.view, mammogram.header["KVP"]
    """
    path = Path(path)
    ds = _read_dataset(path)
    _check_is_mammogram(ds, path)
    _check_has_pixel_data(ds, path)
    _check_image_module(ds, path)
    pixels, value_range = _display_values(ds, _stored_values(ds, path), path)
    return Mammogram(
        pixels=pixels,
        spacing=pixel_spacing(ds, path),
        laterality=laterality(ds),
        view=view(ds),
        header=header_fields(ds, path),
        source=str(path),
        value_range=value_range,
    )


@_refuses_damaged_elements
def read_dicom_header(path: str | os.PathLike) -> Dataset:
    """The header of a DICOM mammogram, checked as :func:`read_dicom` checks it, without reading the pixel data.

    For scanning large archives (manifests): a few kB are read per file instead of a decoded image, and
    :func:`header_fields`, :func:`laterality`, :func:`view` and :func:`pixel_spacing` give the same facts
    :func:`read_dicom` returns. Damage inside the pixel data is only found when the image is read.

    Raises:
        MammoXAIError: the header already shows the file is not a readable 2D mammogram.
    """
    path = Path(path)
    ds = _read_dataset(path, stop_before_pixels=True)
    _check_is_mammogram(ds, path)
    _check_image_module(ds, path)
    return ds


@_refuses_damaged_elements
def read_dicom_mask(path: str | os.PathLike) -> np.ndarray:
    """A lesion mask stored as a DICOM image (CBIS-DDSM's ROI masks) as a boolean (H, W) array, True where the stored
    value is not 0.

    The stored values, not the display pipeline of :func:`read_dicom`: a window, VOI LUT or MONOCHROME1 inversion
    says how to show an image, and would move which pixels are inside. Any modality is accepted (archives file masks
    as MG or OT); the pixel data must be readable as :func:`read_dicom` reads it.

    Raises:
        MammoXAIError: the file is not a readable single-channel DICOM image.

    Example:
        inside = read_dicom_mask("Mass-Training_P_00001_LEFT_CC_1/.../1-2.dcm")
    """
    path = Path(path)
    ds = _read_dataset(path)
    _check_has_pixel_data(ds, path)
    _check_image_module(ds, path)
    return _stored_values(ds, path) != 0


# -- checks ------------------------------------------------------------------------------------------------------
def _read_dataset(path: Path, stop_before_pixels: bool = False) -> Dataset:
    # force=True: files written without the preamble and "DICM" marker are still DICOM; anything else is caught
    # below because it has neither a SOP Class nor a Modality.
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as error:  # pydicom raises many types on damaged input; all mean the same to the user
        raise MammoXAIError(path, f"is not a readable DICOM file ({error})", "re-export it from the archive") from error
    _check_is_not_dicomdir(ds, path)
    if "SOPClassUID" not in ds and "Modality" not in ds:
        raise MammoXAIError(path, "is not a DICOM image (no SOP Class UID, no Modality)", "pass a DICOM mammogram")
    _lift_functional_groups(ds)
    return ds


def _check_is_not_dicomdir(ds: Dataset, path: Path) -> None:
    """Refuse a DICOMDIR as the index it is, not as some file that is no image.

    A CD, DVD or USB export of a study (a DICOM media set, PS3.10) has a file named ``DICOMDIR`` at its root that
    lists the image files in the folders beside it; it looks like the file to open, and users pass it. It has no
    SOP Class UID or Modality of its own, so the general refusal said only that it is not an image.
    """
    if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        what = f"the directory of a DICOM media set (Media Storage SOP Class {MediaStorageDirectoryStorage})"
        raise MammoXAIError(
            path,
            f"is a DICOMDIR, {what}, not an image",
            "pass the image files it lists instead, from the folders beside it",
        )


def _lift_functional_groups(ds: Dataset) -> None:
    """Copy the attributes in the functional group macros of an enhanced image up to the top level.

    Enhanced multi-frame IODs (Breast Projection X-Ray Image, converted legacy images) keep frame laterality,
    pixel spacing, rescale and window in macros of the Per-Frame and Shared Functional Groups Sequences (PS3.3
    C.7.6.16), not where a 2D mammogram keeps them; read only at the top level, a one-frame file of this kind
    would lose its laterality and spacing and be shown without its rescale or window. Only one-frame files are
    read, so the first frame's groups are the image's. A top-level value is kept, and a per-frame value wins
    over a shared one.
    """
    for keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(keyword)
        for macro in groups[0] if groups else ():
            for element in macro.value[0] if macro.VR == "SQ" and macro.value else ():
                if element.tag not in ds:
                    ds.add(element)


def _check_is_mammogram(ds: Dataset, path: Path) -> None:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    # MG is a mammogram whatever else it says; DX may leave the body part out; CR must name the breast
    accepted = {"MG": True, "DX": body_part in ("", "BREAST"), "CR": body_part == "BREAST"}
    if not accepted.get(modality, False):
        what = f"Modality {modality or 'missing'}" + (f", BodyPartExamined {body_part}" if body_part else "")
        raise MammoXAIError(path, f"is not a mammogram ({what})", "pass an MG image, or DX / CR of the breast")
    frames = _int_or_none(ds.get("NumberOfFrames")) or 1
    if frames > 1:
        raise MammoXAIError(
            path,
            f"holds {frames} frames (a tomosynthesis volume or multi-frame series); only 2D mammograms are supported",
            "pass the study's 2D mammogram or synthesised 2D view",
        )


def _check_has_pixel_data(ds: Dataset, path: Path) -> None:
    if "PixelData" not in ds:
        raise MammoXAIError(
            path, "has no pixel data (the file is truncated, or holds no image)", "re-export the image from the archive"
        )


def _check_image_module(ds: Dataset, path: Path) -> None:
    """Refuse an image whose size, photometric, bit depth, compression or (when loaded) pixel data length shows
    that its pixels cannot be read or trusted."""
    rows, columns = _int_or_none(ds.get("Rows")) or 0, _int_or_none(ds.get("Columns")) or 0
    if rows < 1 or columns < 1:
        raise MammoXAIError(path, f"has an empty image (Rows {rows}, Columns {columns})", "re-export the image")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or (_int_or_none(ds.get("SamplesPerPixel")) or 1) != 1:
        raise MammoXAIError(
            path,
            f"is not grayscale (PhotometricInterpretation {photometric or 'missing'})",
            "pass the original mammogram",
        )
    allocated, stored = _int_or_none(ds.get("BitsAllocated")), _int_or_none(ds.get("BitsStored"))
    if allocated not in (8, 16) or stored is None or not 1 <= stored <= allocated:
        raise MammoXAIError(
            path,
            f"has BitsAllocated {allocated} / BitsStored {stored}; mammograms store 8 to 16 bits, so the pixel values "
            "cannot be interpreted",
            "re-export the image from the modality or archive",
        )
    syntax = _transfer_syntax(ds)
    if syntax not in _UNCOMPRESSED:
        _check_decoder(syntax, path)
    elif "PixelData" in ds:
        expected = get_expected_length(ds, "bytes")
        actual = len(ds.PixelData)
        if actual not in (expected, expected + 1):  # + 1: the pad byte that makes odd lengths even
            cause = "the file is truncated or its header is wrong" if actual < expected else "its header is wrong"
            raise MammoXAIError(
                path,
                f"has {actual} bytes of pixel data but Rows {rows} × Columns {columns} × {allocated} bits need "
                f"{expected} ({cause})",
                "re-export the image from the archive",
            )


def _transfer_syntax(ds: Dataset) -> UID:
    """The dataset's transfer syntax; a file without file meta gets the encoding pydicom found it in."""
    if "TransferSyntaxUID" not in ds.file_meta:
        if not ds.is_little_endian:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        else:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian
    return UID(ds.file_meta.TransferSyntaxUID)


def _check_decoder(syntax: UID, path: Path) -> None:
    """Refuse, before decoding, a compressed transfer syntax that no installed pixel-data handler decodes."""
    for handler in pydicom.config.pixel_data_handlers:
        if not (handler.is_available() and handler.supports_transfer_syntax(syntax)):
            continue
        # the pylibjpeg handler claims every syntax of its plugins, installed or not
        if handler is pylibjpeg_handler and syntax not in pylibjpeg_handler.get_pixel_data_decoders():
            continue
        return
    name = syntax.name if syntax.name != str(syntax) else "an unknown or private transfer syntax"
    package = _DECODER_PACKAGES.get(syntax)
    fix = (
        f"install the {package} package" if package
        else "convert it to an uncompressed or JPEG 2000 transfer syntax, e.g. with the software that wrote it"
    )  # fmt: skip
    raise MammoXAIError(path, f"is compressed with {name} ({syntax}), which no installed decoder reads", fix)


# -- pixels ------------------------------------------------------------------------------------------------------
def _stored_values(ds: Dataset, path: Path) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as error:  # decoders raise anything from ValueError to RuntimeError on damaged data
        raise MammoXAIError(
            path,
            f"has pixel data that cannot be decoded as {_transfer_syntax(ds).name} ({error})",
            "the file is damaged or truncated; re-export it from the archive",
        ) from error
    if _transfer_syntax(ds) not in _RAW_WORDS:
        return stored
    return _within_bits_stored(stored, int(ds.BitsStored), signed=ds.get("PixelRepresentation", 0) == 1)


def _within_bits_stored(stored: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """``stored`` with the bits above BitsStored cleared, or, for signed pixels, filled with the sign bit.

    PS3.5 8.1.1 leaves those bits undefined: older modalities kept overlays there and some writers leave other
    data, and pydicom 2.4 returns uncompressed values with the bits as they are, so a 12-bit 3000 with its top
    nibble set would read as 64440, and a 12-bit -100 written with its sign in bit 11 only as 3996. This holds
    for the encodings that carry the stored words as they are (:data:`_RAW_WORDS`); JPEG, JPEG-LS and JPEG 2000
    code streams state their own precision and sign, which their decoders apply, and a header that understates
    the precision must not cut their values.
    """
    allocated = stored.dtype.itemsize * 8
    if bits >= allocated:
        return stored
    shift = allocated - bits
    stored = stored.astype(stored.dtype.newbyteorder("="), copy=False)  # big endian files decode big endian
    shifted_up = stored.view(f"u{stored.dtype.itemsize}") << shift  # the undefined bits fall off the top
    return (shifted_up.view(f"i{stored.dtype.itemsize}") if signed else shifted_up) >> shift


def _display_values(ds: Dataset, stored: np.ndarray, path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Modality LUT → VOI LUT or window → MONOCHROME1 inversion (PS3.4 Annex N) → padding to black, as float32,
    and the range of values that pipeline can output."""
    try:
        values = apply_modality_lut(stored, ds)
        value_range = _modality_output_range(ds)
    except Exception as error:  # the stored values mean nothing without their rescale: refuse
        raise MammoXAIError(
            path, f"has a Modality LUT or rescale that cannot be applied ({error})", "re-export the image"
        ) from error
    # A malformed VOI module is a header error: the display hint is skipped with a warning, the values stay right.
    if _has_voi_lut(ds):
        try:
            values, value_range = _apply_voi_lut(ds, values)
        except Exception as error:
            _warn(path, f"VOI LUT cannot be applied ({error}); the image is shown without it")
    elif ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        try:  # the window maps onto the modality output range, so value_range stays as it is
            values = apply_windowing(values, ds)
        except Exception as error:
            _warn(path, f"window cannot be applied ({error}); the image is shown without it")
    if ds.PhotometricInterpretation == "MONOCHROME1":  # minimum is white: mirror across the output range
        values = value_range[0] + value_range[1] - np.asarray(values, dtype=np.float64)
    values = np.where(_padding(ds, stored), value_range[0], values)
    return np.ascontiguousarray(values, dtype=np.float32), value_range


def _padding(ds: Dataset, stored: np.ndarray) -> np.ndarray | bool:
    """Where ``stored`` holds the Pixel Padding Value, or lies within it and the Pixel Padding Range Limit.

    Padding (the area outside the detector's or collimator's field, PS3.3 C.7.5.1.1.2) is not part of the image.
    The standard asks writers to put it at the black end of the stored range, but not every writer does, and
    MONOCHROME1 padding stored at 0 would come out of the inversion white: a background as bright as dense
    tissue, which the breast segmentation would take for the breast. So padding is set to the black end of the
    output whatever its stored value.
    """
    value = _int_or_none(ds.get("PixelPaddingValue"))
    if value is None:
        return False
    limit = _int_or_none(ds.get("PixelPaddingRangeLimit"))
    low, high = sorted(_as_pixel_value(end, ds) for end in (value, value if limit is None else limit))
    return (stored >= low) & (stored <= high)


def _apply_voi_lut(ds: Dataset, values: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The first item of the VOI LUT Sequence applied to ``values``, and the range of values the LUT outputs.

    Applied here rather than by pydicom's ``apply_voi``, which (2.4) builds its array of LUT indices in the LUT's own
    dtype: with an 8-bit LUT every value above 255 wrapped around, scrambling the image. The LUT Descriptor gives the
    number of entries (0 meaning 65536), the first value mapped and the bits per entry, 8 or 10 to 16 (PS3.3
    C.11.2.1.1); values below the first mapped one take the first entry, values past the table the last. LUT entries
    are indexed by integers, so values a rescale made integral floats are rounded first.

    The first mapped value takes its sign from Pixel Representation, but Explicit VR gives all three descriptor
    values one VR and writers often choose US: taken as written, every pixel of a signed image would lie below the
    LUT and map to its first entry, a blank image.

    Raises:
        ValueError: a descriptor or LUT Data no LUT can be built from (the caller warns and shows the image without).
    """
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(value) for value in item.LUTDescriptor)
    entries = entries or 2**16
    if not (bits == 8 or 10 <= bits <= 16):
        raise ValueError(f"its LUT Descriptor gives {bits} bits per entry, not 8 or 10 to 16")
    element = item["LUTData"]
    if element.VR == "OW":  # one entry per 16-bit word, in the dataset's byte order
        lut = np.frombuffer(element.value, dtype="<u2" if ds.is_little_endian in (True, None) else ">u2")
    else:
        lut = np.atleast_1d(np.asarray(element.value, dtype=np.int64))
    if len(lut) < entries:
        raise ValueError(f"its LUT Data has {len(lut)} entries, its LUT Descriptor {entries}")
    indices = np.clip(np.rint(values).astype(np.int64) - _as_pixel_value(first, ds), 0, entries - 1)
    return lut[:entries].astype(np.int64)[indices], (0.0, float(2**bits - 1))


def _as_pixel_value(value: int, ds: Dataset) -> int:
    """An attribute given in stored pixel values ("US or SS" in the dictionary), with the sign of the pixels.

    Writers that choose US for such an attribute of a signed image store its two's complement: -2048 as 63488.
    """
    return value - 2**16 if ds.get("PixelRepresentation", 0) == 1 and value >= 2**15 else value


def _has_voi_lut(ds: Dataset) -> bool:
    items = ds.get("VOILUTSequence")
    return bool(items) and "LUTDescriptor" in items[0] and "LUTData" in items[0]


def _modality_output_range(ds: Dataset) -> tuple[float, float]:
    """The values the Modality LUT stage can output, as pydicom's ``apply_windowing`` also takes them."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    low, high = (0, 2**bits - 1) if ds.get("PixelRepresentation", 0) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return float(low), float(high)


# -- header facts ------------------------------------------------------------------------------------------------
def pixel_spacing(ds: Dataset, source: str | os.PathLike = "") -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm: ImagerPixelSpacing, else PixelSpacing; None when neither is plausible.

    ImagerPixelSpacing (the detector pitch) comes first: it is mandatory in the MG and DX IODs, so every vendor
    writes it, and it is the grid the pixels were acquired on. PixelSpacing, where present, is calibrated to the
    breast plane (detector pitch / magnification, PS3.3 C.8.11.4) and differs between vendors' calibrations; it
    is used for files that lack the detector pitch (CR, converted or downsampled copies). Values outside
    :data:`SPACING_RANGE_MM` are dropped with a :class:`HeaderWarning`.
    """
    low, high = SPACING_RANGE_MM
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = _plain_or_none(ds, keyword, source)
        if value is None:
            continue
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value)):
            _warn(source, f"{keyword} {value!r} is not two numbers; ignored")
        elif not all(low <= v <= high for v in value):
            _warn(source, f"{keyword} {value} mm is outside the {low}-{high} mm a mammogram can have; ignored")
        else:
            return value[0], value[1]
    return None


def laterality(ds: Dataset) -> str | None:
    """ "L" or "R": ImageLaterality, else FrameLaterality (of enhanced images), else (series) Laterality, else read
    from PatientOrientation; None if unknown.

    Mammograms hang with the lateral (CC) or superolateral (MLO) side up and the chest wall towards the other
    breast (ACR / IHE Mammography display), so the column direction of PatientOrientation points medially: to
    the patient's right for the left breast ("A\\R", "A\\FR"), to the left for the right breast ("P\\L",
    "P\\FL"). This survives the left-right mirroring many archives apply. True laterals ("A\\F") have no
    left-right axis; for them the row direction says where the chest wall is: "A" (chest wall on the left of
    the image) for the left breast, "P" for the right.
    """
    for keyword in ("ImageLaterality", "FrameLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value:
            return value if value in ("L", "R") else None  # "B" (both) or "U" (unpaired) name no single breast
    orientation = ds.get("PatientOrientation")
    if not isinstance(orientation, (MultiValue, list)) or len(orientation) != 2:
        return None
    row, column = (str(value).strip().upper() for value in orientation)
    medial = {"L", "R"} & set(column)
    if len(medial) == 1:
        return "L" if medial == {"R"} else "R"
    return {"A": "L", "P": "R"}.get(row)


def view(ds: Dataset) -> str | None:
    """View abbreviation ("CC", "MLO", "ML", ...) from ViewPosition, else from the ViewCodeSequence code."""
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position:
        return position
    for item in ds.get("ViewCodeSequence") or ():
        code = VIEW_CODES.get(str(item.get("CodeValue", "")).strip())
        if code:
            return code
    return None


def header_fields(ds: Dataset, source: str | os.PathLike = "") -> dict[str, Any]:
    """The :data:`HEADER_KEYWORDS` present in ``ds`` as str / int / float / list values.

    Implausible physics (see :data:`PLAUSIBLE_RANGES`) and unreadable values are left out with a
    :class:`HeaderWarning`. ``PresentationIntentType`` is filled in from the SOP Class when the file omits it.
    """
    header = {}
    for keyword in HEADER_KEYWORDS:
        value = _plain_or_none(ds, keyword, source)
        if value is None:
            continue
        if keyword in PLAUSIBLE_RANGES:
            low, high = PLAUSIBLE_RANGES[keyword]
            if not isinstance(value, float) or not low <= value <= high:
                _warn(source, f"{keyword} {value!r} is outside the plausible {low:g}-{high:g}; dropped")
                continue
        header[keyword] = value
    intent = header.get("PresentationIntentType") or _INTENT_BY_SOP_CLASS.get(header.get("SOPClassUID", ""))
    if intent:
        header["PresentationIntentType"] = intent.upper()
    return header


def _plain_or_none(ds: Dataset, keyword: str, source: str | os.PathLike) -> Any:
    """An element's value as plain Python (None when absent or empty); a value pydicom cannot parse is warned
    about and treated as absent."""
    try:
        return _plain(ds.get(keyword))
    except Exception as error:  # a malformed value (e.g. DS "abc") raises when pydicom converts it
        _warn(source, f"{keyword} cannot be read ({error}); dropped")
        return None


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bytes, Sequence)):
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        items = [_plain(item) for item in value]
        return [item for item in items if item is not None] or None
    if isinstance(value, float):  # DSfloat, FD, FL
        return float(value)
    if isinstance(value, int):  # IS, US, SS, ...
        return int(value)
    return str(value).strip() or None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _warn(source: str | os.PathLike, message: str) -> None:
    warnings.warn(f"{source}: {message}", HeaderWarning, stacklevel=2)
