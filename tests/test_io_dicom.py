"""Reading DICOM mammograms: lossless decoding, the grayscale pipeline, spacing, laterality, view and header."""

import json

import numpy as np
import pydicom
import pytest
from dicom_factory import code_item, spoil_decimal_string, voi_lut_item, write_mammo_dicom
from pydicom.pixel_data_handlers import numpy_handler, pylibjpeg_handler
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from mammoxai.errors import MammoXAIError
from mammoxai.io import HeaderWarning, read_mammogram
from mammoxai.io.dicom import header_fields, laterality, pixel_spacing, read_dicom_header, view

SHAPE = (64, 48)  # JPEG 2000's six resolution levels need at least 32 pixels a side
DIGITAL_X_RAY = "1.2.840.10008.5.1.4.1.1.1.1"  # SOP Class: Digital X-Ray Image Storage - For Presentation


@pytest.fixture
def pixels():
    """12-bit detector values, random so that any mix-up of pixels shows."""
    return np.random.default_rng(7).integers(0, 4096, SHAPE).astype(np.uint16)


def ramp(bits=12):
    """Every stored value of a ``bits``-bit image, once, as a 64-column image."""
    return np.arange(2**bits, dtype=np.uint16).reshape(-1, 64)


# -- decoding ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
        RLELossless, JPEG2000Lossless, JPEGLSLossless,
    ],
)  # fmt: skip
@pytest.mark.parametrize("bits", [12, 16])
def test_lossless_transfer_syntaxes_decode_to_the_original_pixels(tmp_path, syntax, bits):
    pixels = np.random.default_rng(bits).integers(0, 2**bits, SHAPE).astype(np.uint16)
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, transfer_syntax=syntax)
    assert pydicom.dcmread(path).BitsStored == bits
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax

    mammogram = read_mammogram(path)

    assert mammogram.pixels.dtype == np.float32
    assert mammogram.shape == SHAPE
    np.testing.assert_array_equal(mammogram.pixels, pixels)


def test_jpeg_ls_is_decoded_by_the_core_pylibjpeg_plugin(tmp_path, pixels, monkeypatch):
    # pyjpegls (a test-only encoder) also decodes; the installed product relies on pylibjpeg-libjpeg alone
    monkeypatch.setattr(pydicom.config, "pixel_data_handlers", [numpy_handler, pylibjpeg_handler])
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, transfer_syntax=JPEGLSLossless)

    np.testing.assert_array_equal(read_mammogram(path).pixels, pixels)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_signed_pixels_keep_their_sign(tmp_path, syntax):
    signed = np.random.default_rng(1).integers(-2000, 2000, SHAPE).astype(np.int16)
    path = write_mammo_dicom(tmp_path / "image.dcm", signed, transfer_syntax=syntax)

    np.testing.assert_array_equal(read_mammogram(path).pixels, signed)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless])
def test_8_bit_pixels_are_read_exactly(tmp_path, syntax):
    eight_bit = np.random.default_rng(2).integers(0, 256, SHAPE).astype(np.uint8)
    path = write_mammo_dicom(tmp_path / "image.dcm", eight_bit, transfer_syntax=syntax)

    np.testing.assert_array_equal(read_mammogram(path).pixels, eight_bit)


def test_file_without_preamble_or_extension_is_read_as_dicom(tmp_path, pixels):
    dataset = pydicom.dcmread(write_mammo_dicom(tmp_path / "full.dcm", pixels))
    dataset.preamble = None  # legacy writers start straight with the first element
    bare = tmp_path / "IM0001"
    dataset.save_as(bare, write_like_original=True)
    assert bare.read_bytes()[128:132] != b"DICM"

    np.testing.assert_array_equal(read_mammogram(bare).pixels, pixels)


# -- grayscale pipeline ------------------------------------------------------------------------------------------
def test_monochrome1_is_inverted(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, photometric="MONOCHROME1", bits_stored=12)

    np.testing.assert_array_equal(read_mammogram(path).pixels, 4095 - pixels.astype(np.float32))


def test_rescale_slope_and_intercept_are_applied(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, RescaleSlope=2, RescaleIntercept=-100)

    np.testing.assert_array_equal(read_mammogram(path).pixels, 2.0 * pixels - 100)


def test_monochrome1_is_inverted_across_the_rescaled_range(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, photometric="MONOCHROME1", bits_stored=12, RescaleSlope=2, RescaleIntercept=-100
    )
    # the rescaled range is [-100, 8090]; MONOCHROME1 mirrors values within it
    expected = (-100 + 8090) - (2.0 * pixels - 100)

    np.testing.assert_array_equal(read_mammogram(path).pixels, expected)


def test_the_value_range_is_what_the_display_pipeline_can_output(tmp_path, pixels):
    """``display_range`` intensity scaling maps this range onto [0, 1]: the stored bits, as rescaled, or the
    VOI LUT's output bits; a window keeps the range it maps onto."""
    plain = write_mammo_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12)
    rescaled = write_mammo_dicom(
        tmp_path / "rescaled.dcm", pixels, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100
    )
    windowed = write_mammo_dicom(tmp_path / "windowed.dcm", pixels, bits_stored=12, WindowCenter=1800, WindowWidth=1000)
    lut = (np.sqrt(np.arange(3000) / 2999) * 65535).astype(np.uint16)
    voi = write_mammo_dicom(tmp_path / "voi.dcm", pixels, bits_stored=12, VOILUTSequence=[voi_lut_item(lut)])
    assert read_mammogram(plain).value_range == (0.0, 4095.0)
    assert read_mammogram(rescaled).value_range == (-100.0, 8090.0)
    assert read_mammogram(windowed).value_range == (0.0, 4095.0)
    assert read_mammogram(voi).value_range == (0.0, 65535.0)


def linear_window(x, center, width, y_max, exact=False):
    """PS3.3 C.11.2.1.2.1 (LINEAR) and C.11.2.1.3.2 (LINEAR_EXACT), written out independently of pydicom."""
    x = x.astype(np.float64)
    if exact:
        y = (x - center) / width + 0.5
        return np.clip(y, 0, 1) * y_max
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * y_max
    y[x <= center - 0.5 - (width - 1) / 2] = 0
    y[x > center - 0.5 + (width - 1) / 2] = y_max
    return y


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", None])
def test_linear_windows_follow_the_standard(tmp_path, function):
    stored = ramp()
    header = {"VOILUTFunction": function} if function else {}
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, bits_stored=12, WindowCenter=1800, WindowWidth=1000, **header
    )

    expected = linear_window(stored, 1800, 1000, 4095, exact=function == "LINEAR_EXACT")

    np.testing.assert_allclose(read_mammogram(path).pixels, expected, atol=1e-3)


def test_sigmoid_window_follows_the_standard(tmp_path):
    stored = ramp()
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, bits_stored=12, WindowCenter=2100, WindowWidth=900, VOILUTFunction="SIGMOID"
    )
    expected = 4095 / (1 + np.exp(-4 * (stored - 2100.0) / 900))  # PS3.3 C.11.2.1.3.1

    np.testing.assert_allclose(read_mammogram(path).pixels, expected, rtol=1e-5)


def test_first_of_several_windows_is_used(tmp_path):
    stored = ramp()
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, bits_stored=12, WindowCenter=[1800, 500], WindowWidth=[1000, 200]
    )

    np.testing.assert_allclose(read_mammogram(path).pixels, linear_window(stored, 1800, 1000, 4095), atol=1e-3)


def test_window_applies_after_rescale(tmp_path):
    stored = ramp()
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=0, WindowCenter=4000,
        WindowWidth=2001, VOILUTFunction="LINEAR_EXACT",
    )  # fmt: skip
    # the window acts on rescaled values and maps onto the rescaled range [0, 8190]
    expected = np.clip((2.0 * stored - 4000) / 2001 + 0.5, 0, 1) * 8190

    np.testing.assert_allclose(read_mammogram(path).pixels, expected, atol=1e-3)


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    stored = ramp()
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, photometric="MONOCHROME1", bits_stored=12, WindowCenter=1800, WindowWidth=1000
    )

    np.testing.assert_allclose(read_mammogram(path).pixels, 4095 - linear_window(stored, 1800, 1000, 4095), atol=1e-3)


def test_voi_lut_sequence_is_applied_in_preference_to_the_window(tmp_path):
    stored = ramp()
    lut = (np.sqrt(np.arange(3000) / 2999) * 65535).astype(np.uint16)  # a non-linear display curve
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, bits_stored=12, VOILUTSequence=[voi_lut_item(lut, first_mapped=500)],
        WindowCenter=1800, WindowWidth=1000,
    )  # fmt: skip
    # values below the first mapped one take the first entry, values past the table the last (PS3.3 C.11.2.1.1)
    expected = lut[np.clip(stored.astype(int) - 500, 0, len(lut) - 1)]

    np.testing.assert_array_equal(read_mammogram(path).pixels, expected)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("lut_vr", ["US", "OW"])
def test_an_8_bit_voi_lut_maps_stored_values_past_255(tmp_path, photometric, lut_vr):
    # pydicom 2.4's apply_voi indexed an 8-bit LUT with uint8: 1000 wrapped to 232, 4095 to 255
    stored = ramp()
    lut = np.linspace(0, 255, 4096).astype(np.uint16)
    item = voi_lut_item(lut, bits=8)
    if lut_vr == "OW":  # the other VR the standard allows: 16-bit words in the file's byte order
        item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, photometric=photometric, bits_stored=12, VOILUTSequence=[item]
    )
    expected = lut[stored] if photometric == "MONOCHROME2" else 255 - lut[stored]

    np.testing.assert_array_equal(read_mammogram(path).pixels, expected)


def test_monochrome1_is_inverted_across_the_voi_lut_output(tmp_path):
    stored = ramp()
    lut = np.arange(4096, dtype=np.uint16) * 16
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, photometric="MONOCHROME1", bits_stored=12, VOILUTSequence=[voi_lut_item(lut)]
    )

    np.testing.assert_array_equal(read_mammogram(path).pixels, 65535 - 16.0 * stored)


def test_unusable_window_is_skipped_with_a_warning(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, WindowCenter=2000, WindowWidth=0)

    with pytest.warns(HeaderWarning, match="window"):
        mammogram = read_mammogram(path)

    np.testing.assert_array_equal(mammogram.pixels, pixels)


def test_for_processing_image_keeps_its_raw_values_and_says_so(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, presentation_intent="FOR PROCESSING")

    mammogram = read_mammogram(path)

    assert mammogram.header["PresentationIntentType"] == "FOR PROCESSING"
    assert mammogram.header["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.1.2.1"
    np.testing.assert_array_equal(mammogram.pixels, pixels)


def test_presentation_intent_is_taken_from_the_sop_class_when_missing(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, presentation_intent="FOR PROCESSING", PresentationIntentType=None
    )

    assert read_mammogram(path).header["PresentationIntentType"] == "FOR PROCESSING"


# -- spacing -----------------------------------------------------------------------------------------------------
def test_imager_pixel_spacing_is_preferred_over_pixel_spacing(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, ImagerPixelSpacing=[0.07, 0.065], PixelSpacing=[0.065, 0.06]
    )

    assert read_mammogram(path).spacing == pytest.approx((0.07, 0.065))


def test_spacing_of_a_downsampled_copy_is_kept(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ImagerPixelSpacing=[1.12, 1.12])

    assert read_mammogram(path).spacing == pytest.approx((1.12, 1.12))


def test_pixel_spacing_is_used_without_imager_pixel_spacing(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ImagerPixelSpacing=None, PixelSpacing=[0.05, 0.05])

    assert read_mammogram(path).spacing == pytest.approx((0.05, 0.05))


def test_spacing_is_none_when_the_file_has_none(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ImagerPixelSpacing=None)

    assert read_mammogram(path).spacing is None


# zero, negative, micrometres or centimetres written as millimetres, one value instead of two
@pytest.mark.parametrize("spacing", [[0.0, 0.0], [-0.1, -0.1], [70.0, 70.0], [0.007, 0.007], [0.1]])
def test_implausible_spacing_is_dropped_with_a_warning(tmp_path, pixels, spacing):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ImagerPixelSpacing=spacing)

    with pytest.warns(HeaderWarning, match="ImagerPixelSpacing"):
        mammogram = read_mammogram(path)

    assert mammogram.spacing is None
    np.testing.assert_array_equal(mammogram.pixels, pixels)


def test_implausible_imager_spacing_falls_back_to_pixel_spacing(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ImagerPixelSpacing=[0, 0], PixelSpacing=[0.085, 0.085])

    with pytest.warns(HeaderWarning):
        assert read_mammogram(path).spacing == pytest.approx((0.085, 0.085))


# -- laterality and view -----------------------------------------------------------------------------------------
def test_image_laterality_wins_over_series_laterality(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ImageLaterality="R", Laterality="L")

    assert read_mammogram(path).laterality == "R"


def test_series_laterality_is_used_without_image_laterality(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, ImageLaterality=None, Laterality="R", PatientOrientation=None
    )

    assert read_mammogram(path).laterality == "R"


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (["A", "R"], "L"),  # left CC as hung
        (["P", "L"], "R"),  # right CC as hung
        (["A", "FR"], "L"),  # left MLO
        (["P", "FL"], "R"),  # right MLO
        (["P", "R"], "L"),  # left CC stored mirrored (chest wall on the right)
        (["A", "L"], "R"),  # right CC stored mirrored
        (["A", "F"], "L"),  # left true lateral: no left-right axis, chest wall on the left
        (["P", "F"], "R"),
        (["F", "H"], None),
    ],
)
def test_laterality_is_read_from_patient_orientation(tmp_path, pixels, orientation, expected):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ImageLaterality=None, PatientOrientation=orientation)

    assert read_mammogram(path).laterality == expected


def test_both_breasts_laterality_is_unknown(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ImageLaterality="B")

    assert read_mammogram(path).laterality is None


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower case is what some converters write
def test_view_position_is_the_view(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, ViewPosition="mlo")

    assert read_mammogram(path).view == "MLO"


@pytest.mark.parametrize(
    "code, scheme, expected",
    [
        ("399162004", "SCT", "CC"),
        ("399368009", "SCT", "MLO"),
        ("399260004", "SCT", "ML"),
        ("399192008", "SCT", "XCCL"),
        ("R-10242", "SRT", "CC"),
        ("R-10226", "SRT", "MLO"),
        ("R-10224", "SRT", "ML"),
        ("R-10228", "SRT", "LM"),
        ("R-1024A", "SRT", "XCCL"),
        ("123456", "99LOCAL", None),
    ],
)
def test_view_is_read_from_the_view_code_sequence(tmp_path, pixels, code, scheme, expected):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, ViewPosition=None, ViewCodeSequence=[code_item(code, scheme)]
    )

    assert read_mammogram(path).view == expected


# -- header ------------------------------------------------------------------------------------------------------
def test_header_holds_plain_python_values(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, bits_stored=12)

    header = read_mammogram(path).header

    assert header["KVP"] == 29.0 and type(header["KVP"]) is float
    assert header["BodyPartThickness"] == 52.0 and header["CompressionForce"] == 110.0
    assert header["PatientAge"] == "056Y"
    assert header["BitsStored"] == 12 and type(header["BitsStored"]) is int
    assert header["Manufacturer"] == "TestVendor" and type(header["Manufacturer"]) is str
    assert header["ImagerPixelSpacing"] == [0.1, 0.1]
    assert header["PatientOrientation"] == ["A", "R"]
    assert header["Modality"] == "MG" and header["PhotometricInterpretation"] == "MONOCHROME2"
    assert json.loads(json.dumps(header)) == header


@pytest.mark.parametrize(
    "keyword, value", [("KVP", 900.0), ("KVP", 0.0), ("BodyPartThickness", -5.0), ("CompressionForce", 5000.0)]
)
def test_implausible_acquisition_value_is_dropped_with_a_warning(tmp_path, pixels, keyword, value):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, **{keyword: value})

    with pytest.warns(HeaderWarning, match=keyword):
        mammogram = read_mammogram(path)

    assert keyword not in mammogram.header
    assert mammogram.header["Manufacturer"] == "TestVendor"
    np.testing.assert_array_equal(mammogram.pixels, pixels)


def test_unparseable_header_value_is_dropped_with_a_warning(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, KVP="29")
    spoil_decimal_string(path, 0x0018, 0x0060, b"29")

    with pytest.warns(HeaderWarning, match="KVP"):
        mammogram = read_mammogram(path)

    assert "KVP" not in mammogram.header
    np.testing.assert_array_equal(mammogram.pixels, pixels)


def test_unusable_voi_lut_is_skipped_with_a_warning(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, VOILUTSequence=[voi_lut_item(np.arange(4096), bits=9)]
    )  # PS3.3 allows 8 or 10-16 bits per LUT entry

    with pytest.warns(HeaderWarning, match="VOI LUT"):
        mammogram = read_mammogram(path)

    np.testing.assert_array_equal(mammogram.pixels, pixels)


@pytest.mark.parametrize("modality, body_part", [("DX", "BREAST"), ("DX", None), ("CR", "BREAST")])
def test_projection_radiographs_of_the_breast_are_accepted(tmp_path, pixels, modality, body_part):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, Modality=modality, BodyPartExamined=body_part, SOPClassUID=DIGITAL_X_RAY
    )

    mammogram = read_mammogram(path)

    assert mammogram.header["Modality"] == modality
    np.testing.assert_array_equal(mammogram.pixels, pixels)


# -- header-only reading -----------------------------------------------------------------------------------------
def test_header_reading_gives_the_facts_of_a_full_read_without_the_pixels(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, transfer_syntax=JPEG2000Lossless, ViewPosition=None,
        ViewCodeSequence=[code_item("399368009")], ImageLaterality=None, PatientOrientation=["P", "FL"],
    )  # fmt: skip

    dataset, mammogram = read_dicom_header(path), read_mammogram(path)

    assert "PixelData" not in dataset
    assert header_fields(dataset, path) == mammogram.header
    assert (laterality(dataset), view(dataset), pixel_spacing(dataset, path)) == ("R", "MLO", (0.1, 0.1))
    assert (mammogram.laterality, mammogram.view, mammogram.spacing) == ("R", "MLO", (0.1, 0.1))


@pytest.mark.parametrize(
    "header, problem",
    [
        ({"Modality": "CT"}, "not a mammogram"),
        ({"NumberOfFrames": 5}, "5 frames"),
        ({"BitsStored": 20}, "BitsStored 20"),
    ],
)
def test_header_reading_refuses_what_the_header_already_rules_out(tmp_path, pixels, header, problem):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, **header)

    with pytest.raises(MammoXAIError, match=problem):
        read_dicom_header(path)
