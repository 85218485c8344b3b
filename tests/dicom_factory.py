"""Writes small, real mammography DICOM files for tests.

One function, :func:`write_mammo_dicom`, builds a Digital Mammography X-Ray Image (For Presentation or For
Processing) with file meta, a plausible header and the given pixels, encodes them in the requested transfer
syntax with real encoders (pydicom's RLE encoder, OpenJPEG for JPEG 2000, CharLS for JPEG-LS) and saves it.
Any header field can be overridden or removed by keyword, so a test states only what it is about:

    write_mammo_dicom(tmp_path / "a.dcm", pixels, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096)
    write_mammo_dicom(tmp_path / "b.dcm", pixels, ImageLaterality=None, PatientOrientation=["P", "L"])

:func:`real_file_as_mammogram` copies a real file of pydicom's test set, relabelled MG, and
:func:`spoil_decimal_string` and :func:`shorten_value` damage a written file as broken writers do.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
_SOP_CLASS = {"FOR PRESENTATION": MG_FOR_PRESENTATION, "FOR PROCESSING": MG_FOR_PROCESSING}

#: A left cranio-caudal view from a plausible full-field digital mammography unit.
DEFAULT_HEADER: dict[str, Any] = {
    "Modality": "MG",
    "Manufacturer": "TestVendor",
    "ManufacturerModelName": "Mammo 3000",
    "PatientID": "P0001",
    "PatientAge": "056Y",
    "PatientSex": "F",
    "StudyDate": "20240131",
    "BodyPartExamined": "BREAST",
    "ImageLaterality": "L",
    "ViewPosition": "CC",
    "PatientOrientation": ["A", "R"],
    "ImagerPixelSpacing": [0.1, 0.1],
    "KVP": 29.0,
    "BodyPartThickness": 52.0,
    "CompressionForce": 110.0,
    "AnodeTargetMaterial": "TUNGSTEN",
    "FilterMaterial": "RHODIUM",
}


def write_mammo_dicom(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    presentation_intent: str = "FOR PRESENTATION",
    bits_stored: int | None = None,
    **header: Any,
) -> Path:
    """Write ``pixels`` as a mammography DICOM file and return its path.

    Args:
        path: file to write.
        pixels: integer array (rows, columns), or (frames, rows, columns) for a multi-frame file. ``uint8``
            gives 8 bits allocated, ``uint16`` / ``int16`` give 16 (signed for ``int16``).
        transfer_syntax: Explicit or Implicit VR Little Endian, Explicit VR Big Endian, Deflated Explicit VR
            Little Endian, RLE Lossless, JPEG 2000 Lossless (at least 32 pixels a side, for OpenJPEG's six
            resolution levels), JPEG-LS Lossless (needs ``pyjpegls``) or, for ``uint8``, lossy JPEG Baseline
            (Pillow, quality 95).
        photometric: ``"MONOCHROME2"`` or ``"MONOCHROME1"``; the pixels are stored as given either way.
        presentation_intent: ``"FOR PRESENTATION"`` or ``"FOR PROCESSING"``; sets the SOP Class to match.
        bits_stored: defaults to the fewest bits that hold the pixel values (at least 8), as detectors write
            12 or 14 bits in 16.
        header: DICOM keyword -> value, applied last; ``None`` removes the element. Sequences are given as a
            list of :class:`~pydicom.dataset.Dataset` items (see :func:`code_item`).
    """
    pixels = np.asarray(pixels)
    if pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise TypeError(f"pixels must be uint8, uint16 or int16, not {pixels.dtype}")
    signed = pixels.dtype == np.int16
    bits_allocated = pixels.dtype.itemsize * 8
    if bits_stored is None:
        span = int(np.abs(pixels).max()) if pixels.size else 0
        bits_stored = min(bits_allocated, max(8, span.bit_length() + int(signed)))

    sop_class = _SOP_CLASS[presentation_intent]
    sop_instance = generate_uid(entropy_srcs=[str(path)])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(path), "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path), "series"])
    ds.PresentationIntentType = presentation_intent
    for keyword, value in DEFAULT_HEADER.items():
        setattr(ds, keyword, value)

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()

    _encode(ds, pixels, transfer_syntax, bits_stored)
    for keyword, value in header.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)

    path = Path(path)
    ds.save_as(path, write_like_original=False)
    return path


def _encode(ds: Dataset, pixels: np.ndarray, transfer_syntax: str, bits_stored: int) -> None:
    """Re-encode the uncompressed Pixel Data of ``ds`` in ``transfer_syntax``."""
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax  # pydicom deflates the dataset as it writes it
        ds.is_little_endian, ds.is_implicit_VR = True, transfer_syntax == ImplicitVRLittleEndian
        return
    if transfer_syntax == ExplicitVRBigEndian:
        ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.is_little_endian, ds.is_implicit_VR = False, False
        return
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
        return
    frames = pixels.reshape(-1, *pixels.shape[-2:])
    if transfer_syntax == JPEG2000Lossless:
        import openjpeg

        encoded = [openjpeg.encode(frame, bits_stored=bits_stored) for frame in frames]
    elif transfer_syntax == JPEGLSLossless:
        import jpeg_ls  # the pyjpegls package: CharLS, the JPEG-LS reference implementation

        encoded = [bytes(jpeg_ls.encode_array(frame)) for frame in frames]
    elif transfer_syntax == JPEGBaseline8Bit:
        encoded = [_jpeg_baseline(frame) for frame in frames]
        ds.LossyImageCompression = "01"
    else:
        raise ValueError(f"no encoder for transfer syntax {transfer_syntax}")
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.is_little_endian, ds.is_implicit_VR = True, False


def _jpeg_baseline(frame: np.ndarray) -> bytes:
    """One 8-bit grayscale frame as a lossy JPEG Baseline code stream."""
    from PIL import Image

    if frame.dtype != np.uint8:
        raise ValueError(f"JPEG Baseline holds 8-bit pixels, not {frame.dtype}")
    stream = io.BytesIO()
    Image.fromarray(frame).save(stream, "JPEG", quality=95)
    return stream.getvalue()


def without_preamble(source: str | os.PathLike, path: str | os.PathLike, file_meta: bool = True) -> Path:
    """Write the dataset of DICOM file ``source`` to ``path`` without the 128-byte preamble and ``DICM`` marker,
    as legacy writers do; ``file_meta=False`` also leaves out the file meta group, so the file starts with the
    dataset's first element in Implicit VR Little Endian, as ACR-NEMA-era archives hold it."""
    dataset = pydicom.dcmread(source)
    stream = DicomBytesIO()
    if file_meta:
        dataset.preamble = None
        dcmwrite(stream, dataset, write_like_original=True)
    else:
        stream.is_little_endian, stream.is_implicit_VR = True, True
        write_dataset(stream, dataset)
    path = Path(path)
    path.write_bytes(stream.getvalue())
    return path


def code_item(value: str, scheme: str = "SCT", meaning: str = "") -> Dataset:
    """One coded-concept item, e.g. ``ViewCodeSequence=[code_item("399162004")]`` for a cranio-caudal view."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning or value
    return item


def functional_group(**macros: dict[str, Any]) -> Dataset:
    """One item of a Shared or Per-Frame Functional Groups Sequence: macro keyword -> its attributes, e.g.
    ``functional_group(FrameAnatomySequence={"FrameLaterality": "R"})``."""
    group = Dataset()
    for keyword, attributes in macros.items():
        macro = Dataset()
        for name, value in attributes.items():
            setattr(macro, name, value)
        setattr(group, keyword, [macro])
    return group


def voi_lut_item(lut: np.ndarray, first_mapped: int = 0, bits: int = 16, descriptor_vr: str = "US") -> Dataset:
    """One VOI LUT Sequence item mapping stored values ``first_mapped + i`` to ``lut[i]``; with the LUT Descriptor
    written as US (as most writers do), a negative ``first_mapped`` is stored in two's complement."""
    item = Dataset()
    item.LUTDescriptor = [len(lut), first_mapped if descriptor_vr == "SS" else first_mapped & 0xFFFF, bits]
    item.LUTData = [int(v) for v in lut]
    item["LUTDescriptor"].VR = descriptor_vr
    item["LUTData"].VR = "US"
    return item


def spoil_decimal_string(path: Path, group: int, element: int, value: bytes) -> None:
    """Overwrite the DS ``value`` of element (group, element) in an explicit VR little endian file with letters,
    as a broken writer might; pydicom cannot write such a value itself."""
    encoded = struct.pack("<HH", group, element) + b"DS" + struct.pack("<H", len(value)) + value
    data = path.read_bytes()
    if data.count(encoded) != 1:
        raise ValueError(f"({group:04X},{element:04X}) = {value!r} is not in {path} exactly once")
    path.write_bytes(data.replace(encoded, encoded[: -len(value)] + b"x" * len(value)))


def real_file_as_mammogram(folder: str | os.PathLike, name: str = "CT_small.dcm") -> Path:
    """A real file of pydicom's test set (by default a GE CT slice, explicit VR little endian, with vendors' private
    elements) relabelled MG, so that the checks after the modality's see it."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    dataset.Modality = "MG"
    dataset.KVP = None  # a CT's 120 kV, which the reader would warn away
    path = Path(folder) / name
    dataset.save_as(path, write_like_original=True)
    return path


def element_offset(path: Path, tag: tuple[int, int]) -> int:
    """Where element ``tag`` starts in an explicit VR little endian file."""
    data, encoded = path.read_bytes(), struct.pack("<HH", *tag)
    assert data.count(encoded) == 1, f"{tag} is not in {path} exactly once"
    return data.index(encoded)


def shorten_value(path: Path, tag: tuple[int, int]) -> None:
    """Drop the last byte of element ``tag``'s value, and one from its length, in an explicit VR little endian file,
    as a broken writer leaves it; pydicom cannot write such a value itself."""
    data = path.read_bytes()
    start = element_offset(path, tag) + 6  # the length, after the tag and the VR
    length = struct.unpack("<H", data[start : start + 2])[0]
    path.write_bytes(
        data[:start] + struct.pack("<H", length - 1) + data[start + 2 : start + 1 + length] + data[start + 2 + length :]
    )


def write_ct_dicom(path: str | os.PathLike) -> Path:
    """A CT slice as a PACS export puts it beside a study: a DICOM file of another modality, its file meta naming
    the CT storage class too."""
    write_mammo_dicom(
        path,
        np.full((64, 64), 1024, dtype=np.int16),
        Modality="CT",
        SOPClassUID=CTImageStorage,
        BodyPartExamined="CHEST",
        ImageLaterality=None,
        ViewPosition=None,
        PresentationIntentType=None,
    )
    dataset = pydicom.dcmread(path)
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
    dataset.save_as(path)
    return Path(path)
