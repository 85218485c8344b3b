"""Saliency methods and metrics at the edges a researcher hits with their own models and images: the right map or
one clear error naming the input and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.nets import MammoClassifier
from mammoxai.saliency import CAM, RISE, GradCAM, HiResCAM, Occlusion

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
