"""Fine-tuning: the backbone classifier, freezing and unfreezing, initialisation strategies, class balance and
label checks, and train.json running them."""

import csv
import json
import re
import shlex
import shutil

import monai.bundle
import numpy as np
import pytest
import torch
from ignite.engine import Engine

from mammoxai.cli import BUNDLE_ROOT, user_error
from mammoxai.data.dataset import MammogramDataset, batch_geometries
from mammoxai.data.findings import read_findings
from mammoxai.data.manifest import read_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.nets import BackboneClassifier, MammoClassifier, MetadataNet, build_backbone
from mammoxai.nets.finetune import MultiViewClassifier, load_checkpoint
from mammoxai.training.checkpoints import TrainingGrid, TrainingViews
from mammoxai.training.classification import class_weights
from mammoxai.training.finetune import (
    UnfreezeAt,
    balanced_sampler,
    build_finetune_classifier,
    build_metadata_classifier,
    check_labels,
    initialise,
)
from mammoxai.training.multiview import MultiViewDataset, build_dataset
from mammoxai.training.patches import PatchDataset
from mammoxai.training.pretrain import CheckpointInfo, fit_label_space, select_fields

FIELDS = ["view", "laterality"]
CLASSES = ["normal", "benign", "malignant"]
#: The model-input settings a checkpoint records: (name, a value other than the default, the default).
INPUT_SETTINGS = pytest.mark.parametrize(
    ("setting", "other", "default"),
    [("intensity_scaling", "display_range", "breast_percentiles"), ("field_of_view", "image", "breast")],
    ids=["intensity_scaling", "field_of_view"],
)


def _frozen(network, prefix):
    return [not p.requires_grad for name, p in network.named_parameters() if name.startswith(prefix)]


def _pretrained(path, backbone="mammo_cnn", studies=None, seed=0, **inputs):
    """A metadata-pretraining checkpoint as configs/pretrain.json writes it (untrained weights), recording the
    model-input settings ``inputs`` (intensity_scaling, field_of_view)."""
    torch.manual_seed(seed)
    records = read_manifest(studies / "manifest.csv")
    space = fit_label_space(select_fields(FIELDS), records)
    network = MetadataNet(
        backbone, {name: space.num_classes(name) for name in space.fields}, embed_dim=8, matching_dim=4
    )
    info = CheckpointInfo(network, space, (64, 48), **inputs)
    torch.save({"network": network.state_dict(), "info": info.state_dict()}, path)
    return network


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studies")
    synthesize(folder, patients=6, seed=0, size=192)
    return folder


# -- freezing -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backbone", "stem"), [("mammo_cnn", "backbone.features.stem."), ("resnet18", "backbone.conv1.")]
)
def test_freezing_the_stem_freezes_it_alone(backbone, stem):
    network = BackboneClassifier(backbone, num_classes=3).freeze("stem")
    assert all(_frozen(network, stem))
    assert not any(_frozen(network, "fc."))
    frozen = {name.split(".")[1] for name, p in network.named_parameters() if not p.requires_grad}
    assert frozen <= {"features", "conv1", "bn1"} and network.frozen == 1


def test_freezing_up_to_a_stage_counts_the_stem_as_stage_zero():
    network = BackboneClassifier("resnet18", num_classes=2).freeze(2)
    assert all(_frozen(network, "backbone.layer2.")) and all(_frozen(network, "backbone.conv1."))
    assert not any(_frozen(network, "backbone.layer3."))
    assert BackboneClassifier("resnet18", num_classes=2).freeze("stage2").frozen == network.frozen == 3


def test_all_but_head_trains_only_the_head_and_keeps_batch_norm_statistics():
    network = BackboneClassifier("mammo_cnn", num_classes=3).freeze("all_but_head").train()
    trainable = [name for name, p in network.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    before = network.backbone.features.block1[0][1].running_mean.clone()
    network(torch.rand(4, 1, 64, 48) * 5)
    torch.testing.assert_close(network.backbone.features.block1[0][1].running_mean, before)
    assert network.training and not network.backbone.features.block1.training


@pytest.mark.parametrize("level", ["everything", 5, "stage9", True])
def test_an_unknown_freezing_level_is_a_clear_error(level):
    with pytest.raises(MammoXAIError, match="freeze"):
        BackboneClassifier("mammo_cnn", num_classes=3).freeze(level)


def test_unfreeze_handler_thaws_the_backbone_at_the_given_epoch():
    network = BackboneClassifier("mammo_cnn", num_classes=3).freeze("all_but_head")
    frozen_per_epoch = []
    engine = Engine(lambda engine, batch: frozen_per_epoch.append(network.frozen))
    UnfreezeAt(network, epoch=3).attach(engine)
    engine.run([0], max_epochs=4)
    assert frozen_per_epoch == [5, 5, 0, 0]
    assert not any(_frozen(network, ""))


def test_an_unfreeze_epoch_after_the_last_epoch_is_refused_when_attached():
    """MONAI's SupervisedTrainer knows its max_epochs when the handlers attach, before any batch."""
    engine = Engine(lambda engine, batch: None)
    engine.state.max_epochs = 2
    with pytest.raises(MammoXAIError, match=r"unfreeze_epoch: is 3, after the last of the 2 epochs.*from 1 to 2"):
        UnfreezeAt(BackboneClassifier("mammo_cnn", num_classes=3), epoch=3).attach(engine)


# -- initialisation -----------------------------------------------------------------------------------------------
def test_pretrained_init_copies_the_metadata_backbone(studies, tmp_path):
    pretrained = _pretrained(tmp_path / "pretrained.pt", studies=studies)
    torch.manual_seed(123)
    network = build_finetune_classifier(
        "mammo_cnn", 3, init="pretrained", init_weights=tmp_path / "pretrained.pt", freeze="stem"
    )
    for name, value in pretrained.backbone.state_dict().items():
        torch.testing.assert_close(network.backbone.state_dict()[name], value)
    assert network.frozen == 1


def test_a_pretrained_checkpoint_of_another_backbone_is_a_clear_error(studies, tmp_path):
    _pretrained(tmp_path / "pretrained.pt", studies=studies)
    with pytest.raises(MammoXAIError, match="set backbone to 'mammo_cnn'"):
        build_finetune_classifier("resnet18", 3, init="incremental", init_weights=tmp_path / "pretrained.pt")


@INPUT_SETTINGS
@pytest.mark.parametrize("init", ["pretrained", "incremental"])
def test_a_pretrained_start_of_another_input_setting_is_refused_naming_the_one_that_fits(
    studies, tmp_path, init, setting, other, default
):
    """Its backbone learnt from images scaled (or framed) one way; fine-tuned on images made another, it starts from
    features of inputs it never saw, with no error."""
    pretrained = _pretrained(tmp_path / "pretrained.pt", studies=studies, **{setting: other})
    network = build_finetune_classifier(
        "mammo_cnn", 3, init=init, init_weights=tmp_path / "pretrained.pt", **{setting: other}
    )
    torch.testing.assert_close(network.backbone.state_dict(), pretrained.backbone.state_dict())
    fix = shlex.quote(json.dumps(other))
    message = (
        f'{tmp_path / "pretrained.pt"}: was trained with {setting} {json.dumps(other)}, not the '
        f"{json.dumps(default)} of this run (pass --{setting} {fix}, or retrain with this run's settings)"
    )
    with pytest.raises(MammoXAIError) as error:
        build_finetune_classifier("mammo_cnn", 3, init=init, init_weights=tmp_path / "pretrained.pt")
    assert str(error.value) == message
    label_space = fit_label_space(select_fields(FIELDS), read_manifest(studies / "manifest.csv"))
    with pytest.raises(MammoXAIError) as error:
        build_metadata_classifier(
            "mammo_cnn", 3, label_space, init=init, init_weights=tmp_path / "pretrained.pt", embed_dim=8, matching_dim=4
        )
    assert str(error.value) == message


@INPUT_SETTINGS
def test_a_classifier_start_of_another_input_setting_is_refused(tmp_path, setting, other, default):
    """The patch classifier starts the whole-image one at another grid, but never under another scaling or field
    of view."""
    previous = BackboneClassifier("mammo_cnn", 3)
    grid = TrainingGrid([32, 32], **{setting: other}).state_dict()
    torch.save({"model": previous.state_dict(), "grid": grid}, tmp_path / "model.pt")
    network = build_finetune_classifier(
        "mammo_cnn", 3, init="classifier", init_weights=tmp_path / "model.pt", **{setting: other}
    )
    torch.testing.assert_close(network.fc.weight, previous.fc.weight)
    with pytest.raises(
        MammoXAIError, match=f"with {setting} {json.dumps(other)}, not the {json.dumps(default)} of this run"
    ):
        build_finetune_classifier("mammo_cnn", 3, init="classifier", init_weights=tmp_path / "model.pt")


def test_external_weights_initialise_the_backbone_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    source, _ = build_backbone("resnet18", in_channels=3)  # like torchvision ImageNet weights: RGB stem
    torch.save(source.state_dict(), tmp_path / "imagenet.pt")
    network = build_finetune_classifier("resnet18", 2, init="external", init_weights=tmp_path / "imagenet.pt")
    torch.testing.assert_close(network.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    torch.testing.assert_close(network.backbone.conv1.weight, source.conv1.weight.sum(1, keepdim=True))


@pytest.mark.parametrize(
    ("init", "content", "message"),
    [
        ("external", lambda: {"not": "tensors"}, "does not hold a state dict"),
        ("external", lambda: MammoClassifier().state_dict(), "does not fit resnet18"),
        ("classifier", lambda: [1, 2, 3], "does not hold a state dict"),
        (
            "classifier",
            lambda: BackboneClassifier("resnet18", 2).state_dict(),
            "trained for 2 classes, this network has 3",
        ),
        (
            "classifier",
            lambda: BackboneClassifier("mammo_cnn", 3).state_dict(),
            "does not fit this resnet18 classifier",
        ),
        ("pretrained", lambda: BackboneClassifier("resnet18", 3).state_dict(), "not a metadata-pretraining checkpoint"),
    ],
)
def test_starting_weights_that_do_not_fit_are_refused_naming_the_file(tmp_path, init, content, message):
    path = tmp_path / "weights.pt"
    torch.save(content(), path)
    with pytest.raises(MammoXAIError, match=message) as error:
        initialise(BackboneClassifier("resnet18", 3), init, path)
    assert "weights.pt" in str(error.value)


@pytest.mark.parametrize("init", ["external", "classifier", "pretrained"])
@pytest.mark.parametrize(
    ("content", "detail"),
    [(b"", "EOFError"), (b"these are not weights\n", "pop from empty list"), (b"PK\x03\x04 truncated", "")],
    ids=["empty", "text", "truncated zip"],
)
def test_a_file_that_is_not_a_checkpoint_at_all_is_refused_naming_it(tmp_path, init, content, detail):
    path = tmp_path / "weights.pt"  # what an interrupted save or a wrong path leaves
    path.write_bytes(content)
    with pytest.raises(MammoXAIError, match=r"weights\.pt: is not a readable .*" + re.escape(detail)):
        initialise(BackboneClassifier("resnet18", 3), init, path)


def test_a_checkpoint_that_records_its_training_grid_is_refused_on_another(tmp_path):
    network = BackboneClassifier("mammo_cnn", 3)
    torch.save({"model": network.state_dict(), "grid": {"image_size": [64, 52]}}, tmp_path / "model.pt")
    load_checkpoint(BackboneClassifier("mammo_cnn", 3), tmp_path / "model.pt", "x", "y", image_size=(64, 52))
    with pytest.raises(
        MammoXAIError,
        match=r"with image_size \[64, 52\], not the \[256, 208\] of this run \(pass --image_size '\[64, 52\]'",
    ):
        load_checkpoint(BackboneClassifier("mammo_cnn", 3), tmp_path / "model.pt", "x", "y", image_size=(256, 208))
    torch.save(network.state_dict(), tmp_path / "bare.pt")  # no record (an older checkpoint): nothing to check
    load_checkpoint(BackboneClassifier("mammo_cnn", 3), tmp_path / "bare.pt", "x", "y", image_size=(256, 208))


@INPUT_SETTINGS
def test_a_checkpoint_is_refused_under_another_input_setting_and_an_older_record_means_the_default(
    tmp_path, setting, other, default
):
    """An older record (no intensity_scaling, no field_of_view) was made under the one value there was."""
    network = BackboneClassifier("mammo_cnn", 3)
    grid = TrainingGrid([64, 52], **{setting: other}).state_dict()
    assert grid[setting] == other
    torch.save({"model": network.state_dict(), "grid": grid}, tmp_path / "model.pt")
    load_checkpoint(network, tmp_path / "model.pt", "x", "y", **{setting: other})
    refusal = re.escape(
        f"with {setting} {json.dumps(other)}, not the {json.dumps(default)} of this run "
        f"(pass --{setting} {shlex.quote(json.dumps(other))}"
    )
    with pytest.raises(MammoXAIError, match=refusal):
        load_checkpoint(network, tmp_path / "model.pt", "x", "y", **{setting: default})
    torch.save({"model": network.state_dict(), "grid": {"image_size": [64, 52]}}, tmp_path / "older.pt")
    load_checkpoint(network, tmp_path / "older.pt", "x", "y", **{setting: default})
    with pytest.raises(MammoXAIError, match=f"with {setting} {json.dumps(default)}, not the {json.dumps(other)}"):
        load_checkpoint(network, tmp_path / "older.pt", "x", "y", **{setting: other})


def test_a_checkpoint_that_records_its_class_names_is_refused_under_other_names_or_order(tmp_path):
    """The logits carry no names: in another order the normal logit would be reported as malignant."""
    network = BackboneClassifier("mammo_cnn", 3)
    classes = ["normal", "benign", "malignant"]
    torch.save({"model": network.state_dict(), "classes": {"class_names": classes}}, tmp_path / "model.pt")
    load_checkpoint(BackboneClassifier("mammo_cnn", 3), tmp_path / "model.pt", "x", "y", class_names=classes)
    with pytest.raises(MammoXAIError) as raised:
        load_checkpoint(BackboneClassifier("mammo_cnn", 3), tmp_path / "model.pt", "x", "y", class_names=classes[::-1])
    assert str(raised.value) == (
        f'{tmp_path / "model.pt"}: was trained with class_names ["normal", "benign", "malignant"], not the '
        '["malignant", "benign", "normal"] of this run (the same values in another order) '
        """(pass --class_names '["normal", "benign", "malignant"]', or retrain with this run's settings)"""
    )


def test_a_classifier_checkpoint_continues_a_previous_fine_tune(tmp_path):
    torch.manual_seed(0)
    previous = BackboneClassifier("mammo_cnn", 3)
    torch.save({"model": previous.state_dict()}, tmp_path / "model.pt")
    network = initialise(BackboneClassifier("mammo_cnn", 3), "classifier", tmp_path / "model.pt")
    torch.testing.assert_close(network.fc.weight, previous.fc.weight)


def test_an_init_without_weights_or_an_unknown_init_is_a_clear_error():
    with pytest.raises(MammoXAIError, match="init_weights"):
        initialise(BackboneClassifier("mammo_cnn", 3), "pretrained", None)
    with pytest.raises(MammoXAIError, match="imagenet"):
        initialise(BackboneClassifier("mammo_cnn", 3), "imagenet", "x.pt")


# -- labels and class balance -------------------------------------------------------------------------------------
def test_an_empty_class_is_refused_by_name():
    with pytest.raises(MammoXAIError, match="'benign'"):
        check_labels([0, 0, 2, -1], ["normal", "benign", "malignant"])
    with pytest.raises(MammoXAIError, match="no labelled image"):
        check_labels([-1, -1], ["normal", "malignant"])
    check_labels([0, 1, 1], ["normal", "malignant"])


def test_class_weights_average_one_over_the_images_not_over_the_classes():
    labels = [0] * 90 + [1] * 8 + [2] * 2
    weights = class_weights([*labels, -1], num_classes=3)
    torch.testing.assert_close(weights, torch.tensor([100 / 270, 100 / 24, 100 / 6]))
    assert float(weights[labels].mean()) == pytest.approx(1.0)
    assert float(weights.mean()) == pytest.approx(7.07, abs=0.01)


def test_balanced_sampler_draws_classes_equally_and_never_unlabelled_images():
    labels = [0] * 90 + [1] * 10 + [-1] * 5
    drawn = np.asarray(labels)[list(balanced_sampler(labels, "sampler", seed=0))]
    assert len(drawn) == len(labels) and -1 not in drawn
    assert 0.35 < (drawn == 1).mean() < 0.65  # 10 % of the images, about half of the draws
    assert balanced_sampler(labels, "loss") is None
    with pytest.raises(MammoXAIError, match="class_balance"):
        balanced_sampler(labels, "oversample")


# -- train.json ---------------------------------------------------------------------------------------------------
def _train(studies, tmp_path, **overrides):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE_ROOT / "configs", bundle / "configs")
    settings = dict(
        dataset_dir=str(studies),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "out"),
        epochs=2,
        image_size=[64, 48],
        num_workers=0,
        batch_size=8,
        device="cpu",
    )
    monai.bundle.run(
        config_file=str(bundle / "configs" / "train.json"),
        bundle_root=str(bundle),
        logging_file=False,
        **{**settings, **overrides},
    )


def test_train_json_fine_tunes_the_pretrained_backbone_with_freezing_and_sampling(studies, tmp_path):
    _pretrained(tmp_path / "pretrained.pt", studies=studies)
    _train(
        studies,
        tmp_path,
        network_def="@finetune_network_def",
        init="pretrained",
        init_weights=str(tmp_path / "pretrained.pt"),
        freeze="all_but_head",
        unfreeze_epoch=2,
        class_balance="sampler",
    )
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    BackboneClassifier("mammo_cnn", 3).load_state_dict(state["model"])


def test_train_json_fine_tunes_from_a_pretraining_of_its_input_settings_and_records_them(studies, tmp_path):
    """Refused before training while the run's intensity_scaling or field_of_view is not the pretraining's (each
    refusal names the one that fits); trained under both, model.pt's grid records both."""
    inputs = {"intensity_scaling": "display_range", "field_of_view": "image"}
    _pretrained(tmp_path / "pretrained.pt", studies=studies, **inputs)
    start = dict(
        init="pretrained", init_weights=str(tmp_path / "pretrained.pt"), epochs=1, network_def="@finetune_network_def"
    )
    for run, settings, refusal in [
        (
            "default",
            {},
            'intensity_scaling "display_range", not the "breast_percentiles" of this run '
            + """(pass --intensity_scaling '"display_range"'""",
        ),
        (
            "scaled",
            {"intensity_scaling": "display_range"},
            """field_of_view "image", not the "breast" of this run (pass --field_of_view '"image"'""",
        ),
    ]:
        with pytest.raises(Exception) as error:
            _train(studies, tmp_path / run, **start, **settings)
        assert str(user_error(error.value)).startswith(f'{tmp_path / "pretrained.pt"}: was trained with {refusal}')
        assert not (tmp_path / run / "models" / "model.pt").exists()
    _train(studies, tmp_path / "both", **inputs, **start)
    state = torch.load(tmp_path / "both" / "models" / "model.pt", weights_only=True)
    assert state["grid"] == {"image_size": [64, 48], **inputs}


def test_train_json_refuses_a_label_csv_with_unknown_ids_before_training(studies, tmp_path):
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        csv.writer(handle).writerows([["sop_uid", "case_label"], ["1.2.3.unknown", "malignant"]])
    with pytest.raises(Exception) as error:
        _train(studies, tmp_path, label_csv=str(labels))
    assert "1.2.3.unknown" in str(user_error(error.value))
    assert not (tmp_path / "models").exists()


def test_train_json_refuses_a_classifier_start_trained_with_other_class_names_before_training(studies, tmp_path):
    """--init classifier loads the head as it is: under reordered names the malignant logit would learn the normal
    images from weights that score them malignant."""
    _train(studies, tmp_path / "first", epochs=1)
    first = tmp_path / "first" / "models" / "model.pt"
    with pytest.raises(Exception) as error:
        _train(studies, tmp_path / "next", init="classifier", init_weights=str(first), class_names=CLASSES[::-1])
    assert str(user_error(error.value)) == (
        f'{first}: was trained with class_names ["normal", "benign", "malignant"], not the '
        '["malignant", "benign", "normal"] of this run (the same values in another order) '
        """(pass --class_names '["normal", "benign", "malignant"]', or retrain with this run's settings)"""
    )
    assert not (tmp_path / "next" / "models" / "model.pt").exists()


def test_train_json_refuses_a_class_missing_from_training(studies, tmp_path):
    with pytest.raises(Exception) as error:
        _train(studies, tmp_path, class_names=["normal", "benign", "malignant", "atypia"])
    assert "'atypia'" in str(user_error(error.value))
    assert not (tmp_path / "models").exists()


# -- multi-view ---------------------------------------------------------------------------------------------------
def test_multi_view_fusion_by_mean_ignores_view_order_and_concat_does_not():
    torch.manual_seed(0)
    views = torch.rand(2, 2, 1, 64, 48)
    swapped = views.flip(1)
    mean = MultiViewClassifier("mammo_cnn", 3, num_views=2, fusion="mean").eval()
    concat = MultiViewClassifier("mammo_cnn", 3, num_views=2, fusion="concat").eval()
    torch.testing.assert_close(mean(views), mean(swapped))
    assert not torch.allclose(concat(views), concat(swapped))
    assert concat.fc.in_features == 2 * mean.fc.in_features
    with pytest.raises(MammoXAIError, match="view_fusion"):
        MultiViewClassifier("mammo_cnn", 3, fusion="attention")


def test_multi_view_samples_stack_cc_then_mlo_of_one_breast(studies):
    records = read_manifest(studies / "manifest.csv")
    records = records[1:]  # the first breast loses its CC view
    images = MammogramDataset(
        records, image_size=32, class_names=["normal", "benign", "malignant"], label_map={"recalled_benign": "benign"}
    )
    breasts = MultiViewDataset(images, views=["CC", "MLO"])
    assert breasts.incomplete == 1 and len(breasts) == (len(records) - 1) // 2
    sample = breasts[0]
    assert sample["image"].shape == (2, 1, 32, 32)
    first, second = (images.data[i] for i in breasts.groups[0])
    assert (first["view"], second["view"]) == ("CC", "MLO")
    assert (first["study_uid"], first["laterality"]) == (second["study_uid"], second["laterality"])
    assert sample["label"] == max(images.labels[i] for i in breasts.groups[0])
    with pytest.raises(MammoXAIError, match="no breast"):
        MultiViewDataset(images, views=["CC", "XCCL"])


@pytest.mark.parametrize(
    "layout, images",
    [({}, lambda d: d), ({"views": ["CC", "MLO"]}, lambda d: d.images), ({"patch_size": 32}, lambda d: d.images)],
)
def test_every_training_data_set_scales_and_frames_its_images_as_the_run_says(studies, layout, images):
    """train.json's single-image, multi-view and patch data sets all preprocess through build_dataset's images."""
    records = read_manifest(studies / "manifest.csv")
    findings = studies / "finding_annotations.csv"
    inputs = {"intensity_scaling": "display_range", "field_of_view": "image"}
    dataset = build_dataset(
        records, findings_csv=findings, image_size=[64, 48], label_map={"recalled_benign": "benign"},
        **inputs, **layout,
    )  # fmt: skip
    assert images(dataset).intensity_scaling == "display_range"
    assert images(dataset).field_of_view == "image"
    sample = images(dataset)[0]["image"]
    expected = MammogramDataset(records[:1], image_size=[64, 48], **inputs)[0]["image"]
    torch.testing.assert_close(sample, expected)
    breast = MammogramDataset(records[:1], image_size=[64, 48], intensity_scaling="display_range")[0]["image"]
    assert not torch.allclose(sample, breast)  # the field of view that was not asked for would have been told apart


def test_multi_view_never_pairs_views_of_two_patients_or_of_a_blank_study_or_side():
    """Grouped on blank keys, one patient's CC was fused with another's MLO, or a left CC with a right MLO."""
    records = [
        {"path": "p1_cc", "patient_id": "P1", "study_uid": "", "laterality": "L", "view": "CC", "case_label": "normal"},
        {
            "path": "p2_mlo",
            "patient_id": "P2",
            "study_uid": "",
            "laterality": "L",
            "view": "MLO",
            "case_label": "malignant",
        },
        {
            "path": "p3_cc",
            "patient_id": "P3",
            "study_uid": "s3",
            "laterality": "",
            "view": "CC",
            "case_label": "normal",
        },
        {
            "path": "p3_mlo",
            "patient_id": "P3",
            "study_uid": "s3",
            "laterality": "",
            "view": "MLO",
            "case_label": "normal",
        },
        {
            "path": "p4_cc",
            "patient_id": "P4",
            "study_uid": "s",
            "laterality": "R",
            "view": "CC",
            "case_label": "normal",
        },
        {
            "path": "p5_mlo",
            "patient_id": "P5",
            "study_uid": "s",
            "laterality": "R",
            "view": "MLO",
            "case_label": "normal",
        },
        {
            "path": "p6_cc",
            "patient_id": "P6",
            "study_uid": "s6",
            "laterality": "R",
            "view": "CC",
            "case_label": "benign",
        },
        {
            "path": "p6_mlo",
            "patient_id": "P6",
            "study_uid": "s6",
            "laterality": "R",
            "view": "MLO",
            "case_label": "normal",
        },
    ]
    images = MammogramDataset(records, image_size=32, class_names=["normal", "benign", "malignant"])
    breasts = MultiViewDataset(images, views=["CC", "MLO"])
    assert [[images.data[i]["path"] for i in group] for group in breasts.groups] == [["p6_cc", "p6_mlo"]]
    assert breasts.labels == [1] and (breasts.incomplete, breasts.unplaced) == (2, 4)


@pytest.mark.parametrize(
    ("views", "message"),
    [
        ("['CC','MLO']", r"views: is \"\['CC','MLO'\]\", not a list of names \(give a list, e\.g\. --views"),
        ("CC,MLO", r"views: is 'CC,MLO', not a list of names \(give a list"),
        (2, r"views: is 2, not a list of names \(give a list"),
        ("CC", r"views: \['CC'\] must name two or more distinct views \(name each view once"),
        (["CC", ""], r"views: \['CC', ''\] must name two or more distinct views"),
        (["cc", "CC"], r"views: \['CC', 'CC'\] must name two or more distinct views"),
    ],
)
def test_views_given_as_text_are_refused_by_name_not_read_as_one_view_per_character(views, message):
    """``--views "['CC','MLO']"`` through a JSON command line is the text: twelve views, and a right checkpoint
    refused as one of another size. One view is a list of one, as for every setting that lists names, and refused
    as no multi-view sample, as a view twice is (one image stacked with itself)."""
    with pytest.raises(MammoXAIError, match=f"^{message}"):
        build_finetune_classifier("mammo_cnn", 3, views=views)
    with pytest.raises(MammoXAIError, match=f"^{message}"):
        build_dataset([{"path": "a.dcm", "view": "CC"}], views=views, image_size=32)
    assert build_finetune_classifier("mammo_cnn", 3, views=("cc", "MLO")).num_views == 2


def test_a_breast_whose_views_disagree_takes_the_later_class_with_a_warning_naming_the_order(caplog):
    """With class_names in alphabetical order a malignant CC beside a normal MLO made a 'normal' breast, unsaid."""
    records = [
        {"path": f"{view}.dcm", "patient_id": "P1", "study_uid": "s1", "laterality": "L", "view": view,
         "case_label": label}
        for view, label in [("CC", "malignant"), ("MLO", "normal")]
    ]  # fmt: skip
    images = MammogramDataset(records, image_size=32, class_names=["benign", "malignant", "normal"])
    breasts = MultiViewDataset(images, views=["CC", "MLO"])
    assert breasts.labels == [2]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("1 breasts have views of different classes" in message for message in warnings)
    assert any("'normal' over 'malignant'" in message for message in warnings)
    caplog.clear()
    severity = MammogramDataset(records, image_size=32, class_names=["normal", "benign", "malignant"])
    assert MultiViewDataset(severity, views=["CC", "MLO"]).labels == [2]  # malignant over normal, as meant
    assert not [record for record in caplog.records if record.levelname == "WARNING"]  # no warning on every run


def test_train_json_refuses_multi_view_input_for_the_single_image_served_network(studies, tmp_path):
    with pytest.raises(Exception) as error:
        _train(studies, tmp_path, views=["CC", "MLO"], epochs=1)
    assert "views: is ['CC', 'MLO'], but the served network reads one image" in str(user_error(error.value))
    assert not (tmp_path / "models" / "model.pt").exists()


@pytest.fixture(scope="module")
def multi_view_model(studies, tmp_path_factory):
    """model.pt of a CC + MLO classifier fused by mean, as train.json writes it: mean and max have the same
    parameters, and so has a single-image classifier, so only the record tells them apart."""
    folder = tmp_path_factory.mktemp("multi_view")
    _train(
        studies, folder, network_def="@finetune_network_def", views=["CC", "MLO"], view_fusion="mean", epochs=1
    )  # fmt: skip
    return folder / "models" / "model.pt"


def test_train_json_trains_a_multi_view_classifier_and_records_its_views(multi_view_model):
    state = torch.load(multi_view_model, weights_only=True)
    MultiViewClassifier("mammo_cnn", 3, num_views=2, fusion="mean").load_state_dict(state["model"])
    assert state["views"] == {"views": ["CC", "MLO"], "view_fusion": "mean"}


def test_multi_view_weights_are_refused_in_another_view_order_or_fusion(multi_view_model):
    """Swapped views feed the CC branch position the MLO image; max fuses what mean was trained on: both load."""
    load_checkpoint(MultiViewClassifier(fusion="mean"), multi_view_model, "x", "y", views=["CC", "MLO"])
    with pytest.raises(MammoXAIError) as raised:
        load_checkpoint(MultiViewClassifier(fusion="mean"), multi_view_model, "x", "y", views=["MLO", "CC"])
    assert str(raised.value) == (
        f'{multi_view_model}: was trained with views ["CC", "MLO"], not the ["MLO", "CC"] of this run (the same '
        """values in another order) (pass --views '["CC", "MLO"]', or retrain with this run's settings)"""
    )
    with pytest.raises(MammoXAIError) as raised:
        load_checkpoint(MultiViewClassifier(fusion="max"), multi_view_model, "x", "y", views=["CC", "MLO"])
    assert str(raised.value) == (
        f'{multi_view_model}: was trained with view_fusion "mean", not the "max" of this run '
        """(pass --view_fusion '"mean"', or retrain with this run's settings)"""
    )


def test_single_image_and_multi_view_weights_are_refused_by_the_other_network_naming_views(multi_view_model, tmp_path):
    with pytest.raises(MammoXAIError) as raised:
        load_checkpoint(BackboneClassifier("mammo_cnn", 3), multi_view_model, "does not fit", "fix")
    assert str(raised.value) == (
        f'{multi_view_model}: does not fit: it was trained with views ["CC", "MLO"] and view_fusion "mean", this '
        "network reads one image (views null) (fix)"
    )
    single = BackboneClassifier("mammo_cnn", 3).state_dict()
    torch.save({"model": single, "views": TrainingViews(None, "concat").state_dict()}, tmp_path / "single.pt")
    with pytest.raises(MammoXAIError, match=r"trained with views null \(one image per sample\), this network fuses 2"):
        load_checkpoint(MultiViewClassifier(fusion="mean"), tmp_path / "single.pt", "x", "y", views=["CC", "MLO"])
    torch.save({"model": single}, tmp_path / "older.pt")  # written before the record: nothing to check
    load_checkpoint(MultiViewClassifier(fusion="mean"), tmp_path / "older.pt", "x", "y", views=["CC", "MLO"])


def test_a_multi_view_classifier_start_is_refused_under_other_class_names_or_views(studies, multi_view_model, tmp_path):
    """A start must name its logits and views as this run does; one image or several per sample may differ, as
    weights of a mean or max fusion are those of one image (the patch classifier starts a multi-view run)."""
    start = {"init": "classifier", "init_weights": multi_view_model, "view_fusion": "mean"}
    network = build_finetune_classifier(views=["CC", "MLO"], class_names=CLASSES, **start)
    torch.testing.assert_close(network.fc.weight, torch.load(multi_view_model, weights_only=True)["model"]["fc.weight"])
    with pytest.raises(MammoXAIError, match=r"""pass --views '\["CC", "MLO"\]'"""):
        build_finetune_classifier(views=["MLO", "CC"], class_names=CLASSES, **start)
    one_image = build_finetune_classifier(class_names=CLASSES, **start)  # a mean head fits one image: a start
    torch.testing.assert_close(one_image.fc.weight, network.fc.weight)
    with pytest.raises(MammoXAIError, match=r"""pass --view_fusion '"mean"'"""):
        build_finetune_classifier(views=["CC", "MLO"], class_names=CLASSES, **{**start, "view_fusion": "concat"})
    single = {"model": one_image.state_dict(), "views": TrainingViews(None, "concat").state_dict()}
    torch.save(single, tmp_path / "one_image.pt")
    start = {**start, "init_weights": tmp_path / "one_image.pt", "views": ["CC", "MLO"]}
    torch.testing.assert_close(build_finetune_classifier(**start).fc.weight, network.fc.weight)
    concat = r"trained with views null \(one image per sample\), this network fuses 2 views; fc\.weight"
    with pytest.raises(MammoXAIError, match=concat):  # a concat head takes both views' features
        build_finetune_classifier(**{**start, "view_fusion": "concat"})
    with pytest.raises(Exception) as error:  # train.json gives finetune_network_def its class_names
        _train(
            studies,
            tmp_path,
            network_def="@finetune_network_def",
            views=["CC", "MLO"],
            view_fusion="mean",
            init="classifier",
            init_weights=str(multi_view_model),
            class_names=["normal", "malignant", "benign"],
        )
    assert """pass --class_names '["normal", "benign", "malignant"]'""" in str(user_error(error.value))
    assert not (tmp_path / "models" / "model.pt").exists()


# -- patch -> whole image -----------------------------------------------------------------------------------------
def _images(studies, size=(96, 80)):
    return MammogramDataset(
        studies / "manifest.csv", image_size=size, class_names=["normal", "benign", "malignant"],
        label_map={"recalled_benign": "benign"},
    )  # fmt: skip


def test_lesion_patches_take_the_image_class_and_backgrounds_avoid_every_finding(studies):
    images = _images(studies)
    patches = PatchDataset(images, studies / "finding_annotations.csv", patch_size=24, backgrounds=2)
    boxes = {f.image_id for f in read_findings(studies / "finding_annotations.csv")}
    lesion_items = [item for item in patches.items if item[2] is not None]
    assert len(lesion_items) == sum(len(item[1]) for item in patches.items if item[2] == 0)
    assert all(images.labels[index] == label and label > 0 for index, _, _, label in lesion_items)
    assert sum(item[2] is None for item in patches.items) == 2 * sum(label >= 0 for label in images.labels)
    assert {images.data[index]["sop_uid"] for index, _, _, _ in lesion_items} <= boxes
    index, image_boxes, _, _ = lesion_items[0]
    sample = images[index]
    model_boxes = batch_geometries(sample)[0].to_model_boxes(image_boxes)
    for item, (i, _, box, _) in enumerate(patches.items):
        if i == index and box is None:
            centre = patches._background_centre(sample["image"][0], model_boxes, np.random.default_rng((0, item)))
            assert all(
                not (x0 - 12 <= centre[1] <= x1 + 12 and y0 - 12 <= centre[0] <= y1 + 12)
                for x0, y0, x1, y1 in model_boxes
            )
    assert patches[0]["image"].shape == (1, 24, 24)


def test_a_patch_at_the_border_is_zero_padded(studies):
    patches = PatchDataset(_images(studies), studies / "finding_annotations.csv", patch_size=24)
    image = torch.ones(1, 40, 30)
    corner = patches._crop(image, (0.0, 0.0))
    assert corner.shape == (1, 24, 24)
    assert corner[0, :12, :].sum() == 0 and corner[0, :, :12].sum() == 0 and corner[0, 12:, 12:].min() == 1


def test_findings_matching_no_image_are_a_clear_error(studies, tmp_path):
    csv_path = tmp_path / "findings.csv"
    csv_path.write_text("image_id,xmin,ymin,xmax,ymax\nnot-an-image,1,1,5,5\n")
    with pytest.raises(MammoXAIError, match="no finding box"):
        PatchDataset(_images(studies), csv_path)


def test_the_patch_classifier_starts_the_whole_image_classifier(studies, tmp_path):
    _train(
        studies, tmp_path / "patches", network_def="@finetune_network_def", patch_size=32, epochs=1, image_size=[96, 80]
    )
    patch_model = tmp_path / "patches" / "models" / "model.pt"
    whole = build_finetune_classifier("mammo_cnn", 3, init="classifier", init_weights=patch_model)
    state = torch.load(patch_model, weights_only=True)
    torch.testing.assert_close(whole.fc.weight, state["model"]["fc.weight"])
    _train(
        studies,
        tmp_path / "whole",
        network_def="@finetune_network_def",
        init="classifier",
        init_weights=str(patch_model),
        epochs=1,
    )
    assert (tmp_path / "whole" / "models" / "model.pt").is_file()
