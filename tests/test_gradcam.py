"""Grad-CAM: agrees with MONAI's reference implementation, batched, all classes from one forward pass."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.visualize import GradCAM as MonaiGradCAM

from mammoxai.errors import MammoXAIError
from mammoxai.nets import MammoClassifier
from mammoxai.saliency import GradCAM

TARGET = "features.block2"


@pytest.fixture
def net() -> MammoClassifier:
    return MammoClassifier(num_classes=3, channels=(4, 8, 8)).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 1, 64, 48)


def monai_reference(net: torch.nn.Module, images: torch.Tensor, class_idx: int | None = None) -> torch.Tensor:
    """MONAI's Grad-CAM on a copy of the network (it leaves hooks behind), un-inverted to 0 = low, 1 = high."""
    reference = MonaiGradCAM(nn_module=copy.deepcopy(net), target_layers=TARGET)
    return 1.0 - reference(images, class_idx=class_idx)  # MONAI's default normaliser maps the maximum to 0


def test_predicted_class_maps_match_monai(net, images):
    maps, logits = GradCAM(net, TARGET)(images)
    expected = monai_reference(net, images)
    assert maps.shape == (3, 1, 64, 48)
    assert torch.equal(logits, net(images).detach())
    assert torch.allclose(maps, expected, atol=1e-5)
    assert torch.all(maps.amax(dim=(2, 3)) == 1.0) and torch.all(maps.amin(dim=(2, 3)) == 0.0)


def test_every_class_map_matches_monai_from_one_forward_pass(net, images):
    forwards = []
    net.register_forward_hook(lambda *_: forwards.append(1))
    maps, _ = GradCAM(net, TARGET)(images, class_idx=[0, 1, 2])
    assert len(forwards) == 1
    assert maps.shape == (3, 3, 64, 48)
    for index in range(3):
        assert torch.allclose(maps[:, index : index + 1], monai_reference(net, images, class_idx=index), atol=1e-5)


def test_class_order_follows_the_request(net, images):
    cam = GradCAM(net, TARGET)
    forward_order, _ = cam(images, class_idx=[0, 2])
    reverse_order, _ = cam(images, class_idx=[2, 0])
    assert torch.allclose(forward_order.flip(1), reverse_order)


def test_images_of_a_batch_are_explained_independently(net, images):
    cam = GradCAM(net, TARGET)
    batch_maps, _ = cam(images, class_idx=1)
    for index in range(len(images)):
        single, _ = cam(images[index : index + 1], class_idx=1)
        assert torch.allclose(batch_maps[index], single[0], atol=1e-5)


def test_per_image_class_tensor_selects_each_images_class(net, images):
    cam = GradCAM(net, TARGET)
    all_classes, _ = cam(images, class_idx=[0, 1, 2])
    chosen = torch.tensor([2, 0, 1])
    per_image, _ = cam(images, class_idx=chosen)
    assert per_image.shape == (3, 1, 64, 48)
    for index, class_index in enumerate(chosen.tolist()):
        assert torch.allclose(per_image[index, 0], all_classes[index, class_index], atol=1e-6)


def test_class_without_evidence_gives_zeros_not_nan(net, images):
    with torch.no_grad():
        net.fc.weight[1] = 0.0
    maps, _ = GradCAM(net, TARGET)(images, class_idx=1)
    assert torch.isfinite(maps).all()
    assert torch.count_nonzero(maps) == 0


def test_frozen_weights_still_give_maps(net, images):
    expected = monai_reference(net, images)  # MONAI needs weights that require grad: computed before freezing
    net.requires_grad_(False)
    maps, _ = GradCAM(net, TARGET)(images)
    assert torch.allclose(maps, expected, atol=1e-5)


def test_training_mode_is_restored_and_no_hook_is_left(net, images):
    net.train()
    GradCAM(net, TARGET)(images)
    assert net.training
    assert not net.features.block2._forward_hooks


def test_maps_are_computed_under_no_grad_context(net, images):
    with torch.no_grad():
        maps, _ = GradCAM(net, TARGET)(images)
    assert maps.amax() == 1.0


def test_unknown_layer_names_the_choices(net):
    with pytest.raises(MammoXAIError, match="no layer named 'features.block9'.*features.block2"):
        GradCAM(net, "features.block9")


def test_out_of_range_class_is_refused(net, images):
    with pytest.raises(ValueError, match="class index 3 is out of range for 3 classes"):
        GradCAM(net, TARGET)(images, class_idx=[0, 3])
