"""Bad input: every file that cannot be read as a mammogram gives one MammoXAIError naming the file and why."""

import re

import numpy as np
import pydicom
import pytest
from dicom_factory import element_offset, real_file_as_mammogram, shorten_value, spoil_decimal_string, write_mammo_dicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import decode_data_sequence, encapsulate
from pydicom.pixel_data_handlers import numpy_handler
from pydicom.uid import MPEG2MPML, CTImageStorage, JPEG2000Lossless, MediaStorageDirectoryStorage, RLELossless

from mammoxai.errors import MammoXAIError, check_output_path
from mammoxai.io import Mammogram, iter_mammograms, read_dicom_header, read_mammogram, read_mammograms

SHAPE = (64, 48)
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"  # newer than pydicom 2.4, which has no decoder for it


@pytest.fixture
def pixels():
    return np.random.default_rng(3).integers(0, 4096, SHAPE).astype(np.uint16)


def assert_refused(path, *fragments, read=read_mammogram):
    """``read(path)`` raises a MammoXAIError whose message is one line that starts with the path and holds
    ``fragments``."""
    with pytest.raises(MammoXAIError) as caught:
        read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for fragment in fragments:
        assert re.search(fragment, message), f"{fragment!r} not in {message!r}"
    return caught.value


# -- not an image ------------------------------------------------------------------------------------------------
def test_missing_file_is_refused(tmp_path):
    assert_refused(tmp_path / "nowhere.dcm", "does not exist")


@pytest.mark.parametrize("name", ["empty.dcm", "empty.png", "IM0001"])
def test_empty_file_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"")

    assert_refused(tmp_path / name, r"empty \(0 bytes\)")


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("patient was recalled\n")

    assert_refused(path, "neither DICOM nor a PNG, TIFF or PGM")


def test_text_file_named_like_dicom_is_refused(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_text("this is not DICOM\n" * 20)

    assert_refused(path, "not a DICOM image")


def test_jpeg_is_refused(tmp_path, pixels):
    path = tmp_path / "scan.jpg"
    Image.fromarray((pixels // 16).astype(np.uint8)).save(path)

    assert_refused(path, "neither DICOM nor")


@pytest.mark.parametrize("read", [read_mammogram, read_dicom_header], ids=["image", "header_only"])
def test_dicomdir_is_refused_as_the_directory_of_a_media_set(read):
    """A CD or USB export's DICOMDIR, which users open as the study, was refused as a file that is no image."""
    path = get_testdata_file("DICOMDIR")  # pydicom's: a real media set's directory of patients, studies and images

    assert_refused(
        path, "is a DICOMDIR", "media set", re.escape(MediaStorageDirectoryStorage), "image files", read=read
    )


# -- damaged files -----------------------------------------------------------------------------------------------
def test_truncated_uncompressed_dicom_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "cut.dcm", pixels)
    path.write_bytes(path.read_bytes()[:-1000])

    assert_refused(path, "bytes of pixel data", "truncated")


def test_truncated_compressed_dicom_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "cut.dcm", pixels, transfer_syntax=JPEG2000Lossless)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])

    with pytest.warns(UserWarning, match="End of file"):  # pydicom drops the unterminated pixel data
        assert_refused(path, "no pixel data", "truncated")


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_corrupt_compressed_pixel_data_is_refused(tmp_path, pixels, syntax):
    path = write_mammo_dicom(tmp_path / "corrupt.dcm", pixels, transfer_syntax=syntax)
    dataset = pydicom.dcmread(path)
    frame = bytearray(decode_data_sequence(dataset.PixelData)[0])
    frame[:8] = b"\x0f" * 8  # the JPEG 2000 SIZ marker / the RLE segment table
    dataset.PixelData = encapsulate([bytes(frame)])
    dataset.save_as(path)

    assert_refused(path, "cannot be decoded", "damaged")


def test_dicom_cut_inside_its_header_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "cut.dcm", pixels)
    path.write_bytes(path.read_bytes()[:600])

    assert_refused(path, "no pixel data")


BITS_STORED, PIXEL_PADDING_VALUE = (0x0028, 0x0101), (0x0028, 0x0120)


@pytest.mark.parametrize(
    "read, tag",
    [(read_mammogram, BITS_STORED), (read_dicom_header, BITS_STORED), (read_mammogram, PIXEL_PADDING_VALUE)],
    ids=["bits_stored", "bits_stored_header_only", "pixel_padding_value"],
)
def test_element_the_reader_uses_with_a_value_of_the_wrong_length_is_refused(tmp_path, read, tag):
    """pydicom parses a value when it is first used and raised its BytesLengthException there: a 500 on upload."""
    path = real_file_as_mammogram(tmp_path)
    shorten_value(path, tag)

    assert_refused(path, "header element that cannot be parsed", re.escape(str(pydicom.tag.Tag(tag))), read=read)


def test_a_damaged_element_is_named_for_the_user_without_the_bytes_pydicom_quotes(tmp_path):
    path = real_file_as_mammogram(tmp_path)
    shorten_value(path, BITS_STORED)

    error = assert_refused(path, re.escape("(0028, 0101) BitsStored: a value of the wrong length for its VR US"))
    assert "b'" not in str(error) and "config" not in str(error)


def test_header_cut_inside_an_element_the_header_scan_reads_is_refused(tmp_path):
    path = real_file_as_mammogram(tmp_path)
    path.write_bytes(path.read_bytes()[: element_offset(path, BITS_STORED) + 9])  # one byte of Bits Stored's two

    assert_refused(path, "header element that cannot be parsed", read=read_dicom_header)
    assert_refused(path, "no pixel data")


def test_private_element_of_the_wrong_length_the_reader_does_not_use_refuses_nothing(tmp_path):
    path = real_file_as_mammogram(tmp_path)
    shorten_value(path, (0x0043, 0x1010))  # a GE private US

    assert read_mammogram(path).shape == (128, 128)


def test_truncated_png_is_refused(tmp_path, pixels):
    path = tmp_path / "cut.png"
    Image.fromarray(pixels).save(path)
    path.write_bytes(path.read_bytes()[:200])

    assert_refused(path, "not a readable PNG, TIFF or PGM")


# -- not a 2D mammogram ------------------------------------------------------------------------------------------
def test_dicom_without_pixel_data_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "header.dcm", pixels, PixelData=None)

    assert_refused(path, "no pixel data")


def test_ct_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "ct.dcm", pixels.astype(np.int16), Modality="CT", SOPClassUID=CTImageStorage)

    assert_refused(path, r"not a mammogram \(Modality CT", "MG")


def test_chest_radiograph_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "chest.dcm", pixels, Modality="DX", BodyPartExamined="CHEST")

    assert_refused(path, "not a mammogram", "BodyPartExamined CHEST")


def test_tomosynthesis_volume_is_refused(tmp_path, pixels):
    volume = np.stack([pixels] * 3)
    path = write_mammo_dicom(tmp_path / "dbt.dcm", volume, SOPClassUID="1.2.840.10008.5.1.4.1.1.13.1.3")

    assert_refused(path, "3 frames", "tomosynthesis", "only 2D mammograms are supported")


@pytest.mark.parametrize("rows, columns", [(0, 48), (64, 0)])
def test_zero_size_image_is_refused(tmp_path, pixels, rows, columns):
    path = write_mammo_dicom(tmp_path / "empty.dcm", pixels, Rows=rows, Columns=columns)

    assert_refused(path, "empty image", f"Rows {rows}, Columns {columns}")


def test_colour_dicom_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "rgb.dcm", pixels, PhotometricInterpretation="RGB", SamplesPerPixel=3)

    assert_refused(path, "not grayscale", "RGB")


# -- pixels that cannot be trusted -------------------------------------------------------------------------------
def test_more_than_16_bits_is_refused(tmp_path, pixels):
    wide = pixels.astype(np.uint32) << 8
    path = write_mammo_dicom(
        tmp_path / "wide.dcm", pixels, BitsAllocated=32, BitsStored=24, HighBit=23, PixelData=wide.tobytes()
    )

    assert_refused(path, "BitsAllocated 32 / BitsStored 24", "cannot be interpreted")


def test_bits_stored_above_bits_allocated_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "bits.dcm", pixels, BitsStored=20)

    assert_refused(path, "BitsStored 20")


def test_header_size_that_does_not_match_the_pixel_data_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "rows.dcm", pixels, Rows=32)

    assert_refused(path, "6144 bytes of pixel data", "Rows 32", "need 3072", "header is wrong")


def test_header_size_that_does_not_match_compressed_pixels_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "rows.dcm", pixels, transfer_syntax=JPEG2000Lossless, Rows=128)

    assert_refused(path, "cannot be decoded")


def test_unparseable_rescale_is_refused(tmp_path, pixels):
    path = write_mammo_dicom(tmp_path / "image.dcm", pixels, RescaleSlope="2", RescaleIntercept="0")
    spoil_decimal_string(path, 0x0028, 0x1053, b"2 ")

    assert_refused(path, "rescale that cannot be applied")


def write_undecodable(path, pixels, syntax):
    """A mammogram whose pixel data claims ``syntax``. pydicom 2.4 cannot write syntaxes newer than itself, so
    the file is written as MPEG-2 (a UID of the same length) and the UID is patched in the bytes."""
    dataset = pydicom.dcmread(write_mammo_dicom(path, pixels))
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([b"\xff\x0a" + bytes(100)])  # a JPEG XL codestream starts with FF 0A
    dataset["PixelData"].is_undefined_length = True
    dataset.save_as(path)
    assert len(syntax) == len(MPEG2MPML)
    path.write_bytes(path.read_bytes().replace(MPEG2MPML.encode(), syntax.encode()))
    return path


@pytest.mark.parametrize("syntax, name", [(JPEG_XL_LOSSLESS, "unknown"), (MPEG2MPML, "MPEG2")])
def test_transfer_syntax_no_installed_decoder_reads_is_refused(tmp_path, pixels, syntax, name):
    path = write_undecodable(tmp_path / "undecodable.dcm", pixels, syntax)

    error = assert_refused(path, name, re.escape(syntax), "no installed decoder")
    assert "convert it" in error.fix


def test_missing_decoder_plugin_is_named(tmp_path, pixels, monkeypatch):
    path = write_mammo_dicom(tmp_path / "j2k.dcm", pixels, transfer_syntax=JPEG2000Lossless)
    monkeypatch.setattr(pydicom.config, "pixel_data_handlers", [numpy_handler])  # an install without the plugins

    assert_refused(path, "JPEG 2000", "install the pylibjpeg-openjpeg package")


# -- many files --------------------------------------------------------------------------------------------------
def write_mixed_folder(folder, pixels):
    good_dicom = write_mammo_dicom(folder / "a.dcm", pixels)
    text = folder / "b.txt"
    text.write_text("not an image")
    good_png = folder / "c.png"
    Image.fromarray(pixels).save(good_png)
    ct = write_mammo_dicom(folder / "d.dcm", pixels, Modality="CT")
    return [good_dicom, text, good_png, ct]


def test_read_mammograms_collects_errors_and_reads_the_rest(tmp_path, pixels):
    paths = write_mixed_folder(tmp_path, pixels)

    mammograms, errors = read_mammograms(paths)

    assert [m.source for m in mammograms] == [str(paths[0]), str(paths[2])]
    assert [e.source for e in errors] == [str(paths[1]), str(paths[3])]
    assert "Modality CT" in str(errors[1])


def test_iter_mammograms_yields_a_result_per_file_in_order(tmp_path, pixels):
    paths = write_mixed_folder(tmp_path, pixels)

    results = list(iter_mammograms(paths))

    assert [type(r) for r in results] == [Mammogram, MammoXAIError, Mammogram, MammoXAIError]
    np.testing.assert_array_equal(results[2].pixels, pixels)


def test_an_existing_output_file_is_refused_unless_overwrite_and_a_bad_word_always(tmp_path):
    out = tmp_path / "manifest.csv"
    out.write_text("labelled\n")
    with pytest.raises(
        MammoXAIError,
        match=r"--out .*manifest\.csv: already exists \(pass --overwrite to replace it, or another --out\)",
    ):
        check_output_path(out, "--out", "give a CSV", folder=False, overwrite=False)
    assert check_output_path(out, "--out", "give a CSV", folder=False, overwrite="true") == out
    assert check_output_path(out, "--out", "give a CSV", folder=False) == out  # not asked: the caller decides
    with pytest.raises(MammoXAIError, match="overwrite: is 'perhaps', not a boolean"):
        check_output_path(tmp_path / "new.csv", "--out", "give a CSV", folder=False, overwrite="perhaps")
