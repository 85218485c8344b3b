"""Reading the DICOM quirks real mammography archives contain: each file is written as a vendor or converter
writes it, then read as a user would, and the pixels and facts are checked against what the quirk means."""

import numpy as np
import pydicom
import pytest
from dicom_factory import functional_group, voi_lut_item, without_preamble, write_mammo_dicom
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from mammoxai.io import read_mammogram
from mammoxai.io.dicom import header_fields, laterality, pixel_spacing, read_dicom_header

SHAPE = (16, 24)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # how CBIS-DDSM and screen captures are stored
BREAST_PROJECTION_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.13.1.4"  # an enhanced (functional group) IOD


@pytest.fixture
def pixels():
    """12-bit detector values, random so that any mix-up of pixels shows."""
    return np.random.default_rng(11).integers(0, 4096, SHAPE).astype(np.uint16)


# -- stored values -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("bits", [10, 12, 14])
def test_undefined_bits_above_bits_stored_are_ignored(tmp_path, bits, syntax):
    values = np.random.default_rng(bits).integers(0, 2**bits, SHAPE).astype(np.uint16)
    garbage = np.random.default_rng(0).integers(0, 2 ** (16 - bits), SHAPE).astype(np.uint16) << bits
    path = write_mammo_dicom(tmp_path / "image.dcm", values | garbage, transfer_syntax=syntax, bits_stored=bits)

    np.testing.assert_array_equal(read_mammogram(path).pixels, values)


@pytest.mark.filterwarnings("ignore:The \\(0028,0101\\) 'Bits Stored' value")  # pydicom notes the mismatch
@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
def test_code_stream_precision_above_an_understated_bits_stored_is_kept(tmp_path, syntax):
    values = np.random.default_rng(2).integers(0, 2**14, (32, 32)).astype(np.uint16)
    path = write_mammo_dicom(
        tmp_path / "image.dcm", values, transfer_syntax=syntax, bits_stored=14, BitsStored=12, HighBit=11
    )

    np.testing.assert_array_equal(read_mammogram(path).pixels, values)


@pytest.mark.parametrize("high_bits", [0x0000, 0xF000, 0xA000])
def test_signed_pixels_take_their_sign_from_the_high_bit(tmp_path, high_bits):
    values = np.random.default_rng(3).integers(-2048, 2048, SHAPE).astype(np.int16)
    stored = (values.view(np.uint16) & 0x0FFF) | high_bits  # 12-bit two's complement, other bits undefined
    path = write_mammo_dicom(tmp_path / "image.dcm", stored.view(np.int16), bits_stored=12)

    np.testing.assert_array_equal(read_mammogram(path).pixels, values)


@pytest.mark.parametrize("descriptor_vr", ["US", "SS"])
def test_voi_lut_of_a_signed_image_starts_at_a_negative_value_whatever_the_descriptor_vr(tmp_path, descriptor_vr):
    values = np.random.default_rng(5).integers(-2048, 2048, SHAPE).astype(np.int16)
    lut = np.arange(4096) // 2
    path = write_mammo_dicom(
        tmp_path / "image.dcm", values, bits_stored=12,
        VOILUTSequence=[voi_lut_item(lut, first_mapped=-2048, bits=12, descriptor_vr=descriptor_vr)],
    )  # fmt: skip

    np.testing.assert_array_equal(read_mammogram(path).pixels, lut[values + 2048])


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lossy_8_bit_jpeg_baseline_is_read_close_to_the_original_and_says_it_is_lossy(tmp_path, photometric):
    smooth = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8) * 4  # lossy JPEG keeps smooth images close
    path = write_mammo_dicom(tmp_path / "image.dcm", smooth, transfer_syntax=JPEGBaseline8Bit, photometric=photometric)
    expected = smooth if photometric == "MONOCHROME2" else 255 - smooth

    mammogram = read_mammogram(path)

    np.testing.assert_allclose(mammogram.pixels, expected, atol=3)
    assert mammogram.header["LossyImageCompression"] == "01"


def test_burned_in_annotation_of_a_secondary_capture_is_in_the_header(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, SOPClassUID=SECONDARY_CAPTURE, BurnedInAnnotation="YES", ImagerPixelSpacing=None
    )

    mammogram = read_mammogram(path)

    np.testing.assert_array_equal(mammogram.pixels, pixels)
    assert (mammogram.header["BurnedInAnnotation"], mammogram.spacing) == ("YES", None)


# -- pixel padding -----------------------------------------------------------------------------------------------
def test_monochrome1_padding_at_the_white_end_is_black(tmp_path, pixels):
    stored = np.clip(pixels, 1, None)
    stored[:, -4:] = 0
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, photometric="MONOCHROME1", bits_stored=12, PixelPaddingValue=0
    )
    expected = 4095.0 - stored
    expected[:, -4:] = 0.0

    np.testing.assert_array_equal(read_mammogram(path).pixels, expected)


def test_padding_range_is_black_after_rescale_and_window(tmp_path, pixels):
    stored = np.clip(pixels, 0, 3999)
    stored[:3] = np.arange(4000, 4000 + SHAPE[1])  # padding anywhere in 4000-4095, at the white end
    path = write_mammo_dicom(
        tmp_path / "image.dcm", stored, bits_stored=12, PixelPaddingValue=4095, PixelPaddingRangeLimit=4000,
        RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000, VOILUTFunction="LINEAR_EXACT",
    )  # fmt: skip
    # the window maps onto the rescaled range [-1000, 3095]; padding goes to its black end
    expected = np.clip((stored - 1000.0 - 1000.0) / 2000.0 + 0.5, 0, 1) * 4095.0 - 1000.0
    expected[:3] = -1000.0

    np.testing.assert_allclose(read_mammogram(path).pixels, expected, atol=1e-3)


# -- file format -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("file_meta", [True, False])
def test_dicom_without_preamble_named_by_its_uid_is_read_as_dicom(tmp_path, pixels, file_meta):
    source = write_mammo_dicom(tmp_path / "source.dcm", pixels)
    path = without_preamble(source, tmp_path / "1.2.840.113619.2.55.3.604688", file_meta=file_meta)
    assert path.read_bytes()[128:132] != b"DICM"

    mammogram = read_mammogram(path)

    np.testing.assert_array_equal(mammogram.pixels, pixels)
    assert (mammogram.laterality, mammogram.view) == ("L", "CC")


# -- enhanced (functional group) images --------------------------------------------------------------------------
def test_one_frame_enhanced_image_takes_its_facts_and_pipeline_from_the_functional_groups(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, bits_stored=12, NumberOfFrames=1,
        SOPClassUID=BREAST_PROJECTION_FOR_PRESENTATION, ImageLaterality=None, PatientOrientation=None,
        ImagerPixelSpacing=None, PresentationIntentType=None,
        SharedFunctionalGroupsSequence=[functional_group(
            FrameAnatomySequence={"FrameLaterality": "R"}, PixelMeasuresSequence={"PixelSpacing": [0.07, 0.065]},
        )],
        PerFrameFunctionalGroupsSequence=[functional_group(
            PixelValueTransformationSequence={"RescaleSlope": 2, "RescaleIntercept": -100, "RescaleType": "US"},
            FrameVOILUTSequence={"WindowCenter": 4000, "WindowWidth": 4000, "VOILUTFunction": "LINEAR_EXACT"},
        )],
    )  # fmt: skip
    # the window maps onto the rescaled range [-100, 8090]
    expected = np.clip((2.0 * pixels - 100 - 4000) / 4000 + 0.5, 0, 1) * 8190 - 100

    mammogram = read_mammogram(path)

    np.testing.assert_allclose(mammogram.pixels, expected, atol=1e-3)
    assert (mammogram.laterality, mammogram.spacing) == ("R", (0.07, 0.065))
    assert mammogram.header["PresentationIntentType"] == "FOR PRESENTATION"
    header = read_dicom_header(path)  # the manifest's header-only scan sees the same facts
    assert (laterality(header), pixel_spacing(header, path)) == ("R", (0.07, 0.065))
    assert header_fields(header, path)["RescaleSlope"] == 2.0


def test_top_level_facts_win_over_the_functional_groups(tmp_path, pixels):
    path = write_mammo_dicom(
        tmp_path / "image.dcm", pixels, NumberOfFrames=1, ImageLaterality="L",
        SharedFunctionalGroupsSequence=[functional_group(FrameAnatomySequence={"FrameLaterality": "R"})],
    )  # fmt: skip

    assert read_mammogram(path).laterality == "L"


@pytest.mark.parametrize("padding_vr", ["US", "SS"])
def test_padding_of_a_signed_image_is_found_whatever_the_vr_it_was_written_with(tmp_path, padding_vr):
    values = np.random.default_rng(4).integers(-1000, 2048, SHAPE).astype(np.int16)
    values[:, :5] = -2000
    path = write_mammo_dicom(tmp_path / "image.dcm", values, bits_stored=12, PixelPaddingValue=-2000)
    dataset = pydicom.dcmread(path)
    dataset["PixelPaddingValue"].VR = padding_vr  # US: -2000 is written as 63536
    dataset.PixelPaddingValue = -2000 & 0xFFFF if padding_vr == "US" else -2000
    dataset.save_as(path)
    expected = values.astype(np.float32)
    expected[:, :5] = -2048.0  # the black end of the signed 12-bit range

    np.testing.assert_array_equal(read_mammogram(path).pixels, expected)
