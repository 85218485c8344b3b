"""The metadata-pretraining network, its backbones and its losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mammoxai.errors import MammoXAIError
from mammoxai.nets import BACKBONES, MetadataNet, build_backbone
from mammoxai.nets.backbones import adapt_input_channels
from mammoxai.training.losses import (
    MetadataLoss,
    PretrainingLoss,
    SupervisedContrastiveLoss,
    masked_cross_entropy,
)

FIELDS = {"xray_system": 3, "view": 2, "kvp": 5}


def small_net(**kwargs) -> MetadataNet:
    return MetadataNet("mammo_cnn", FIELDS, embed_dim=16, matching_dim=8, **kwargs)


# -- network ------------------------------------------------------------------------------------------------------
def test_forward_returns_features_task_representations_sum_logits_and_matching():
    net = small_net()
    out = net(torch.rand(3, 1, 64, 48))
    assert out["features"].shape == (3, 64)
    assert set(out["z_tasks"]) == set(FIELDS) and all(z.shape == (3, 16) for z in out["z_tasks"].values())
    torch.testing.assert_close(out["z"], sum(out["z_tasks"].values()))
    assert {name: logits.shape[1] for name, logits in out["logits"].items()} == FIELDS
    assert out["match"].shape == (3, 8)
    torch.testing.assert_close(out["match"].norm(dim=1), torch.ones(3))
    assert net.task_names == list(FIELDS)


@pytest.mark.parametrize(
    "backbone, features",
    [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("efficientnet-b0", 1280), ("EfficientNet_B0", 1280)],
)
def test_named_backbones_take_one_channel_and_return_pooled_features(backbone, features):
    module, num_features = build_backbone(backbone, in_channels=1)
    assert num_features == features
    assert module.eval()(torch.rand(1, 1, 64, 64)).shape == (1, features)


def test_unknown_backbone_is_refused_with_the_known_ones():
    with pytest.raises(MammoXAIError, match="not a known backbone") as error:
        MetadataNet("vgg16", FIELDS)
    assert all(name in str(error.value) for name in ("resnet18", "resnet50", "efficientnet_b0"))
    assert set(BACKBONES) >= {"resnet18", "resnet34", "resnet50", "efficientnet_b0"}


def test_heads_read_the_sum_so_ablating_one_task_changes_every_head():
    net = small_net().eval()
    images = torch.rand(4, 1, 64, 48)
    with torch.no_grad():
        out = net(images)
        ablated = net.field_logits(net.represent(images, ablate={"kvp": torch.zeros(16)}))
    for name in FIELDS:
        torch.testing.assert_close(net.field_logits(out["z"])[name], out["logits"][name])
        assert not torch.allclose(ablated[name], out["logits"][name])


def test_represent_replaces_the_named_task_representation():
    net = small_net().eval()
    images = torch.rand(4, 1, 64, 48)
    mean_view = torch.full((16,), 0.5)
    with torch.no_grad():
        z_tasks = net(images)["z_tasks"]
        torch.testing.assert_close(net.represent(images), sum(z_tasks.values()))
        expected = z_tasks["xray_system"] + mean_view + z_tasks["kvp"]
        torch.testing.assert_close(net.represent(images, ablate={"view": mean_view}), expected)


def test_ablating_an_unknown_task_or_with_a_wrong_size_is_refused():
    net = small_net()
    with pytest.raises(MammoXAIError, match="not a task"):
        net.represent(torch.rand(1, 1, 64, 48), ablate={"age": torch.zeros(16)})
    with pytest.raises(MammoXAIError, match="shape"):
        net.represent(torch.rand(1, 1, 64, 48), ablate={"kvp": torch.zeros(15)})


def test_a_task_loss_trains_only_its_own_projection():
    net = small_net()
    F.cross_entropy(net(torch.rand(4, 1, 64, 48))["logits"]["view"], torch.tensor([0, 1, 0, 1])).backward()
    assert net.projections["view"][0].weight.grad.abs().sum() > 0
    assert net.heads["view"].weight.grad.abs().sum() > 0
    for other in ("xray_system", "kvp"):
        assert net.projections[other][0].weight.grad is None


def test_without_isolation_a_task_loss_trains_every_projection():
    net = small_net(isolate_task_gradients=False)
    F.cross_entropy(net(torch.rand(4, 1, 64, 48))["logits"]["view"], torch.tensor([0, 1, 0, 1])).backward()
    assert all(net.projections[name][0].weight.grad.abs().sum() > 0 for name in FIELDS)


def test_config_rebuilds_the_same_architecture():
    net = small_net()
    rebuilt = MetadataNet(**net.config)
    rebuilt.load_state_dict(net.state_dict())
    images = torch.rand(2, 1, 64, 48)
    torch.testing.assert_close(rebuilt.eval()(images)["z"], net.eval()(images)["z"])


def test_no_metadata_field_is_refused():
    with pytest.raises(MammoXAIError, match="no metadata task"):
        MetadataNet("mammo_cnn", {})


# -- backbone weights from a local file -----------------------------------------------------------------------------
def test_imagenet_style_weights_load_with_the_rgb_kernels_summed_to_grey(tmp_path):
    rgb = torchvision.models.resnet18(weights=None).eval()
    torch.save(rgb.state_dict(), tmp_path / "resnet18.pth")
    grey, _ = build_backbone("resnet18", in_channels=1, weights=tmp_path / "resnet18.pth")
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    rgb.fc = torch.nn.Identity()
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey.eval()(image), rgb(image.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(MammoXAIError, match="does not fit resnet18"):
        build_backbone("resnet18", weights=tmp_path / "resnet34.pth")


def test_missing_or_unreadable_weights_files_are_reported(tmp_path):
    with pytest.raises(MammoXAIError, match="not found"):
        build_backbone("resnet18", weights=tmp_path / "absent.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(MammoXAIError, match="not a readable PyTorch weights file"):
        build_backbone("resnet18", weights=tmp_path / "notes.pth")


def test_adapting_kernels_to_more_channels_keeps_the_response_to_a_grey_image():
    weight = torch.randn(4, 3, 3, 3)
    image = torch.rand(1, 1, 8, 8)
    five = adapt_input_channels(weight, 5)
    assert five.shape == (4, 5, 3, 3)
    expected = F.conv2d(image.expand(-1, 3, -1, -1), weight)
    torch.testing.assert_close(F.conv2d(image.expand(-1, 5, -1, -1), five), expected)


# -- losses ------------------------------------------------------------------------------------------------------
def test_masked_cross_entropy_averages_over_known_labels_only():
    logits = torch.randn(5, 3)
    target = torch.tensor([0, -1, 2, -1, 1])
    known = target >= 0
    torch.testing.assert_close(masked_cross_entropy(logits, target), F.cross_entropy(logits[known], target[known]))


def test_a_field_missing_from_the_whole_batch_contributes_zero_not_nan():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((4,), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(4, 3))


def test_metadata_loss_sums_the_fields_with_their_weights():
    logits = {"view": torch.randn(4, 2), "kvp": torch.randn(4, 5), "age": torch.randn(4, 4)}
    targets = {"view": torch.tensor([0, 1, 1, 0]), "kvp": torch.tensor([4, -1, 0, 2]), "age": torch.arange(4)}
    loss = MetadataLoss({"view": 2.0, "kvp": 0.5, "age": 0.0})
    view, kvp = (masked_cross_entropy(logits[name], targets[name]) for name in ("view", "kvp"))
    expected = 2.0 * view + 0.5 * kvp
    torch.testing.assert_close(loss(logits, targets), expected)


@pytest.mark.parametrize("weight", [-1.0, math.nan, "1"])
def test_metadata_loss_refuses_weights_that_are_not_non_negative_numbers(weight):
    with pytest.raises(MammoXAIError, match="loss weight of 'view'"):
        MetadataLoss({"view": weight})


def test_metadata_loss_names_a_field_the_network_lacks():
    with pytest.raises(MammoXAIError, match="density"):
        MetadataLoss({"density": 1.0})({"view": torch.randn(2, 2)}, {"view": torch.tensor([0, 1])})


def _reference_supcon(z: torch.Tensor, groups: list[int], temperature: float) -> torch.Tensor:
    """Khosla et al. eq. 2 written out with loops, over the images of known group."""
    z = F.normalize(z, dim=1)
    known = [i for i, group in enumerate(groups) if group >= 0]
    losses = []
    for i in known:
        positives = [p for p in known if p != i and groups[p] == groups[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(z[i] @ z[a] / temperature) for a in known if a != i)
        log_probabilities = [torch.log(torch.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]
        losses.append(-sum(log_probabilities) / len(positives))
    return torch.stack(losses).mean()


def test_supervised_contrastive_loss_matches_the_formula_of_khosla_et_al():
    z = torch.randn(7, 4)
    groups = [0, 0, 1, 1, 1, 2, -1]
    value = SupervisedContrastiveLoss(temperature=0.5)(z, torch.tensor(groups))
    torch.testing.assert_close(value, _reference_supcon(z, groups, 0.5))


def test_contrastive_loss_is_lower_when_views_of_a_study_agree():
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(3)[groups] * 5
    together = centres + 0.1 * torch.randn(6, 3)
    apart = together[torch.tensor([0, 2, 4, 1, 3, 5])]
    loss = SupervisedContrastiveLoss(temperature=0.1)
    assert loss(together, groups) < loss(apart, groups)


def test_a_batch_without_positive_pairs_gives_zero_contrastive_loss_and_finite_gradients():
    z = torch.randn(4, 3, requires_grad=True)
    value = SupervisedContrastiveLoss()(z, torch.tensor([0, 1, -1, -1]))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(z.grad).all()


def test_unknown_groups_leave_no_nan_in_the_gradient():
    z = torch.randn(5, 3, requires_grad=True)
    SupervisedContrastiveLoss()(z, torch.tensor([0, 0, -1, 1, -1])).backward()
    assert torch.isfinite(z.grad).all()
    assert torch.equal(z.grad[2], torch.zeros(3)) and torch.equal(z.grad[4], torch.zeros(3))


def test_pretraining_loss_terms_add_up_to_the_total():
    net = small_net()
    out = net(torch.rand(4, 1, 64, 48))
    fields = {"xray_system": torch.tensor([0, 1, 2, -1]), "view": torch.tensor([0, 1, 0, 1])}
    fields["kvp"] = torch.full((4,), -1)  # recorded on no image of the batch
    targets = {"fields": fields, "group": torch.tensor([0, 0, 1, 1])}
    metadata = MetadataLoss({"xray_system": 1.0, "view": 2.0, "kvp": 1.0})
    loss = PretrainingLoss(metadata, SupervisedContrastiveLoss(0.1), contrastive_weight=0.5)
    terms = loss.terms(out, targets)
    assert terms["loss/kvp"].item() == 0.0
    expected = terms["loss/xray_system"] + 2.0 * terms["loss/view"] + terms["loss/kvp"]
    expected = expected + 0.5 * terms["loss/contrastive"]
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(loss(out, targets), expected)


def test_losses_fall_while_fitting_a_batch():
    net = small_net()
    view = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    images = torch.rand(8, 1, 64, 48)
    images[view == 1, :, :32] += 1.0  # as in a mammogram, the view shows; the two views of a study differ
    targets = {
        "fields": {
            "xray_system": torch.tensor([0, 0, 1, 1, 2, 2, -1, -1]),
            "view": view,
            "kvp": torch.tensor([4, 4, 3, -1, 1, 1, 0, 0]),
        },
        "group": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
    }
    loss = PretrainingLoss(MetadataLoss(dict.fromkeys(FIELDS, 1.0)), SupervisedContrastiveLoss(0.1))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    history = []
    for _ in range(15):
        terms = loss.terms(net(images), targets)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in terms.items()})
    for name in history[0]:
        assert history[-1][name] < history[0][name], name
