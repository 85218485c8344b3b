"""Reading PNG, TIFF and PGM mammograms: exact 8 / 16-bit values, grayscale only, no header."""

import struct
import zlib

import numpy as np
import pytest
from dicom_factory import write_mammo_dicom
from PIL import Image

from mammoxai.errors import MammoXAIError
from mammoxai.io import read_mammogram, read_mask

SHAPE = (64, 48)


def random_image(dtype):
    high = np.iinfo(dtype).max + 1
    return np.random.default_rng(5).integers(0, high, SHAPE).astype(dtype)


def write_tiff(path, pixels, white_is_zero=False, big_endian=False):
    """A baseline uncompressed grayscale TIFF (TIFF 6.0 section 4) with exactly the given stored values, byte
    order and photometric, written by hand so no writer can invert or convert anything on the way."""
    order = ">" if big_endian else "<"
    height, width = pixels.shape
    data = pixels.astype(pixels.dtype.newbyteorder(order)).tobytes()
    short, long = 3, 4
    tags = [  # (tag, type, value), sorted by tag
        (256, long, width), (257, long, height), (258, short, pixels.dtype.itemsize * 8), (259, short, 1),
        (262, short, 0 if white_is_zero else 1), (273, long, 8), (277, short, 1), (278, long, height),
        (279, long, len(data)),
    ]  # fmt: skip
    ifd = struct.pack(order + "H", len(tags))
    for tag, kind, value in tags:
        # a value fits in the 4-byte field and is left-justified in it
        field = struct.pack(order + "HH", value, 0) if kind == short else struct.pack(order + "I", value)
        ifd += struct.pack(order + "HHI", tag, kind, 1) + field
    ifd += struct.pack(order + "I", 0)
    header = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8 + len(data))
    path.write_bytes(header + data + ifd)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif", ".pgm"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grayscale_images_are_read_exactly(tmp_path, suffix, dtype):
    pixels = random_image(dtype)
    path = tmp_path / f"image{suffix}"
    Image.fromarray(pixels).save(path)

    mammogram = read_mammogram(path)

    assert mammogram.pixels.dtype == np.float32
    np.testing.assert_array_equal(mammogram.pixels, pixels)
    assert mammogram.value_range == (0.0, float(np.iinfo(dtype).max))


def test_raster_images_carry_no_geometry_or_header(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(random_image(np.uint16)).save(path)

    mammogram = read_mammogram(path)

    assert (mammogram.spacing, mammogram.laterality, mammogram.view, mammogram.header) == (None, None, None, {})
    assert mammogram.source == str(path)


@pytest.mark.parametrize("big_endian", [False, True])
def test_16_bit_tiff_in_either_byte_order_is_read_exactly(tmp_path, big_endian):
    pixels = random_image(np.uint16)
    path = write_tiff(tmp_path / "image.tif", pixels, big_endian=big_endian)

    np.testing.assert_array_equal(read_mammogram(path).pixels, pixels)


def test_deflate_compressed_tiff_is_read_exactly(tmp_path):
    pixels = random_image(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deflate.tif", compression="tiff_adobe_deflate")
    assert Image.open(tmp_path / "deflate.tif").info["compression"] == "tiff_adobe_deflate"

    np.testing.assert_array_equal(read_mammogram(tmp_path / "deflate.tif").pixels, pixels)


def test_float_tiff_is_read(tmp_path):
    pixels = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    Image.fromarray(pixels).save(tmp_path / "float.tif")

    np.testing.assert_array_equal(read_mammogram(tmp_path / "float.tif").pixels, pixels)
    assert read_mammogram(tmp_path / "float.tif").value_range is None  # a float file fixes no range


def test_plain_text_pgm_is_read(tmp_path):
    path = tmp_path / "plain.pgm"
    path.write_text("P2\n# mini-MIAS style\n3 2\n65535\n0 1000 65535\n5 6 7\n")

    np.testing.assert_array_equal(read_mammogram(path).pixels, [[0, 1000, 65535], [5, 6, 7]])


def test_pgm_with_a_12_bit_maximum_is_stretched_linearly(tmp_path):
    pixels = random_image(np.uint16) % 4096
    path = tmp_path / "twelve.pgm"
    path.write_bytes(b"P5\n48 64\n4095\n" + pixels.astype(">u2").tobytes())

    np.testing.assert_allclose(read_mammogram(path).pixels, pixels * (65535 / 4095), atol=0.5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_white_is_zero_tiff_is_inverted(tmp_path, dtype):
    stored = random_image(dtype)
    path = write_tiff(tmp_path / "inverted.tif", stored, white_is_zero=True)

    np.testing.assert_array_equal(read_mammogram(path).pixels, np.iinfo(dtype).max - stored)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_grayscale_saved_as_colour_is_read_exactly(tmp_path, mode):
    pixels = random_image(np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(pixels).convert(mode).save(path)
    assert Image.open(path).mode == mode

    np.testing.assert_array_equal(read_mammogram(path).pixels, pixels)


def write_png(path, samples, colour_type):
    """A 16-bit PNG of (H, W, channels) ``samples`` in PNG ``colour_type`` (2 RGB, 4 gray + alpha, 6 RGBA), written
    by hand: Pillow cannot write 16-bit colour, but data sets converted with OpenCV or ImageMagick ship it."""
    height, width, _ = samples.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)  # filter type 0 on every row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(("colour_type", "gray", "alpha"), [(2, 3, 0), (6, 3, 1), (4, 1, 1)], ids=["RGB", "RGBA", "LA"])
def test_16_bit_colour_png_is_refused_not_read_with_its_low_byte_dropped(tmp_path, colour_type, gray, alpha):
    """Pillow reads 16-bit colour with 8 bits per channel: a grayscale mammogram saved that way lost 8 of its bits."""
    pixels = random_image(np.uint16)
    samples = np.stack([pixels] * gray + [np.full(SHAPE, 65535, np.uint16)] * alpha, axis=-1)
    path = write_png(tmp_path / "gray16_as_colour.png", samples, colour_type)

    with pytest.raises(MammoXAIError, match="gray16_as_colour.png: is a 16-bit PNG .*save it as 16-bit grayscale"):
        read_mammogram(path)


def test_colour_image_is_refused(tmp_path):
    rgb = np.stack([random_image(np.uint8)] * 3, axis=-1)
    rgb[10:20, 10:20] = (255, 0, 0)  # a red annotation burned in
    path = tmp_path / "annotated.png"
    Image.fromarray(rgb).save(path)

    with pytest.raises(MammoXAIError, match="colour image"):
        read_mammogram(path)


def test_transparent_image_is_refused(tmp_path):
    rgba = np.stack([random_image(np.uint8)] * 3 + [np.full(SHAPE, 255, np.uint8)], axis=-1)
    rgba[:5, :5, 3] = 0
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba).save(path)

    with pytest.raises(MammoXAIError, match="transparent"):
        read_mammogram(path)


def test_black_and_white_image_is_refused(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(random_image(np.uint8) > 128).save(path)

    with pytest.raises(MammoXAIError, match="1-bit"):
        read_mammogram(path)


def test_multi_page_tiff_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    page = Image.fromarray(random_image(np.uint16))
    page.save(path, save_all=True, append_images=[page])

    with pytest.raises(MammoXAIError, match="2 pages.*only 2D mammograms"):
        read_mammogram(path)


def test_content_not_the_name_chooses_the_reader(tmp_path):
    pixels = random_image(np.uint16) % 4096
    png_named_dcm = tmp_path / "really_png.dcm"
    Image.fromarray(pixels).save(png_named_dcm, format="PNG")
    dicom_named_png = write_mammo_dicom(tmp_path / "really_dicom.png", pixels)

    as_png, as_dicom = read_mammogram(png_named_dcm), read_mammogram(dicom_named_png)

    np.testing.assert_array_equal(as_png.pixels, pixels)
    assert as_png.header == {}
    np.testing.assert_array_equal(as_dicom.pixels, pixels)
    assert as_dicom.header["Modality"] == "MG"


# -- lesion masks ---------------------------------------------------------------------------------------------------
def lesion_mask() -> np.ndarray:
    inside = np.zeros(SHAPE, bool)
    inside[5:15, 20:30] = True
    return inside


@pytest.mark.parametrize(
    "to_image",
    [
        lambda inside: Image.fromarray(inside),  # 1-bit, refused as a mammogram
        lambda inside: Image.fromarray(inside.astype(np.uint8) * 255),
        # gray in R, G, B with an opaque alpha channel: read as a fourth channel, every pixel was inside
        lambda inside: Image.fromarray(np.dstack([inside * 255] * 3 + [np.full(SHAPE, 255)]).astype(np.uint8)),
    ],
    ids=["1-bit", "gray", "opaque-rgba"],
)
def test_a_raster_lesion_mask_is_its_non_zero_gray_pixels(tmp_path, to_image):
    to_image(lesion_mask()).save(tmp_path / "mask.png")

    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), lesion_mask())


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_dicom_lesion_mask_is_its_non_zero_stored_values_whatever_its_modality(tmp_path, photometric):
    stored = lesion_mask().astype(np.uint8) * 255  # MONOCHROME1 would show it inverted: the stored values count
    path = write_mammo_dicom(tmp_path / "1-2.dcm", stored, photometric=photometric, Modality="OT")

    np.testing.assert_array_equal(read_mask(path), lesion_mask())


def test_a_colour_lesion_mask_is_refused(tmp_path):
    red = np.zeros((*SHAPE, 3), np.uint8)
    red[lesion_mask()] = (255, 0, 0)
    Image.fromarray(red).save(tmp_path / "mask.png")

    with pytest.raises(MammoXAIError, match="mask.png: is a colour image"):
        read_mask(tmp_path / "mask.png")
