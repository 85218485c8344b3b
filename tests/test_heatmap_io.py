"""Heatmap NRRD files: same grid as the image for pynrrd and for ITK (the reader 3D Slicer uses)."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (SimpleITK's documented alias)

from mammoxai.errors import MammoXAIError
from mammoxai.io.heatmap import DEFAULT_SPACING_MM, read_heatmap_nrrd, write_heatmap_nrrd
from mammoxai.io.mammogram import Mammogram

ROWS, COLUMNS = 30, 20
ROW_MM, COLUMN_MM = 0.1, 0.2  # anisotropic, so a swapped axis cannot pass


@pytest.fixture
def mammogram() -> Mammogram:
    return Mammogram(pixels=np.zeros((ROWS, COLUMNS), np.float32), spacing=(ROW_MM, COLUMN_MM), source="case.dcm")


@pytest.fixture
def heatmap() -> np.ndarray:
    # distinct values everywhere: any transposition or mirroring changes the array
    return np.arange(ROWS * COLUMNS, dtype=np.float32).reshape(ROWS, COLUMNS) / (ROWS * COLUMNS)


def test_round_trip_keeps_values_shape_and_spacing(tmp_path, mammogram, heatmap):
    path = write_heatmap_nrrd(tmp_path / "out" / "case_heatmap.nrrd", heatmap, mammogram)
    data, spacing = read_heatmap_nrrd(path)
    assert path.is_file()
    assert data.dtype == np.float32
    assert np.array_equal(data, heatmap)
    assert spacing == (ROW_MM, COLUMN_MM)


def test_nrrd_lists_columns_first_as_the_format_requires(tmp_path, mammogram, heatmap):
    path = write_heatmap_nrrd(tmp_path / "case_heatmap.nrrd", heatmap, mammogram)
    data, header = nrrd.read(str(path), index_order="C")
    assert data.shape == (ROWS, COLUMNS)
    assert list(header["sizes"]) == [COLUMNS, ROWS]
    assert np.allclose(header["space directions"], [[COLUMN_MM, 0.0], [0.0, ROW_MM]])
    assert header["type"] == "float"


def test_itk_sees_the_image_grid(tmp_path, mammogram, heatmap):
    path = write_heatmap_nrrd(tmp_path / "case_heatmap.nrrd", heatmap, mammogram)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (COLUMNS, ROWS)
    assert image.GetSpacing() == pytest.approx((COLUMN_MM, ROW_MM))
    assert image.GetOrigin() == (0.0, 0.0)
    assert np.array_equal(sitk.GetArrayFromImage(image), heatmap)


def test_unknown_spacing_is_written_as_one_millimetre(tmp_path, mammogram, heatmap):
    mammogram.spacing = None
    _, spacing = read_heatmap_nrrd(write_heatmap_nrrd(tmp_path / "h.nrrd", heatmap, mammogram))
    assert spacing == (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM) == (1.0, 1.0)


def test_extra_fields_are_stored_in_the_header(tmp_path, mammogram, heatmap):
    path = write_heatmap_nrrd(tmp_path / "h.nrrd", heatmap, mammogram, fields={"mammoxai_target_class": "malignant"})
    assert nrrd.read_header(str(path))["mammoxai_target_class"] == "malignant"


def test_heatmap_of_another_shape_is_refused(tmp_path, mammogram):
    with pytest.raises(ValueError, match=r"heatmap shape \(20, 30\) differs from the image shape \(30, 20\)"):
        write_heatmap_nrrd(tmp_path / "h.nrrd", np.zeros((COLUMNS, ROWS)), mammogram)


def test_reading_a_missing_file_names_it(tmp_path):
    with pytest.raises(MammoXAIError, match="missing.nrrd: no such heatmap file"):
        read_heatmap_nrrd(tmp_path / "missing.nrrd")


def test_reading_a_file_that_is_not_nrrd_is_refused(tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("not a heatmap")
    with pytest.raises(MammoXAIError, match="notes.nrrd: is not a readable NRRD file"):
        read_heatmap_nrrd(path)


def test_reading_a_volume_is_refused(tmp_path):
    path = tmp_path / "volume.nrrd"
    nrrd.write(str(path), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(MammoXAIError, match="holds a 3-D image, expected a 2-D heatmap"):
        read_heatmap_nrrd(path)
