"""Breast segmentation, chest-wall side, breast crop and the model preprocessing, on drawn phantoms."""

import numpy as np
import pytest
import torch

from mammoxai.errors import MammoXAIError
from mammoxai.io.breast import breast_geometry, chest_wall_side, segment_breast
from mammoxai.io.mammogram import Mammogram
from mammoxai.io.preprocess import grid_shape, prepare_image

SHAPE = (160, 128)
MODEL_SHAPE = (64, 48)


def draw_breast(shape=SHAPE, side="left", background=0.05, noise=0.01, pectoral=False, seed=0):
    """A phantom mammogram: a half-ellipse of tissue against the chest-wall edge, denser towards its centre.

    Returns float32 pixels (bright = dense) and the boolean mask of the drawn breast.
    """
    height, width = shape
    rows, columns = np.mgrid[0:height, 0:width] + 0.5
    depth = columns if side == "left" else width - columns  # distance from the chest wall
    radius = (depth / (0.65 * width)) ** 2 + ((rows - height / 2) / (0.42 * height)) ** 2
    breast = radius < 1
    if pectoral:  # MLO: the pectoral muscle, a triangle along the chest wall from the top
        breast |= rows < height * (1 - depth / (0.35 * width))
    tissue = 0.3 + 0.4 * np.clip(1 - radius, 0, 1)
    pixels = np.where(breast, tissue, background) + np.random.default_rng(seed).normal(0, noise, shape)
    return pixels.astype(np.float32), breast


def add_label(pixels, side="left", value=1.0):
    """Burn a bright rectangular label into the top corner away from the chest wall (touching both edges)."""
    labelled = pixels.copy()
    columns = slice(-36, None) if side == "left" else slice(0, 36)
    labelled[0:14, columns] = value
    return labelled


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


# -- segment_breast -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_mask_matches_the_drawn_breast(side):
    pixels, breast = draw_breast(side=side)
    mask = segment_breast(pixels)
    assert mask.dtype == bool and mask.shape == SHAPE
    assert iou(mask, breast) > 0.97


@pytest.mark.parametrize("side", ["left", "right"])
def test_burned_in_label_is_removed(side):
    pixels, breast = draw_breast(side=side)
    mask = segment_breast(add_label(pixels, side))
    assert not mask[0:14, -36:].any() if side == "left" else not mask[0:14, :36].any()
    assert iou(mask, breast) > 0.97


def test_small_bright_markers_are_removed():
    pixels, breast = draw_breast()
    pixels[140:146, 110:116] = 0.9  # a lead marker near the nipple side, not touching the breast
    pixels[20:23, 60:90] = 0.8  # a thin burned-in line of text
    mask = segment_breast(pixels)
    assert not mask[140:146, 110:116].any() and not mask[20:23, 60:90].any()
    assert iou(mask, breast) > 0.97


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_mask_does_not_depend_on_bit_depth(bits):
    pixels, breast = draw_breast()
    stored = np.round(np.clip(pixels, 0, 1) * (2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)
    assert iou(segment_breast(stored), breast) > 0.97


def test_noisy_background_with_an_offset_is_not_breast():
    pixels, breast = draw_breast(background=0.2, noise=0.02)  # the skin line is 5 noise SDs above it
    mask = segment_breast(pixels)
    assert iou(mask, breast) > 0.95
    assert mask[:, -20:].sum() == 0  # far from the breast, the noise stays background


def test_dark_fatty_regions_inside_the_breast_are_filled():
    pixels, breast = draw_breast()
    pixels[70:90, 10:30] = 0.05  # as dark as the background, but enclosed by tissue
    assert segment_breast(pixels)[70:90, 10:30].all()


def test_large_images_are_segmented_at_working_size_and_returned_full_size():
    pixels, breast = draw_breast(shape=(1100, 900))
    mask = segment_breast(pixels, working_size=256)
    assert mask.shape == (1100, 900)
    assert iou(mask, breast) > 0.97


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros(SHAPE, dtype=np.float32),
        np.full(SHAPE, 1234, dtype=np.uint16),
        np.random.default_rng(0).normal(0.3, 0.05, SHAPE),
        np.random.default_rng(1).uniform(0, 1, SHAPE),
    ],
    ids=["black", "constant", "gaussian-noise", "uniform-noise"],
)
def test_blank_images_raise_no_breast_found(pixels):
    with pytest.raises(MammoXAIError, match="scan.dcm: no breast was found"):
        segment_breast(pixels, source="scan.dcm")


def test_a_lone_marker_is_not_taken_for_a_breast():
    pixels = np.full(SHAPE, 0.05, dtype=np.float32)
    pixels[10:20, 10:20] = 0.9  # 0.5 % of the image
    with pytest.raises(MammoXAIError, match="no breast was found"):
        segment_breast(pixels)


@pytest.mark.parametrize("pixels", [np.zeros((5,)), np.full(SHAPE, np.nan)], ids=["1-D", "NaN"])
def test_unusable_arrays_raise_a_clear_error(pixels):
    with pytest.raises(MammoXAIError, match="image"):
        segment_breast(pixels)


# -- chest_wall_side ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pectoral", [False, True], ids=["CC", "MLO"])
def test_chest_wall_side_comes_from_the_mask(side, pectoral):
    _, breast = draw_breast(side=side, pectoral=pectoral)
    assert chest_wall_side(breast) == side
    # the mask outranks a laterality that contradicts it (a file stored mirrored)
    assert chest_wall_side(breast, laterality="R" if side == "left" else "L") == side


def test_chest_wall_side_is_found_when_the_breast_does_not_touch_the_edge():
    _, breast = draw_breast(side="right")
    shifted = np.zeros_like(breast)
    shifted[:, :-10] = breast[:, 10:]  # a dark strip between the chest wall and the right edge
    assert chest_wall_side(shifted) == "right"


@pytest.mark.parametrize("laterality, expected", [("R", "right"), ("L", "left"), (None, "left")])
def test_an_ambiguous_mask_falls_back_to_laterality(laterality, expected):
    filling_the_detector = np.ones(SHAPE, dtype=bool)
    assert chest_wall_side(filling_the_detector, laterality) == expected


# -- breast_geometry ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_crop_encloses_the_breast_and_flips_the_chest_wall_to_the_left(side):
    pixels, breast = draw_breast(side=side)
    geometry = breast_geometry(Mammogram(pixels=add_label(pixels, side), laterality=None), MODEL_SHAPE)
    y0, x0, y1, x1 = geometry.crop
    rows, columns = np.nonzero(breast)
    assert y0 <= rows.min() and rows.max() < y1 and x0 <= columns.min() and columns.max() < x1
    assert geometry.flip == (side == "right")
    model_breast = geometry.apply(breast.astype(np.float32)).numpy() > 0.5
    heights = model_breast.sum(axis=0)
    assert heights[0] > 3 * max(heights[-1], 1)  # tallest at the chest wall, on the left


def test_crop_takes_the_aspect_ratio_of_the_model_grid():
    pixels, _ = draw_breast(shape=(300, 160))
    tight = breast_geometry(Mammogram(pixels=pixels), (100, 50), keep_aspect=False)
    assert tight.crop_shape[0] / tight.crop_shape[1] > 2.3  # the breast box is taller than 2:1
    geometry = breast_geometry(Mammogram(pixels=pixels), (100, 50))
    assert geometry.crop_shape[0] == tight.crop_shape[0]
    assert abs(geometry.crop_shape[0] / geometry.crop_shape[1] - 2.0) < 0.02  # widened towards the nipple
    assert geometry.crop[1] == 0


def test_crop_keeps_a_margin_around_the_breast_inside_the_image():
    pixels = np.full((120, 120), 0.05, dtype=np.float32)
    pixels[40:80, 0:50] = 0.6  # a block against the chest wall
    geometry = breast_geometry(Mammogram(pixels=pixels), (40, 50), margin=0.1, keep_aspect=False)
    assert geometry.crop == (36, 0, 84, 55)  # 10 % of 40 rows and of 50 columns, clipped at the chest wall


def test_a_precomputed_mask_is_used_as_given():
    pixels, breast = draw_breast()
    mask = np.zeros_like(breast)
    mask[10:50, 0:30] = True
    geometry = breast_geometry(Mammogram(pixels=pixels), MODEL_SHAPE, margin=0.0, keep_aspect=False, mask=mask)
    assert geometry.crop == (10, 0, 50, 30)


@pytest.mark.parametrize("mask", [np.ones((10, 10), dtype=bool), np.zeros(SHAPE, dtype=bool)], ids=["shape", "empty"])
def test_a_precomputed_mask_that_cannot_be_used_is_refused(mask):
    pixels, _ = draw_breast()
    with pytest.raises(MammoXAIError, match="scan.dcm: breast mask"):
        breast_geometry(Mammogram(pixels=pixels, source="scan.dcm"), MODEL_SHAPE, mask=mask)


def test_breast_geometry_on_a_blank_image_raises():
    with pytest.raises(MammoXAIError, match="blank.png: no breast was found"):
        breast_geometry(Mammogram(pixels=np.zeros(SHAPE), source="blank.png"), MODEL_SHAPE)


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_whole_image_field_of_view_keeps_every_pixel_and_flips_the_chest_wall_to_the_left(side):
    pixels, breast = draw_breast(side=side)
    geometry = breast_geometry(Mammogram(pixels=pixels), MODEL_SHAPE, field_of_view="image")
    assert geometry.crop == (0, 0, *SHAPE) and geometry.flip == (side == "right")
    heights = (geometry.apply(breast.astype(np.float32)).numpy() > 0.5).sum(axis=0)
    assert heights[0] > 3 * max(heights[-1], 1)


def test_an_unknown_field_of_view_is_refused_by_name():
    pixels, _ = draw_breast()
    expected = r'field_of_view: is .detector., not a field of view \(use "breast" or "image"\)'
    with pytest.raises(MammoXAIError, match=expected):
        breast_geometry(Mammogram(pixels=pixels), MODEL_SHAPE, field_of_view="detector")
    with pytest.raises(MammoXAIError, match=expected):
        prepare_image(Mammogram(pixels=pixels), MODEL_SHAPE, field_of_view="detector")


# -- prepare_image --------------------------------------------------------------------------------------------
def test_a_grid_size_is_height_and_width_or_one_int_for_a_square():
    assert grid_shape([512, 416]) == (512, 416) and grid_shape((64, 48)) == (64, 48)
    assert grid_shape(64) == (64, 64) and grid_shape(np.int64(32)) == (32, 32)


@pytest.mark.parametrize("size", [0, [64], [64, 64, 3], [64, 0], "64", [64.5, 64], True, None])
def test_a_grid_size_of_any_other_shape_is_refused_by_its_setting_name(size):
    with pytest.raises(MammoXAIError, match=r"lesion_image_size: is .*, not a grid size \(give \"\[height, width\]\""):
        grid_shape(size, "lesion_image_size")


def test_prepared_image_is_a_unit_range_tensor_with_a_zero_background():
    pixels, breast = draw_breast()
    image, geometry = prepare_image(Mammogram(pixels=add_label(pixels)), MODEL_SHAPE)
    assert image.shape == (1, *MODEL_SHAPE) and image.dtype == torch.float32
    assert image.min() == 0.0 and 0.95 < image.max() <= 1.0  # the top breast percentile lands on 1
    model_breast = geometry.apply(breast.astype(np.float32))[None]
    assert (image[model_breast == 0] == 0).all()
    assert image[model_breast == 1].min() < 0.1  # and the bottom one on 0
    assert geometry == breast_geometry(Mammogram(pixels=pixels), MODEL_SHAPE)


def test_labels_leave_no_trace_in_the_prepared_image():
    pixels, _ = draw_breast()
    clean, _ = prepare_image(Mammogram(pixels=pixels), MODEL_SHAPE)
    labelled, _ = prepare_image(Mammogram(pixels=add_label(pixels)), MODEL_SHAPE)
    torch.testing.assert_close(labelled, clean)


def test_different_bit_depths_and_gains_prepare_to_the_same_image():
    pixels, _ = draw_breast()
    reference, _ = prepare_image(Mammogram(pixels=pixels), MODEL_SHAPE)
    vendor = np.round(np.clip(pixels, 0, None) * 3000 + 500).astype(np.uint16)  # 12-bit with an offset
    other, _ = prepare_image(Mammogram(pixels=vendor), MODEL_SHAPE)
    torch.testing.assert_close(other, reference, atol=2e-3, rtol=0)


def test_a_mirrored_file_prepares_to_the_same_image():
    pixels, _ = draw_breast(side="left")
    left, left_geometry = prepare_image(Mammogram(pixels=pixels, laterality="L"), MODEL_SHAPE)
    right, right_geometry = prepare_image(Mammogram(pixels=pixels[:, ::-1], laterality="R"), MODEL_SHAPE)
    assert not left_geometry.flip and right_geometry.flip
    torch.testing.assert_close(right, left)


def test_a_uniform_breast_stays_distinct_from_the_background():
    pixels = np.zeros(SHAPE, dtype=np.float32)
    pixels[30:130, 0:70] = 0.5
    image, _ = prepare_image(Mammogram(pixels=pixels), MODEL_SHAPE)
    assert image.max() == 1.0 and image.min() == 0.0


def test_display_range_scaling_keeps_the_exposure_that_breast_percentiles_divide_out():
    """Two exposures of one breast, one with twice the contrast: the percentiles give both the same image, the
    file's value range keeps them apart by exactly that factor."""
    pixels, breast = draw_breast()
    faint = np.where(breast, 1000 + 1000 * pixels, 0).astype(np.float32)
    strong = np.where(breast, 1000 + 2000 * pixels, 0).astype(np.float32)
    scans = [Mammogram(pixels=values, value_range=(0.0, 4095.0)) for values in (faint, strong)]
    stretched = [prepare_image(scan, MODEL_SHAPE)[0] for scan in scans]
    torch.testing.assert_close(stretched[0], stretched[1], atol=2e-3, rtol=0)
    (kept, geometry), (kept_strong, _) = (
        prepare_image(scan, MODEL_SHAPE, intensity_scaling="display_range") for scan in scans
    )
    inside = geometry.apply(breast.astype(np.float32))[None] == 1  # the edge mixes breast and background
    offset = 1000 / 4095
    torch.testing.assert_close(kept_strong[inside] - offset, 2 * (kept[inside] - offset), atol=2e-3, rtol=0)
    assert kept[inside].min() >= offset - 1e-3 and kept_strong.max() <= 1.0


def test_display_range_scaling_needs_a_file_that_fixes_its_value_range():
    pixels, _ = draw_breast()
    with pytest.raises(MammoXAIError, match=r"scan.tiff: fixes no value range .* \(save it as 8 or 16-bit grayscale"):
        prepare_image(Mammogram(pixels=pixels, source="scan.tiff"), MODEL_SHAPE, intensity_scaling="display_range")


def test_an_unknown_intensity_scaling_is_refused_by_name():
    pixels, _ = draw_breast()
    with pytest.raises(MammoXAIError, match=r'intensity_scaling: is .display., .* \(use "breast_percentiles" or'):
        prepare_image(Mammogram(pixels=pixels), MODEL_SHAPE, intensity_scaling="display")


def breast_of_width(fraction, shape=(400, 320), noise=0.05, seed=0):
    """A uniform half-disc of tissue ``fraction`` of the image wide against the left edge, with white noise: one
    exposure of breasts of different sizes on one detector."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    radius = fraction * shape[1]
    breast = (columns / radius) ** 2 + ((rows - shape[0] / 2) / radius) ** 2 < 1
    pixels = np.where(breast, 0.5, 0.0) + np.random.default_rng(seed).normal(0, noise, shape) * breast
    return Mammogram(pixels=pixels.astype(np.float32), value_range=(0.0, 1.0))


def model_noise(image):
    """The model input's noise level: median absolute diagonal difference well inside the breast."""
    from scipy import ndimage

    inside = ndimage.binary_erosion(image[0].numpy() > 0, iterations=3)[1:, 1:]
    differences = (image[0, 1:, 1:] - image[0, :-1, :-1]).numpy()
    return float(np.median(np.abs(differences[inside])))


def test_the_whole_image_field_of_view_keeps_the_breast_size_and_noise_grain_that_the_breast_crop_resizes_away():
    """One detector, one exposure, a small and a large breast: cropped to the breast, each is resized by its own
    factor, so both fill the grid and the small one keeps more of its noise; the whole image resizes both alike."""
    small, large = breast_of_width(0.25), breast_of_width(0.55)
    inputs = {"intensity_scaling": "display_range"}
    (crop_small, geometry_small), (crop_large, geometry_large) = (
        prepare_image(scan, (100, 80), **inputs) for scan in (small, large)
    )
    assert geometry_small.scale[0] > 1.8 * geometry_large.scale[0]
    assert abs((crop_small > 0).float().mean() - (crop_large > 0).float().mean()) < 0.1
    assert model_noise(crop_small) > 1.5 * model_noise(crop_large)
    (whole_small, geometry_small), (whole_large, geometry_large) = (
        prepare_image(scan, (100, 80), field_of_view="image", **inputs) for scan in (small, large)
    )
    assert geometry_small.scale == geometry_large.scale
    assert (whole_large > 0).float().mean() > 3 * (whole_small > 0).float().mean()
    assert model_noise(whole_small) == pytest.approx(model_noise(whole_large), rel=0.1)
