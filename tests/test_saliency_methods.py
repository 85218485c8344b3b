"""Saliency methods: each agrees with a straightforward reference, and maps land on the right anatomy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mammoxai.errors import MammoXAIError
from mammoxai.io.mammogram import Mammogram
from mammoxai.io.preprocess import prepare_image
from mammoxai.nets import MammoClassifier, MetadataClassifier
from mammoxai.saliency import (
    CAM,
    RELAX,
    CorRELAX,
    GradCAM,
    MaskedForward,
    Occlusion,
    RandomMasks,
    get_method,
)
from mammoxai.saliency.gradcam import find_layer, normalise_maps


class ToyEncoder(nn.Module):
    """A small conv encoder with a named representation (``pool``) and 3 class logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 5, stride=2, padding=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.tanh(self.conv(x))), 1))


class BoxScore(nn.Module):
    """Class 1's logit is 10 × the mean of the pixels in a box, class 0's is zero: evidence lives in the box only."""

    def __init__(self, box: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0, x0, y1, x1 = self.box
        score = 10.0 * x[:, 0, y0:y1, x0:x1].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def official_relax(net: nn.Module, image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-mask loop of the official RELAX code: a weighted Welford update of importance and uncertainty."""
    capture = []
    handle = net.pool.register_forward_hook(lambda _m, _i, output: capture.append(output.flatten(1)))
    with torch.no_grad():
        net(image)
        reference = capture[-1]
        importance = torch.zeros(image.shape[2:], dtype=torch.float64)
        variance_sum = torch.zeros_like(importance)
        weights = torch.full_like(importance, 1e-10)
        for mask in masks.double():
            net(image * mask.float())
            s = F.cosine_similarity(capture[-1], reference).double()
            weights += mask
            previous = importance.clone()
            importance += (s - previous) * mask / weights
            variance_sum += (s - importance) * (s - previous) * mask
    handle.remove()
    return importance, variance_sum / (weights - 1)


def test_relax_matches_the_official_per_mask_loop():
    net = ToyEncoder().eval()
    image = torch.rand(1, 1, 32, 32)
    relax = RELAX(net, representation_layer="pool", num_masks=300, grid=4, keep_prob=0.5, seed=3, chunk_size=64)
    result = relax.explain(image)
    masks = RandomMasks(300, (32, 32), grid=4, keep_prob=0.5, seed=3)(0, 300)
    importance, uncertainty = official_relax(net, image, masks)
    assert torch.allclose(result.importance[0].double(), importance, atol=1e-5)
    assert torch.allclose(result.uncertainty[0].double(), uncertainty, rtol=1e-3, atol=1e-7)
    assert uncertainty.max() > 0  # the comparison is not between two zero maps


def test_masks_do_not_depend_on_the_chunk_size():
    masks = RandomMasks(50, (20, 24), grid=5, keep_prob=0.3, seed=1)
    assert torch.equal(masks(0, 50), torch.cat([masks(0, 7), masks(7, 50)]))
    assert 0.2 < masks(0, 50).mean() < 0.4  # keeps about keep_prob of the image
    assert masks(0, 50).std(dim=0).amin() > 0  # every pixel is masked differently by different masks


def test_relax_of_a_batch_equals_relax_image_by_image():
    net = ToyEncoder().eval()
    images = torch.rand(3, 1, 24, 24)
    relax = RELAX(net, representation_layer="pool", num_masks=64, grid=4, seed=0, chunk_size=40)
    batch = relax.explain(images)
    for index in range(3):
        single = relax.explain(images[index : index + 1])
        assert torch.allclose(batch.importance[index], single.importance[0], atol=1e-6)


def reference_correlax(net: nn.Module, image: torch.Tensor, size: int, stride: int, masks: torch.Tensor):
    """Per view and per mask, as described in the paper: Pearson r of similarity and class probability per view;
    prediction and correlation maps as the uniform-kernel average of the views covering each pixel."""
    capture = []
    handle = net.pool.register_forward_hook(lambda _m, _i, output: capture.append(output.flatten(1)))
    height, width = image.shape[2:]
    prediction = torch.zeros(3, height, width, dtype=torch.float64)
    correlation = torch.zeros_like(prediction)
    count = torch.zeros(height, width, dtype=torch.float64)
    with torch.no_grad():
        for y in range(0, height - size + 1, stride):
            for x in range(0, width - size + 1, stride):
                view = image[:, :, y : y + size, x : x + size]
                probabilities = torch.softmax(net(view), dim=1)[0].double()
                reference = capture[-1]
                similarities, masked = [], []
                for mask in masks:
                    masked.append(torch.softmax(net(view * mask), dim=1)[0].double())
                    similarities.append(F.cosine_similarity(capture[-1], reference).double()[0])
                s, p = torch.stack(similarities).numpy(), torch.stack(masked).numpy()
                r = torch.tensor([np.corrcoef(s, p[:, c])[0, 1] for c in range(3)])
                prediction[:, y : y + size, x : x + size] += probabilities[:, None, None]
                correlation[:, y : y + size, x : x + size] += r[:, None, None]
                count[y : y + size, x : x + size] += 1
    handle.remove()
    return prediction / count, correlation / count


def test_correlax_matches_the_per_view_per_mask_reference():
    net = ToyEncoder().eval()
    image = torch.rand(1, 1, 40, 48) + 0.1  # all breast: every view is run
    correlax = CorRELAX(
        net,
        "pool",
        view_size=24,
        stride=8,
        num_masks=40,
        grid=4,
        keep_prob=0.5,
        kernel_sigma=None,
        view_batch=3,
        chunk_size=50,
        seed=2,
    )
    result = correlax.explain(image)
    masks = RandomMasks(40, (24, 24), grid=4, keep_prob=0.5, seed=2)(0, 40)
    prediction, correlation = reference_correlax(net, image, 24, 8, masks)
    assert result.views == [3 * 4] and result.refined == [12]
    assert torch.allclose(result.prediction[0].double(), prediction, atol=1e-5)
    assert torch.allclose(result.correlation[0].double(), correlation, atol=1e-4)
    assert correlation.abs().max() > 0.1


def test_correlax_skips_background_views_and_refines_the_most_suspicious():
    net = ToyEncoder().eval()
    image = torch.zeros(1, 1, 48, 48)
    image[..., :, :16] = torch.rand(48, 16) + 0.1  # breast only along the left edge
    every = CorRELAX(net, "pool", view_size=16, stride=16, num_masks=8, grid=2).explain(image)
    fast = CorRELAX(net, "pool", view_size=16, stride=16, num_masks=8, grid=2, refine_fraction=0.5).explain(image)
    assert every.views == [3] and every.refined == [3]
    assert fast.refined == [2]
    assert torch.all(every.prediction[0, :, :, 16:] == 0)  # no view over the background, nothing assembled there


def test_correlax_prediction_map_runs_no_masked_pass():
    net = ToyEncoder().eval()
    image = torch.rand(1, 1, 40, 48) + 0.1  # all breast: 3 x 4 views
    settings = dict(view_size=24, stride=8, num_masks=40, grid=4, background_class=None, seed=2)
    full = CorRELAX(net, "pool", **settings).explain(image)
    passes = []
    net.register_forward_hook(lambda _module, inputs, _output: passes.append(len(inputs[0])))
    maps, scores = CorRELAX(net, "pool", map="prediction", **settings)(image, class_idx=[1])
    assert sum(passes) == 12  # one unmasked pass per view; the correlation map's 12 x 40 masked passes are skipped
    torch.testing.assert_close(maps[0, 0], normalise_maps(full.prediction[:, 1:2])[0, 0])
    torch.testing.assert_close(scores, full.prediction.amax(dim=(2, 3)))


def test_cam_equals_gradcam_for_a_gap_linear_network():
    net = MammoClassifier(num_classes=3, channels=(4, 8, 8)).eval()
    images = torch.rand(2, 1, 64, 48)
    cam, _ = CAM(net, "features.block2", classifier_layer="fc")(images, class_idx=[0, 1, 2])
    gradcam, _ = GradCAM(net, "features.block2")(images, class_idx=[0, 1, 2])
    assert torch.allclose(cam, gradcam, atol=1e-5)
    assert cam.amax() == 1.0


@pytest.mark.parametrize(
    "network, layer",
    [
        # the served network: fc reads sum_k projection_k(pool(block4)), and its 64 inputs match block4's 64 channels
        (MetadataClassifier("mammo_cnn", num_classes=3, fields={"view": 2}, embed_dim=64), "backbone.features.block4"),
        # a block of as many channels as fc has inputs, but not the one pooled into it
        (MammoClassifier(num_classes=3), "features.block3"),
    ],
)
def test_cam_refuses_a_linear_layer_that_does_not_read_the_pooled_target_layer(network, layer):
    assert network.fc.in_features == 64 == find_layer(network, layer)[1][0].out_channels  # a channel check passes
    with pytest.raises(MammoXAIError, match=f"saliency cam: 'fc' does not read the global average pool of {layer!r}"):
        get_method("cam", network, target_layer=layer)


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_perturbation_maps_peak_on_the_evidence(method):
    box = (8, 20, 16, 28)
    net = BoxScore(box)
    image = torch.ones(1, 1, 40, 40)
    settings = {"occlusion": {"patch": 6, "stride": 2}, "rise": {"num_masks": 1000, "grid": 5}}[method]
    maps, _ = get_method(method, net, **settings)(image, class_idx=1)
    inside = maps[0, 0, box[0] : box[2], box[1] : box[3]].mean()
    assert inside > 0.7
    assert maps[0, 0, 30:, :10].mean() < inside - 0.4  # far from the evidence, much less


def test_occlusion_is_the_mean_logit_drop_of_the_patches_covering_a_pixel():
    net = BoxScore((0, 0, 4, 4))
    image = torch.ones(1, 1, 8, 8)
    maps, _ = Occlusion(net, patch=4, stride=4)(image, class_idx=1)
    expected = torch.zeros(8, 8)
    expected[:4, :4] = 1.0  # normalised; only the top-left patch hides the evidence
    assert torch.equal(maps[0, 0], expected)


def breast_with_lesion(flip: bool) -> Mammogram:
    """A half-ellipse breast against the left edge with a bright lesion; mirrored when ``flip``."""
    rows, cols = np.mgrid[0:160, 0:128]
    breast = ((rows - 80) / 75.0) ** 2 + (cols / 100.0) ** 2 < 1
    pixels = np.where(breast, 300.0, 0.0).astype(np.float32)
    pixels[100:112, 40:52] = 1000.0
    return Mammogram(pixels=pixels[:, ::-1].copy() if flip else pixels, spacing=(0.1, 0.1))


def bright_spot_net() -> nn.Module:
    """Class 1 responds to bright pixels (a fixed positive filter), so its maps should find the lesion."""
    net = MammoClassifier(num_classes=2, channels=(4, 4)).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(0.05)
        net.fc.weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
    return net


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_flipped_input_restores_to_the_same_anatomy(method):
    net = bright_spot_net()
    settings = {"gradcam": {"target_layer": "features.block1"}, "occlusion": {"patch": 8, "stride": 4}}[method]
    saliency = get_method(method, net, **settings)
    restored = []
    for flip in (False, True):
        image, geometry = prepare_image(breast_with_lesion(flip), (96, 80))
        maps, _ = saliency(image[None], class_idx=1)
        restored.append(geometry.restore(maps[0, 0]).numpy())
    assert geometry.flip  # the mirrored file really went through the flip
    np.testing.assert_allclose(restored[1][:, ::-1], restored[0], atol=1e-4)
    row, col = np.unravel_index(restored[0].argmax(), restored[0].shape)
    assert 96 <= row < 116 and 36 <= col < 56  # the maximum is on the lesion in original pixels


def test_oom_on_the_gpu_halves_the_chunk_and_gives_the_same_result():
    class Picky(ToyEncoder):
        """Stands in for a GPU without room for more than 16 images at once (cannot exist on a CPU runner)."""

        def forward(self, x):
            if x.shape[0] > 16:
                raise torch.cuda.OutOfMemoryError("out of memory")
            return super().forward(x)

    net = Picky().eval()
    images = torch.rand(2, 1, 16, 16)
    relax = RELAX(net, "pool", num_masks=40, grid=4, chunk_size=64)
    small = RELAX(ToyEncoder().eval(), "pool", num_masks=40, grid=4, chunk_size=8)
    assert torch.allclose(relax.explain(images).importance, small.explain(images).importance, atol=1e-6)
    assert relax.engine.chunk_size == 16


def test_unknown_method_names_the_available_ones():
    with pytest.raises(MammoXAIError, match="saliency method: 'lime' is not available.*gradcam.*correlax"):
        get_method("lime", ToyEncoder())


def test_unknown_preset_and_setting_are_refused():
    with pytest.raises(MammoXAIError, match="'quick' is not a preset.*fast"):
        get_method("rise", ToyEncoder(), preset="quick")
    with pytest.raises(MammoXAIError, match=r"\['masks'\] are not settings"):
        get_method("rise", ToyEncoder(), masks=10)


def test_presets_carry_the_published_correlax_settings_and_explicit_settings_win():
    faithful = get_method("correlax", ToyEncoder(), preset="faithful")
    assert (faithful.grid, faithful.keep_prob, faithful.num_masks, faithful.stride) == (8, 0.5, 1280, 32)
    assert get_method("correlax", ToyEncoder(), preset="fast", num_masks=10).num_masks == 10


@pytest.mark.parametrize("method", ["cam", "gradcam", "hirescam", "gradcampp", "occlusion", "rise", "relax"])
def test_a_class_the_model_lacks_is_a_clear_error(method):
    net = ToyEncoder()
    settings = {"target_layer": "conv"} if "cam" in method else {"num_masks": 4} if method in ("rise", "relax") else {}
    if method == "cam":  # CAM needs the linear layer on the global average pool, which ToyEncoder's 2 x 2 pool is not
        net, settings = MammoClassifier(num_classes=3, channels=(4, 8, 8)), {"target_layer": "features.block2"}
    with pytest.raises(MammoXAIError, match="class index 5 is out of range for 3 classes"):
        get_method(method, net, **settings)(torch.rand(1, 1, 16, 16), class_idx=5)


def test_image_smaller_than_one_local_view_is_refused():
    with pytest.raises(MammoXAIError, match="CorRELAX input: 200x300 pixels is smaller than one 256x256 local view"):
        get_method("correlax", ToyEncoder(), preset="fast")(torch.rand(1, 1, 200, 300))


def test_masked_forward_returns_float32_features_of_the_named_layer():
    engine = MaskedForward(ToyEncoder(), representation_layer="pool", chunk_size=10)
    chunks = list(engine(torch.rand(2, 1, 16, 16), RandomMasks(12, (16, 16), grid=2)))
    assert [chunk.masks.shape[0] for chunk in chunks] == [5, 5, 2]
    assert chunks[0].features.shape == (2, 5, 24) and chunks[0].features.dtype == torch.float32
    assert chunks[0].logits.shape == (2, 5, 3)
