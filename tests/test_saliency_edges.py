"""Saliency methods and metrics at the edges a researcher hits with their own models and images: the right map or
one clear error naming the input and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_saliency_methods import ToyEncoder, reference_correlax
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.metrics import deletion_insertion_auc, energy_pointing_game, pointing_game, widen_box
from mammoxai.nets import MammoClassifier
from mammoxai.saliency import CAM, RISE, CorRELAX, GradCAM, HiResCAM, Occlusion, RandomMasks, get_method

TARGET = "features.block2"


@pytest.fixture
def net() -> MammoClassifier:
    torch.manual_seed(0)
    return MammoClassifier(num_classes=3, channels=(4, 8, 8)).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 1, 37, 29, generator=torch.Generator().manual_seed(0))  # odd, non-square grid


class Branches(nn.Module):
    """A convolution whose output reaches the logits, an auxiliary one that does not, and a layer never run."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.aux = nn.Conv2d(1, 2, 3, padding=1)
        self.spare = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.aux(x)
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


# -- target classes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("class_idx", ["malignant", ["normal", "malignant"], 1.0])
def test_a_class_name_or_float_is_refused_not_read_letter_by_letter(net, images, class_idx):
    with pytest.raises(MammoXAIError, match="saliency class_idx: .* is not a class index.*class_names.index"):
        GradCAM(net, TARGET)(images, class_idx=class_idx)


def test_an_empty_list_of_classes_is_refused(net, images):
    with pytest.raises(MammoXAIError, match="saliency class_idx: is an empty list"):
        Occlusion(net, patch=8, stride=8)(images, class_idx=[])


def test_a_zero_dim_tensor_class_explains_every_image_of_the_batch(net, images):
    cam = GradCAM(net, TARGET)
    assert torch.equal(cam(images, class_idx=torch.tensor(2))[0], cam(images, class_idx=2)[0])


# -- target layers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layer", "problem"),
    [
        ("fc", r"'fc' gives \(2, 3\), not a feature map"),
        ("spare", "'spare' did not run in the forward pass"),
        ("aux", "the logits do not depend on 'aux'"),
    ],
)
def test_a_layer_that_cannot_give_a_map_is_named(images, layer, problem):
    with pytest.raises(MammoXAIError, match=f"saliency target_layer: .*{problem}"):
        GradCAM(Branches().eval(), layer)(images)


def test_cam_of_a_layer_that_does_not_run_is_named(images):
    with pytest.raises(MammoXAIError, match="'spare' did not run"):
        CAM(Branches().eval(), "spare", classifier_layer="fc")(images)


# -- the caller's context ---------------------------------------------------------------------------------------
def test_gradcam_works_inside_inference_mode_and_on_its_tensors(net, images):
    expected, _ = HiResCAM(net, TARGET)(images)
    with torch.inference_mode():
        frozen_images = images.clone()
        inside, _ = HiResCAM(net, TARGET)(frozen_images)
    outside, _ = HiResCAM(net, TARGET)(frozen_images)  # an inference tensor used after the block
    assert torch.equal(inside, expected) and torch.equal(outside, expected)


def test_a_nan_pixel_is_an_error_not_an_all_zero_map(net, images):
    images[1, 0, 3, 4] = float("nan")
    for method in (GradCAM(net, TARGET), RISE(net, num_masks=8, grid=4)):
        with pytest.raises(MammoXAIError, match="saliency map: is NaN.*check the image for NaN"):
            method(images)


# -- pointing game and its ground truth -------------------------------------------------------------------------
def _peak(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    heatmap = np.zeros(shape)
    heatmap[row, col] = 1.0
    return heatmap


def test_a_box_outside_the_image_is_empty_not_counted_from_the_far_edge():
    assert not widen_box((-20, -20, -10, -10), 0, (100, 100)).any()
    assert not widen_box((120, 5, 130, 9), 0, (100, 100)).any()
    inside = widen_box((-4, 95, 3, 104), 0, (100, 100))  # over the corner: clipped to it
    assert np.array_equal(np.argwhere(inside).min(axis=0), [95, 0]) and inside.sum() == 5 * 3


def test_a_point_annotation_is_its_pixel():
    assert np.array_equal(np.argwhere(widen_box((7, 4, 7, 4), 0, (10, 10))), [[4, 7]])


def test_a_region_on_the_border_is_hit_by_a_peak_on_the_border():
    region = widen_box((8, 0, 12, 3), 0, (10, 12))
    assert pointing_game(_peak((10, 12), 0, 11), region)
    assert not pointing_game(_peak((10, 12), 3, 11), region)


def test_tolerance_in_mm_follows_anisotropic_spacing():
    """Peak at column 0, lesion at column 5 of the same row: 5 columns of 0.1 mm are 0.5 mm, 5 rows would be 5 mm."""
    region = np.zeros((10, 10), bool)
    region[0, 5] = True
    peak = _peak((10, 10), 0, 0)
    assert not pointing_game(peak, region, 0.49, spacing=(1.0, 0.1))
    assert pointing_game(peak, region, 0.51, spacing=(1.0, 0.1))
    assert not pointing_game(peak, region, 0.51, spacing=(0.1, 1.0))  # the same pixels with the axes swapped


@pytest.mark.parametrize(
    ("heatmap", "region", "settings", "message"),
    [
        (np.full((10, 12), np.nan), np.ones((10, 12)), {}, "pointing game heatmap: holds NaN"),
        (_peak((10, 12), 3, 4), np.zeros((10, 12)), {}, "pointing game region: is empty"),
        (_peak((10, 12), 3, 4), np.ones((12, 10)), {}, "heatmap: is 10x12 pixels, the ground truth 12x10"),
        (_peak((10, 12), 3, 4), np.ones((10, 12)), {"tolerance": -1.0}, "tolerance: is -1"),
        (_peak((10, 12), 3, 4), np.ones((10, 12)), {"spacing": (0.0, 0.1)}, r"spacing: is \[0.0, 0.1\]"),
    ],
)
def test_a_pointing_game_that_cannot_be_scored_is_an_error_not_a_miss(heatmap, region, settings, message):
    with pytest.raises(MammoXAIError, match=message):
        pointing_game(heatmap, region, **settings)


def test_a_nan_in_a_map_is_an_error_for_the_energy_pointing_game():
    heatmap = _peak((10, 12), 3, 4)
    heatmap[0, 0] = np.nan
    with pytest.raises(MammoXAIError, match="energy pointing game heatmap: holds NaN"):
        energy_pointing_game(heatmap, np.ones((10, 12)))


# -- deletion / insertion ---------------------------------------------------------------------------------------
class NormalisedMean(nn.Module):
    """Class 1's logit is the batch-normalised mean brightness, behind dropout: train mode would change its curves."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x.mean(dim=(2, 3)))))


def test_deletion_runs_a_network_in_eval_mode_and_restores_its_mode():
    image, heatmap = torch.rand(1, 8, 8), torch.rand(8, 8)
    network = NormalisedMean().eval()
    expected = deletion_insertion_auc(network, image, heatmap, class_index=1, steps=4)
    network.train()
    assert deletion_insertion_auc(network, image, heatmap, class_index=1, steps=4) == expected
    assert network.training


@pytest.mark.parametrize(
    ("image", "heatmap", "settings", "message"),
    [
        (torch.zeros(1, 8, 8), torch.rand(8, 8), {}, "deletion/insertion breast: has no pixel"),
        (torch.rand(1, 8, 8), torch.full((8, 8), float("nan")), {}, "deletion/insertion heatmap: holds NaN"),
        (torch.rand(1, 8, 8), torch.rand(4, 4), {}, "heatmap: is 4x4 pixels, the image 8x8"),
        (torch.rand(1, 8, 8), torch.rand(8, 8), {"steps": 0}, "deletion/insertion steps: is 0"),
        (torch.rand(1, 8, 8), torch.rand(8, 8), {"class_index": 2}, "class_index: 2 is not one of.*use 0 to 1"),
    ],
)
def test_deletion_that_cannot_be_measured_is_an_error(image, heatmap, settings, message):
    arguments = {"class_index": 1, "steps": 4, **settings}
    with pytest.raises(MammoXAIError, match=message):
        deletion_insertion_auc(NormalisedMean().eval(), image, heatmap, **arguments)


# -- CorRELAX ---------------------------------------------------------------------------------------------------
def test_correlax_of_an_odd_sized_image_is_the_reference_on_the_zero_padded_image():
    """41 x 50 pixels do not tile into 24-pixel views 8 apart: the last row and column of views reach into zero
    padding, so every pixel is covered, and the maps are cropped back to the image."""
    net = ToyEncoder().eval()
    image = torch.rand(1, 1, 41, 50, generator=torch.Generator().manual_seed(1)) + 0.1
    correlax = CorRELAX(net, "pool", view_size=24, stride=8, num_masks=12, grid=4, kernel_sigma=None, seed=3)
    result = correlax.explain(image)
    masks = RandomMasks(12, (24, 24), grid=4, keep_prob=0.5, seed=3)(0, 12)
    prediction, correlation = reference_correlax(net, F.pad(image, (0, 6, 0, 7)), 24, 8, masks)
    assert result.prediction.shape == (1, 3, 41, 50) and result.views == [4 * 5]
    assert torch.allclose(result.prediction[0].double(), prediction[:, :41, :50], atol=1e-5)
    assert torch.allclose(result.correlation[0].double(), correlation[:, :41, :50], atol=1e-4)


def test_an_all_background_image_of_a_batch_is_named():
    images = torch.rand(2, 1, 16, 16) + 0.1
    images[1] = 0.0
    with pytest.raises(MammoXAIError, match="CorRELAX input: image 1 of the batch has no breast pixel"):
        CorRELAX(ToyEncoder().eval(), "pool", view_size=8, stride=4)(images)


def test_a_breast_too_small_for_the_views_names_min_breast_fraction():
    image = torch.zeros(1, 1, 16, 16)
    image[..., :2, :2] = 1.0  # 4 of a view's 64 pixels
    correlax = CorRELAX(ToyEncoder().eval(), "pool", view_size=8, stride=4, min_breast_fraction=0.25)
    message = "min_breast_fraction: no 8x8 view of image 0.*more than 25% breast.*at most 6%"
    with pytest.raises(MammoXAIError, match=message):
        correlax(image)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kernel_sigma": 0.0}, "kernel_sigma: is 0.0"),
        ({"background_class": 3}, "background_class: 3 is not one of the network's 3"),
    ],
)
def test_correlax_settings_that_would_give_zeros_or_crash_are_refused(settings, message):
    with pytest.raises(MammoXAIError, match=message):
        CorRELAX(ToyEncoder().eval(), "pool", view_size=8, stride=4, num_masks=4, **settings)(torch.rand(1, 1, 16, 16))


# -- batches, modes, seeds and precision ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["occlusion", "rise", "gradcampp"])
def test_each_image_of_a_batch_gets_its_own_class(net, images, method):
    settings = {"gradcampp": {"target_layer": TARGET}, "rise": {"num_masks": 16, "grid": 4}}.get(method, {})
    explain = get_method(method, net, preset="fast" if method == "occlusion" else None, **settings)
    maps, _ = explain(images, class_idx=torch.tensor([2, 0]))
    for index, target in enumerate((2, 0)):
        single, _ = explain(images[index : index + 1], class_idx=target)
        assert torch.allclose(maps[index], single[0], atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "occlusion", "rise", "relax"])
def test_train_mode_changes_no_map_and_is_restored(net, images, method):
    """MammoClassifier has BatchNorm: in train mode it would normalise the images of a batch by each other."""
    settings = {
        "gradcam": {"target_layer": TARGET},
        "rise": {"num_masks": 32},
        "relax": {"representation_layer": "pool", "num_masks": 32},
    }.get(method, {})
    explain = get_method(method, net, preset=None if method == "gradcam" else "fast", **settings)
    expected, _ = explain(images, class_idx=1)
    net.train()
    maps, _ = explain(images, class_idx=1)
    assert net.training and torch.equal(maps, expected)


@pytest.mark.parametrize("method", ["rise", "relax", "correlax"])
def test_a_seed_gives_the_same_map_twice_and_another_seed_another_map(method):
    net, image = ToyEncoder().eval(), torch.rand(1, 1, 24, 20, generator=torch.Generator().manual_seed(2)) + 0.1
    settings = {"num_masks": 16, "grid": 4}
    if method != "rise":
        settings["representation_layer"] = "pool"
    if method == "correlax":
        settings.update(view_size=16, stride=4, map="correlation")
    maps = [get_method(method, net, seed=seed, **settings)(image)[0] for seed in (5, 5, 6)]
    assert torch.equal(maps[0], maps[1]) and (maps[0] - maps[2]).abs().max() > 0.05


def test_gradcam_under_cpu_bfloat16_autocast_is_close_to_float32(net, images):
    expected, _ = GradCAM(net, TARGET)(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps, _ = GradCAM(net, TARGET)(images)
    assert maps.dtype == torch.float32 and (maps - expected).abs().max() < 0.05


def test_random_masks_of_a_size_the_grid_does_not_divide_are_the_per_mask_crops():
    """37 x 29 pixels on a 4 x 4 grid: cells of 10 x 8 pixels, each mask the upsampled grid cropped at its shift."""
    masks = RandomMasks(6, (37, 29), grid=4, keep_prob=0.5, seed=4)
    made = masks(0, 6)
    assert masks.cell == (10, 8)
    for index in range(6):
        upsampled = F.interpolate(masks.cells[index : index + 1], size=(50, 40), mode="bilinear", align_corners=False)
        row, col = masks.shifts[index].tolist()
        assert torch.equal(made[index], upsampled[0, 0, row : row + 37, col : col + 29])
