"""ImageGeometry maps points, boxes and images to the model grid and back exactly."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mammoxai.errors import MammoXAIError
from mammoxai.io.geometry import ImageGeometry

FAST = settings(max_examples=50, deadline=None)


@st.composite
def geometries(draw, max_size: int = 300) -> ImageGeometry:
    height, width = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    y0, y1 = sorted(draw(st.lists(st.integers(0, height), min_size=2, max_size=2, unique=True)))
    x0, x1 = sorted(draw(st.lists(st.integers(0, width), min_size=2, max_size=2, unique=True)))
    output = (draw(st.integers(1, max_size)), draw(st.integers(1, max_size)))
    return ImageGeometry((height, width), (y0, x0, y1, x1), draw(st.booleans()), output)


def reach(geometry: ImageGeometry) -> tuple[float, float]:
    """(x, y) distance, in original pixels, over which one resampling pass smears a value.

    Bilinear upsampling reaches one source pixel; antialiased downsampling a triangle one output pixel wide.
    """
    sx, sy = geometry.scale
    return max(1.0, 1.0 / sx), max(1.0, 1.0 / sy)


def pixel_centres(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) continuous coordinates of every pixel centre of an image of ``shape``."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    return columns + 0.5, rows + 0.5


# -- points and boxes -----------------------------------------------------------------------------------------
@FAST
@given(geometries(), st.lists(st.tuples(st.floats(-50, 350), st.floats(-50, 350)), min_size=1, max_size=8))
def test_points_round_trip_through_the_model_grid(geometry, points):
    points = np.array(points)
    tolerance = 1e-9 * max(geometry.original_shape + geometry.output_shape)
    back = geometry.to_original_points(geometry.to_model_points(points))
    np.testing.assert_allclose(back, points, rtol=1e-9, atol=tolerance)


@FAST
@given(geometries())
def test_crop_corners_land_on_model_grid_corners(geometry):
    y0, x0, y1, x1 = geometry.crop
    h, w = geometry.output_shape
    mapped = geometry.to_model_points([(x0, y0), (x1, y1)])
    expected = [(w, 0), (0, h)] if geometry.flip else [(0, 0), (w, h)]
    np.testing.assert_allclose(mapped, expected, atol=1e-9 * max(h, w))


@FAST
@given(geometries(), st.data())
def test_boxes_round_trip_and_stay_ordered(geometry, data):
    height, width = geometry.original_shape
    xs = sorted(data.draw(st.lists(st.floats(0, width), min_size=2, max_size=2)))
    ys = sorted(data.draw(st.lists(st.floats(0, height), min_size=2, max_size=2)))
    box = np.array([[xs[0], ys[0], xs[1], ys[1]]])
    model_box = geometry.to_model_boxes(box)
    assert model_box[0, 0] <= model_box[0, 2] and model_box[0, 1] <= model_box[0, 3]
    np.testing.assert_allclose(geometry.to_original_boxes(model_box), box, rtol=1e-9, atol=1e-9 * max(height, width))


def test_flip_mirrors_points_inside_the_crop():
    geometry = ImageGeometry((100, 200), crop=(10, 20, 90, 120), flip=True, output_shape=(80, 100))
    # 10 px right of the crop's left edge → 10 px left of the model grid's right edge, rows shifted by the crop
    np.testing.assert_allclose(geometry.to_model_points([(30.0, 50.0)]), [[90.0, 40.0]])


# -- images ---------------------------------------------------------------------------------------------------
@FAST
@given(geometries(max_size=120), st.floats(-2, 2), st.floats(-2, 2))
def test_restore_of_apply_reproduces_a_smooth_image_inside_the_crop(geometry, slope_x, slope_y):
    x, y = pixel_centres(geometry.original_shape)
    ramp = slope_x * x + slope_y * y
    restored = geometry.restore(geometry.apply(ramp)).numpy()

    # border pixels are resampled from a truncated kernel, so only the interior is compared. There a ramp
    # comes back shifted by at most 0.09 px: the centroid error of a triangle kernel sampled at whole pixels
    y0, x0, y1, x1 = geometry.crop
    rx, ry = reach(geometry)
    interior = (x > x0 + 2 * rx + 1) & (x < x1 - 2 * rx - 1) & (y > y0 + 2 * ry + 1) & (y < y1 - 2 * ry - 1)
    assume(interior.any())
    tolerance = 0.09 * (abs(slope_x) + abs(slope_y)) + 1e-4
    np.testing.assert_allclose(restored[interior], ramp[interior], atol=tolerance)
    outside = np.ones(geometry.original_shape, dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert (restored[outside] == 0).all()


@FAST
@given(geometries(), st.data())
def test_a_delta_on_the_model_grid_restores_where_its_centre_maps(geometry, data):
    h, w = geometry.output_shape
    row, column = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    heatmap = torch.zeros(h, w)
    heatmap[row, column] = 1.0

    restored = geometry.restore(heatmap)
    peak_row, peak_column = divmod(int(restored.argmax()), geometry.original_shape[1])
    expected_x, expected_y = geometry.to_original_points([(column + 0.5, row + 0.5)])[0]
    rx, ry = reach(geometry)
    assert restored.max() > 0
    assert abs(peak_column + 0.5 - expected_x) <= rx + 1e-6
    assert abs(peak_row + 0.5 - expected_y) <= ry + 1e-6


@FAST
@given(geometries(max_size=160), st.data())
def test_a_box_drawn_on_the_original_encloses_its_mask_on_the_model_grid(geometry, data):
    y0, x0, y1, x1 = geometry.crop
    bx0, bx1 = sorted(data.draw(st.lists(st.integers(x0, x1), min_size=2, max_size=2, unique=True)))
    by0, by1 = sorted(data.draw(st.lists(st.integers(y0, y1), min_size=2, max_size=2, unique=True)))
    mask = np.zeros(geometry.original_shape, dtype=np.float32)
    mask[by0:by1, bx0:bx1] = 1.0

    model_mask = geometry.apply(mask).numpy()
    mx0, my0, mx1, my1 = geometry.to_model_boxes([(bx0, by0, bx1, by1)])[0]
    x, y = pixel_centres(geometry.output_shape)
    # the resampling kernel reaches one model pixel when downsampling, one original pixel when upsampling
    sx, sy = geometry.scale
    kx, ky = max(1.0, sx) + 1e-6, max(1.0, sy) + 1e-6
    touched = model_mask > 1e-6
    assert touched.any()
    assert ((x[touched] > mx0 - kx) & (x[touched] < mx1 + kx) & (y[touched] > my0 - ky) & (y[touched] < my1 + ky)).all()
    deep_inside = (x > mx0 + kx) & (x < mx1 - kx) & (y > my0 + ky) & (y < my1 - ky)
    np.testing.assert_allclose(model_mask[deep_inside], 1.0, atol=1e-5)


def test_restore_keeps_a_peak_when_the_model_grid_is_finer_than_the_crop():
    geometry = ImageGeometry((10, 10), crop=(0, 0, 10, 10), flip=False, output_shape=(40, 40))
    heatmap = torch.zeros(40, 40)
    heatmap[20, 20] = 1.0  # its centre (20.5, 20.5) maps to (5.125, 5.125): original pixel (5, 5)
    restored = geometry.restore(heatmap)
    assert divmod(int(restored.argmax()), 10) == (5, 5)
    assert math.isclose(float(restored.sum()) * 16, 1.0, rel_tol=0.1)  # mass kept, spread over 4x4 fine pixels


def test_a_one_column_grid_resamples_like_each_column_of_a_wide_one():
    column = torch.rand(7, 1)
    wide = torch.cat([column, column], dim=1)
    narrow_geometry = ImageGeometry((7, 1), (0, 0, 7, 1), False, (3, 1))
    wide_geometry = ImageGeometry((7, 2), (0, 0, 7, 2), False, (3, 2))
    np.testing.assert_allclose(narrow_geometry.apply(column)[:, 0], wide_geometry.apply(wide)[:, 0], atol=1e-6)


def test_apply_flips_the_crop_left_right():
    image = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    geometry = ImageGeometry((4, 6), crop=(1, 2, 3, 5), flip=True, output_shape=(2, 3))
    np.testing.assert_array_equal(geometry.apply(image).numpy(), image[1:3, 2:5][:, ::-1])


def test_apply_accepts_uint16_and_leading_axes():
    image = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    geometry = ImageGeometry((8, 8), crop=(0, 0, 8, 8), flip=True, output_shape=(4, 4))
    out = geometry.apply(image)
    assert out.shape == (2, 4, 4) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), geometry.apply(image.astype(np.float32)).numpy())
    np.testing.assert_array_equal(out[1].numpy(), geometry.apply(image[1].astype(np.float32)).numpy())


def test_identity_changes_nothing():
    image = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    geometry = ImageGeometry.identity((5, 7))
    np.testing.assert_array_equal(geometry.apply(image).numpy(), image)
    np.testing.assert_array_equal(geometry.restore(image).numpy(), image)


def test_restore_fills_outside_the_crop():
    geometry = ImageGeometry((10, 10), crop=(2, 3, 8, 9), flip=False, output_shape=(3, 3))
    restored = geometry.restore(torch.ones(3, 3), fill=-1.0)
    assert restored[0, 0] == -1.0 and restored[5, 5] == 1.0
    assert (restored == -1.0).sum() == 100 - 6 * 6


def test_restore_keeps_each_map_in_its_own_range_through_the_rounding_of_the_resampling_weights():
    """Downsampled by an antialiasing filter, a map of ones came back as 1.0000001 (weights summing to 1 - 1 ulp)."""
    geometry = ImageGeometry((96, 75), crop=(19, 0, 78, 48), flip=False, output_shape=(64, 52))
    maps = torch.stack([torch.ones(64, 52), torch.linspace(-2.0, 3.0, 64 * 52).reshape(64, 52)])

    restored = geometry.restore(maps)

    assert restored[0].max() == 1.0 and restored[0, 19:78, 0:48].min() == 1.0
    assert restored[1].min() >= -2.0 and restored[1].max() <= 3.0


# -- serialisation and validation -----------------------------------------------------------------------------
@FAST
@given(geometries())
def test_to_dict_and_from_dict_round_trip_through_json(geometry):
    restored = ImageGeometry.from_dict(json.loads(json.dumps(geometry.to_dict())))
    assert restored == geometry
    assert hash(restored) == hash(geometry)


def test_numpy_integers_are_stored_as_plain_ints():
    geometry = ImageGeometry(np.array([10, 12]), np.array([0, 1, 9, 11]), np.bool_(True), (np.int64(4), np.int64(4)))
    assert geometry.to_dict() == {
        "original_shape": [10, 12],
        "crop": [0, 1, 9, 11],
        "flip": True,
        "output_shape": [4, 4],
    }
    assert all(type(value) is int for value in geometry.crop)


@pytest.mark.parametrize(
    "crop",
    [
        (5, 0, 5, 10),
        (6, 0, 4, 10),
        (-1, 0, 5, 10),
        (0, 0, 11, 10),
        (0, 3, 10, 2),
        (0, 0, 10),
        (0.5, 0, 5, 10),
        "0,0,5,5",
    ],
)
def test_invalid_crops_raise_a_clear_error(crop):
    with pytest.raises(MammoXAIError, match="crop"):
        ImageGeometry((10, 10), crop, False, (4, 4))


def test_empty_output_shape_raises_a_clear_error():
    with pytest.raises(MammoXAIError, match="output shape"):
        ImageGeometry((10, 10), (0, 0, 10, 10), False, (0, 4))


def test_from_dict_names_a_missing_entry():
    with pytest.raises(MammoXAIError, match="crop"):
        ImageGeometry.from_dict({"original_shape": [4, 4], "flip": False, "output_shape": [2, 2]})


def test_images_of_the_wrong_shape_are_refused():
    geometry = ImageGeometry((10, 10), (0, 0, 10, 10), False, (4, 4))
    with pytest.raises(MammoXAIError, match=r"expected \(\.\.\., 10, 10\)"):
        geometry.apply(np.zeros((10, 11)))
    with pytest.raises(MammoXAIError, match=r"expected \(\.\.\., 4, 4\)"):
        geometry.restore(np.zeros((10, 10)))


def test_scale_is_model_pixels_per_original_pixel():
    geometry = ImageGeometry((300, 200), (0, 0, 300, 100), False, (150, 200))
    assert geometry.scale == (2.0, 0.5)
    assert math.isclose(geometry.to_model_points([(50.0, 100.0)])[0, 0], 100.0)
