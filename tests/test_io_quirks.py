"""Reading the DICOM quirks real mammography archives contain: each file is written as a vendor or converter
writes it, then read as a user would, and the pixels and facts are checked against what the quirk means."""

import numpy as np
import pytest

from dicom_factory import write_mammo_dicom
from mammoxai.io import read_mammogram

SHAPE = (16, 24)


@pytest.fixture
def pixels():
    """12-bit detector values, random so that any mix-up of pixels shows."""
    return np.random.default_rng(11).integers(0, 4096, SHAPE).astype(np.uint16)


# -- stored values -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [10, 12, 14])
def test_undefined_bits_above_bits_stored_are_ignored(tmp_path, bits):
    values = np.random.default_rng(bits).integers(0, 2**bits, SHAPE).astype(np.uint16)
    garbage = np.random.default_rng(0).integers(0, 2 ** (16 - bits), SHAPE).astype(np.uint16) << bits
    path = write_mammo_dicom(tmp_path / "image.dcm", values | garbage, bits_stored=bits)

    np.testing.assert_array_equal(read_mammogram(path).pixels, values)


@pytest.mark.parametrize("high_bits", [0x0000, 0xF000, 0xA000])
def test_signed_pixels_take_their_sign_from_the_high_bit(tmp_path, high_bits):
    values = np.random.default_rng(3).integers(-2048, 2048, SHAPE).astype(np.int16)
    stored = (values.view(np.uint16) & 0x0FFF) | high_bits  # 12-bit two's complement, other bits undefined
    path = write_mammo_dicom(tmp_path / "image.dcm", stored.view(np.int16), bits_stored=12)

    np.testing.assert_array_equal(read_mammogram(path).pixels, values)

