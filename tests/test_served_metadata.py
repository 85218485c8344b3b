"""The served network keeps its metadata heads: built from a pretraining checkpoint or from scratch, trained jointly,
and its metadata predictions compared with the DICOM header in every prediction record.

Predictor tests set the metadata heads' biases (weights zero) so that what the pixels "look like" is known
exactly: they test the comparison with the header and the QC threshold, not learning, which train.json's own
tests cover.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dicom_factory import write_mammo_dicom

from mammoxai.errors import MammoXAIError
from mammoxai.inference import MammogramPredictor
from mammoxai.nets import MammoClassifier, MetadataClassifier, MetadataNet
from mammoxai.schema import validate_prediction
from mammoxai.training.finetune import (
    MetadataClassifierLoss,
    MetadataInferer,
    MetadataTargets,
    build_metadata_classifier,
)
from mammoxai.training.pretrain import CheckpointInfo, select_fields

CLASSES = ["normal", "benign", "malignant"]
FIELDS = ["view", "thickness"]
SIZE = (64, 48)
THICKNESS = {"name": "thickness", "type": "binned", "keys": ["BodyPartThickness"], "units": "mm", "range": [5, 200]}


def small_net(fields: dict[str, int] | None = None) -> MetadataClassifier:
    fields = fields or {"view": 4, "thickness": 5}
    return MetadataClassifier("mammo_cnn", len(CLASSES), fields, embed_dim=8, matching_dim=4)


def breast_pixels(rows: int = 120, columns: int = 96) -> np.ndarray:
    """A uint16 half-ellipse breast against the chest wall on the left, with texture."""
    y, x = np.mgrid[0:rows, 0:columns]
    inside = (x / (0.8 * columns)) ** 2 + ((y - rows / 2) / (0.45 * rows)) ** 2 < 1
    texture = np.random.default_rng(0).integers(0, 400, size=(rows, columns))
    return np.where(inside, 2000 + texture, 50).astype(np.uint16)


def save_pretrained(path, fields=FIELDS, extra_fields=(), seed=0) -> MetadataNet:
    """A metadata-pretraining checkpoint as configs/pretrain.json writes it (random weights)."""
    torch.manual_seed(seed)
    space = select_fields(fields, extra_fields=extra_fields)
    network = MetadataNet("mammo_cnn", {name: space.num_classes(name) for name in space.fields}, 8, 4)
    torch.save({"network": network.state_dict(), "info": CheckpointInfo(network, space, SIZE).state_dict()}, path)
    return network.eval()


# -- the network --------------------------------------------------------------------------------------------------
def test_pretrained_checkpoint_keeps_its_heads_in_the_served_network(tmp_path):
    pretrained = save_pretrained(tmp_path / "pretrained.pt")
    torch.manual_seed(1)
    served = build_metadata_classifier(
        "mammo_cnn", 3, select_fields(FIELDS), init="pretrained", init_weights=tmp_path / "pretrained.pt",
        embed_dim=8, matching_dim=4,
    ).eval()  # fmt: skip
    images = torch.rand(2, 1, *SIZE)
    logits, fields = served.forward_with_metadata(images)
    with torch.no_grad():
        expected = pretrained(images)["logits"]
    assert list(fields) == FIELDS
    for name in FIELDS:
        torch.testing.assert_close(fields[name], expected[name])
    torch.testing.assert_close(logits, served(images))  # forward is the class output of the same pass
    assert logits.shape == (2, 3)


def test_pretrained_tasks_that_are_not_served_are_dropped(tmp_path):
    save_pretrained(tmp_path / "pretrained.pt", fields=["view", "thickness", "kvp"])
    served = build_metadata_classifier(
        "mammo_cnn", 3, select_fields(FIELDS), init="pretrained", init_weights=tmp_path / "pretrained.pt",
        embed_dim=8, matching_dim=4,
    )  # fmt: skip
    assert served.task_names == FIELDS


@pytest.mark.parametrize(
    ("fields", "extra_fields", "message"),
    [
        (["view"], (), r"has no pretrained head for \['thickness'\]"),
        (  # same number of bins, other edges: the head would silently mean something else
            FIELDS,
            [{**THICKNESS, "edges": [30, 45, 60, 75]}],
            "pretrained field 'thickness' with classes",
        ),
        (
            FIELDS,
            [{**THICKNESS, "edges": [50]}],
            "pretrained field 'thickness' with classes",
        ),
    ],
)
def test_a_pretrained_checkpoint_with_other_fields_or_bins_is_refused(tmp_path, fields, extra_fields, message):
    save_pretrained(tmp_path / "pretrained.pt", fields=fields, extra_fields=extra_fields)
    with pytest.raises(MammoXAIError, match=message) as error:
        build_metadata_classifier(
            "mammo_cnn", 3, select_fields(FIELDS), init="pretrained", init_weights=tmp_path / "pretrained.pt",
            embed_dim=8, matching_dim=4,
        )  # fmt: skip
    assert "pretrained.pt" in str(error.value)


def test_grad_cam_target_of_the_served_network_is_its_last_backbone_block():
    net = small_net()
    assert net.last_block == "backbone.features.block4"
    net.freeze("all_but_head")
    trainable = {name.split(".")[0] for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"projections", "heads", "matcher", "fc"}


# -- joint training -----------------------------------------------------------------------------------------------
def test_joint_loss_adds_the_header_fields_and_masks_unknown_values(tmp_path):
    space = select_fields(FIELDS)
    records = [
        {"path": "a.dcm", "view": "MLO", "thickness_mm": 47.5},
        {"path": "b.dcm", "view": "CC"},  # no thickness in the header
    ]
    images, targets = MetadataTargets(records, space)(
        {"image": torch.rand(3, 1, *SIZE), "label": torch.tensor([0, 2, 1]), "path": ["a.dcm", "b.dcm", "c.png"]}
    )
    assert targets["fields"]["view"].tolist() == [1, 0, -1]
    assert targets["fields"]["thickness"].tolist() == [1, -1, -1]
    torch.manual_seed(0)
    net = small_net().eval()
    pred = MetadataInferer()(images, net)
    loss = MetadataClassifierLoss(torch.nn.CrossEntropyLoss(), {"view": 0.5, "thickness": 2.0})
    class_loss = torch.nn.functional.cross_entropy(pred["class_logits"], targets["label"])
    view = torch.nn.functional.cross_entropy(pred["field_logits"]["view"][:2], targets["fields"]["view"][:2])
    thickness = torch.nn.functional.cross_entropy(
        pred["field_logits"]["thickness"][:1], targets["fields"]["thickness"][:1]
    )
    torch.testing.assert_close(loss(pred, targets), class_loss + 0.5 * view + 2.0 * thickness)
    plain = MetadataInferer()(images, MammoClassifier(num_classes=3).eval())
    assert plain["field_logits"] == {}  # a network without heads trains on the class loss alone
    plain_loss = torch.nn.functional.cross_entropy(plain["class_logits"], targets["label"])
    torch.testing.assert_close(loss(plain, targets), plain_loss)


# -- the predictor ------------------------------------------------------------------------------------------------
def known_heads(path, view_bias: float = 20.0) -> None:
    """Weights whose heads read 'MLO' (p ~ 1 with the default bias) and thickness '40-50 mm' from any image."""
    torch.manual_seed(0)
    net = small_net()
    with torch.no_grad():
        for name, index in (("view", 1), ("thickness", 1)):
            net.heads[name].weight.zero_()
            net.heads[name].bias.zero_()
            net.heads[name].bias[index] = view_bias if name == "view" else 20.0
    torch.save(net.state_dict(), path)


def predictor(checkpoint, **kwargs) -> MammogramPredictor:
    return MammogramPredictor(
        small_net(), checkpoint, CLASSES, SIZE, metadata_label_space=select_fields(FIELDS), device="cpu", **kwargs
    )


def test_a_header_the_pixels_contradict_is_flagged_naming_both(tmp_path):
    known_heads(tmp_path / "model.pt")
    image = write_mammo_dicom(tmp_path / "swapped.dcm", breast_pixels(), ViewPosition="CC", BodyPartThickness="47.5")
    record = predictor(tmp_path / "model.pt").predict(image).record
    validate_prediction(record)
    view, thickness = record["metadata_predictions"]
    assert (view["field"], view["predicted"], view["header_value"], view["agrees"]) == ("view", "MLO", "CC", False)
    assert view["probability"] > 0.99
    assert (thickness["predicted"], thickness["header_value"], thickness["agrees"]) == ("40-50 mm", "40-50 mm", True)
    [flag] = record["qc_flags"]
    assert flag["code"] == "metadata_mismatch_view"
    assert "look like view MLO, but the header (ViewPosition) says CC (p = 1.00)" in flag["message"]


def test_a_header_that_agrees_or_is_silent_raises_no_flag(tmp_path):
    known_heads(tmp_path / "model.pt")
    image = write_mammo_dicom(tmp_path / "right.dcm", breast_pixels(), ViewPosition="MLO", BodyPartThickness=None)
    record = predictor(tmp_path / "model.pt").predict(image).record
    view, thickness = record["metadata_predictions"]
    assert (view["header_value"], view["agrees"]) == ("MLO", True)
    assert (thickness["header_value"], thickness["agrees"]) == (None, None)
    assert record["qc_flags"] == []


def test_a_low_confidence_disagreement_is_not_flagged(tmp_path):
    known_heads(tmp_path / "model.pt", view_bias=1.0)  # p(MLO) = e / (e + 3) = 0.48
    image = write_mammo_dicom(tmp_path / "swapped.dcm", breast_pixels(), ViewPosition="CC", BodyPartThickness=None)
    record = predictor(tmp_path / "model.pt", qc_min_probability=0.9).predict(image).record
    assert record["metadata_predictions"][0]["agrees"] is False
    assert record["qc_flags"] == []
    flagged = predictor(tmp_path / "model.pt", qc_min_probability=0.4).predict(image).record
    assert [flag["code"] for flag in flagged["qc_flags"]] == ["metadata_mismatch_view"]


def test_a_network_without_metadata_heads_gives_no_metadata_predictions(tmp_path):
    torch.save(MammoClassifier(num_classes=3).state_dict(), tmp_path / "model.pt")
    plain = MammogramPredictor(MammoClassifier(num_classes=3), tmp_path / "model.pt", CLASSES, SIZE, device="cpu")
    record = plain.predict(write_mammo_dicom(tmp_path / "case.dcm", breast_pixels(), ViewPosition="CC")).record
    validate_prediction(record)
    assert record["metadata_predictions"] == []


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (lambda: MammoClassifier(num_classes=3).state_dict(), "has no metadata heads"),
        (lambda: small_net({"view": 3, "thickness": 5}).state_dict(), "its view head has 3 classes, this network's 4"),
        (lambda: small_net({"view": 4, "kvp": 5}).state_dict(), r"metadata heads are for \['kvp', 'view'\]"),
    ],
)
def test_a_checkpoint_with_other_heads_is_refused_naming_the_difference(tmp_path, weights, message):
    torch.save(weights(), tmp_path / "model.pt")
    with pytest.raises(MammoXAIError, match=f"model.pt: cannot be loaded into the network: .*{message}"):
        predictor(tmp_path / "model.pt").load_weights()


def test_a_label_space_that_does_not_match_the_heads_is_refused(tmp_path):
    with pytest.raises(MammoXAIError, match="metadata_label_space: gives fields"):
        MammogramPredictor(
            small_net(), tmp_path / "model.pt", CLASSES, SIZE, metadata_label_space=select_fields(["view"])
        )
    with pytest.raises(MammoXAIError, match="metadata_label_space: is not set"):
        MammogramPredictor(small_net(), tmp_path / "model.pt", CLASSES, SIZE)
    with pytest.raises(MammoXAIError, match="qc_min_probability"):
        predictor(tmp_path / "model.pt", qc_min_probability=1.5)
