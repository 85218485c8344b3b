"""The activation-map family against the reference implementations the field uses: pytorch-grad-cam and Captum.

Every comparison runs on a tiny CPU network (MammoClassifier and torchvision's ResNet-18 with a one-channel stem,
random weights, four classes), a batch of three 64 x 64 images, the same target layer and the same target class
on both sides, at an intermediate layer (where gradients vary over the feature map, so Grad-CAM, Grad-CAM++ and
HiResCAM give different maps) and at the last one.

How the normalisations are matched:

* pytorch-grad-cam (``BaseCAM``) applies ReLU on the feature-map grid, min-max scales each map with ``max + 1e-7``
  in the denominator, resizes it with ``cv2.resize`` (bilinear, pixel centres at ``i + 0.5``, the convention of
  ``F.interpolate(align_corners=False)`` that ours uses) and min-max scales again after the resize. Min-max is
  affine, so the first scaling cancels in the second and its output equals ours (ReLU, bilinear upsampling,
  one min-max) up to the 1e-7 guard: the two are compared on the input grid as they come out.
* Captum's ``LayerGradCam`` returns the raw map on the feature-map grid: it is asked for ReLU there
  (``relu_attributions=True``; ReLU and bilinear upsampling do not commute, so the order matters), upsampled with
  ``LayerAttribution.interpolate(..., "bilinear")`` (``F.interpolate``, ``align_corners=False``) and min-max scaled
  per image below.

Tolerance: 1e-5 absolute on maps in [0, 1]. The float32 arithmetic of the two sides (NumPy and cv2 against torch)
differs by about 1e-6 (up to 3e-6 for Grad-CAM++, whose denominator ``2 G^2 + sum(A) G^3`` cancels for negative
gradients); a wrong channel weight, layer, class or upsampling convention moves maps by 1e-2 or more.

Grad-CAM++ needs one more condition: pytorch-grad-cam adds 1e-6 to the denominator of
``alpha = G^2 / (2 G^2 + sum(A) G^3)``, a guard of the size of ``G^2`` itself for the gradients of a randomly
initialised network (1e-4 to 1e-3), where it changes maps by up to 0.3. Ours evaluates the paper's closed form
exactly (Chattopadhay et al. 2018, Eq. 19), so it is compared on networks whose logits are scaled up until the
guard is negligible, and :func:`test_gradcampp_differs_from_pytorch_grad_cam_only_by_its_denominator_guard`
shows that the remaining difference on small gradients is that guard and nothing else.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from pytorch_grad_cam import GradCAM as ReferenceGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as ReferenceGradCAMPlusPlus
from pytorch_grad_cam import HiResCAM as ReferenceHiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from mammoxai.nets import MammoClassifier
from mammoxai.saliency import CAM, GradCAM, GradCAMPlusPlus, HiResCAM
from mammoxai.saliency.gradcam import find_layer

CLASSES = 4
TOLERANCE = 1e-5
LOGIT_SCALE = 1e6
"""Factor on the last linear layer for the Grad-CAM++ comparison: it scales every gradient by 1e6, so ``2 G^2``
grows from ~1e-7 to ~1e5 and pytorch-grad-cam's 1e-6 guard no longer shows in float32 (at 1e4 it still moved
ResNet-18 ``layer3`` maps by 1.6e-5)."""


def mammo_classifier() -> nn.Module:
    return MammoClassifier(num_classes=CLASSES, channels=(4, 8, 16, 16)).eval()


def resnet18() -> nn.Module:
    network = torchvision.models.resnet18(weights=None, num_classes=CLASSES)
    network.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return network.eval()


NETWORKS = {"mammo_classifier": mammo_classifier, "resnet18": resnet18}
INTERMEDIATE = {"mammo_classifier": "features.block2", "resnet18": "layer3"}
"""Layers whose gradients vary over the feature map: Grad-CAM, Grad-CAM++ and HiResCAM differ there."""
LAST = {"mammo_classifier": "features.block3", "resnet18": "layer4"}
"""Layers pooled straight into the linear layer (global average pooling, then ``fc``)."""
LAYERS = [*INTERMEDIATE.items(), *LAST.items()]
REFERENCES = {GradCAM: ReferenceGradCAM, GradCAMPlusPlus: ReferenceGradCAMPlusPlus, HiResCAM: ReferenceHiResCAM}


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 1, 64, 64)


def scaled_logits(network: nn.Module) -> nn.Module:
    """The network with its last linear layer multiplied by :data:`LOGIT_SCALE` (same maps for every method but
    Grad-CAM++, whose closed form is not scale-invariant)."""
    linear = network.fc
    with torch.no_grad():
        linear.weight *= LOGIT_SCALE
        linear.bias *= LOGIT_SCALE
    return network


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    difference = (actual - expected).abs().max().item()
    assert difference <= TOLERANCE, f"maps differ by up to {difference:.2e}"


def pytorch_grad_cam(method: type, network: nn.Module, layer: str, images: torch.Tensor, classes: list[int]):
    """pytorch-grad-cam's (B, H, W) maps, one target class per image; its hooks are removed on leaving."""
    reference = REFERENCES[method]
    with reference(model=network, target_layers=[find_layer(network, layer)]) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(index) for index in classes])
    return torch.from_numpy(maps)


def captum_grad_cam(network: nn.Module, layer: str, images: torch.Tensor, class_index: int) -> torch.Tensor:
    """Captum's LayerGradCam with ReLU on the feature-map grid, upsampled bilinearly, min-max scaled: (B, H, W)."""
    grad_cam = LayerGradCam(network, find_layer(network, layer))
    raw = grad_cam.attribute(images, target=class_index, relu_attributions=True)
    maps = LayerAttribution.interpolate(raw.detach(), tuple(images.shape[2:]), interpolate_mode="bilinear")[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


def gradcampp_by_hand(network: nn.Module, layer: str, images: torch.Tensor, class_index: int, guard: float):
    """Grad-CAM++ in float64 with ``guard`` added to the denominator of alpha, upsampled and min-max scaled."""
    captured = []
    hook = find_layer(network, layer).register_forward_hook(lambda _m, _i, output: captured.append(output))
    logits = network(images.clone().requires_grad_(True))
    hook.remove()
    (gradients,) = torch.autograd.grad(logits[:, class_index].sum(), captured[0])
    gradients, activations = gradients.double(), captured[0].detach().double()
    denominator = 2 * gradients**2 + activations.sum(dim=(2, 3), keepdim=True) * gradients**3 + guard
    alpha = torch.where(gradients != 0, gradients**2 / denominator, 0.0)
    weights = (alpha * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)
    maps = F.relu((weights * activations).sum(dim=1, keepdim=True))
    maps = F.interpolate(maps, size=tuple(images.shape[2:]), mode="bilinear", align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    return ((maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low)).float()


@pytest.mark.parametrize("network_name, layer", LAYERS)
@pytest.mark.parametrize("method", [GradCAM, HiResCAM])
def test_every_class_matches_pytorch_grad_cam(method, network_name, layer, images):
    network = NETWORKS[network_name]()
    maps, _ = method(network, layer)(images, class_idx=list(range(CLASSES)))

    for index in range(CLASSES):
        expected = pytorch_grad_cam(method, network, layer, images, [index] * len(images))
        assert_close(maps[:, index], expected)


@pytest.mark.parametrize("network_name, layer", LAYERS)
def test_gradcampp_matches_pytorch_grad_cam_once_its_guard_is_negligible(network_name, layer, images):
    network = scaled_logits(NETWORKS[network_name]())
    maps, _ = GradCAMPlusPlus(network, layer)(images, class_idx=list(range(CLASSES)))

    for index in range(CLASSES):
        expected = pytorch_grad_cam(GradCAMPlusPlus, network, layer, images, [index] * len(images))
        assert_close(maps[:, index], expected)


def test_gradcampp_differs_from_pytorch_grad_cam_only_by_its_denominator_guard(images):
    network, layer = mammo_classifier(), "features.block2"
    ours, _ = GradCAMPlusPlus(network, layer)(images, class_idx=1)
    reference = pytorch_grad_cam(GradCAMPlusPlus, network, layer, images, [1] * len(images))

    assert (ours[:, 0] - reference).abs().max() > 0.05  # the guard matters at these gradient sizes ...
    assert_close(reference, gradcampp_by_hand(network, layer, images, 1, guard=1e-6))  # ... and is all it is
    assert_close(ours[:, 0], gradcampp_by_hand(network, layer, images, 1, guard=0.0))


@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus, HiResCAM])
@pytest.mark.parametrize("network_name", sorted(NETWORKS))
def test_predicted_and_per_image_classes_match_pytorch_grad_cam(method, network_name, images):
    network = scaled_logits(NETWORKS[network_name]())
    layer = INTERMEDIATE[network_name]
    cam = method(network, layer)

    predicted_maps, logits = cam(images)
    chosen = torch.tensor([3, 0, 2])
    chosen_maps, _ = cam(images, class_idx=chosen)

    predicted = logits.argmax(dim=1).tolist()
    assert_close(predicted_maps[:, 0], pytorch_grad_cam(method, network, layer, images, predicted))
    assert_close(chosen_maps[:, 0], pytorch_grad_cam(method, network, layer, images, chosen.tolist()))


@pytest.mark.parametrize("network_name, layer", LAST.items())
def test_cam_matches_pytorch_grad_cam_where_the_two_coincide(network_name, layer, images):
    # after a layer pooled straight into the linear layer, G^k = w_k^c / (h w) everywhere: Grad-CAM is ReLU(CAM)
    # up to a positive factor (Selvaraju et al. 2017, Sec. 3.1), and pytorch-grad-cam has no CAM of its own
    network = NETWORKS[network_name]()
    maps, _ = CAM(network, layer, classifier_layer="fc")(images, class_idx=list(range(CLASSES)))

    for index in range(CLASSES):
        assert_close(maps[:, index], pytorch_grad_cam(GradCAM, network, layer, images, [index] * len(images)))


@pytest.mark.parametrize("network_name, layer", LAYERS)
def test_gradcam_matches_captum_layer_gradcam(network_name, layer, images):
    network = NETWORKS[network_name]()
    maps, _ = GradCAM(network, layer)(images, class_idx=list(range(CLASSES)))

    for index in range(CLASSES):
        expected = captum_grad_cam(network, layer, images, index)
        assert_close(maps[:, index], expected)
