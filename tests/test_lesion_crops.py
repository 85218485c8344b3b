"""CorRELAX's lesion-crop classifier: finding classes, multi-scale crops, per-class F1, and its bundle config."""

import csv
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import monai.bundle
import numpy as np
import pytest
import torch

from mammoxai.cli import user_error
from mammoxai.data.dataset import MammogramDataset
from mammoxai.data.findings import LESION_CLASSES, finding_class, read_findings, write_findings
from mammoxai.data.manifest import read_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.metrics import per_class_scores
from mammoxai.nets import MammoClassifier
from mammoxai.training.lesion_crops import (
    LesionCropRecord,
    MacroF1,
    check_crop_labels,
    check_crop_settings,
    load_lesion_checkpoint,
)
from mammoxai.training.patches import PatchDataset

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundle"


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lesion_studies")
    synthesize(folder, patients=4, seed=3, size=128, prevalence={"benign": 0.5, "malignant": 0.5}, prior_fraction=0.0)
    return folder


def _images(studies, size=(128, 104)):
    return MammogramDataset(read_manifest(studies / "manifest.csv"), size)


@pytest.mark.parametrize(
    "categories, expected",
    [
        (["Mass"], "mass"),
        (["Suspicious Calcification"], "calcification"),
        (["Focal Asymmetry"], "other"),
        (["Architectural Distortion", "Mass"], "mass"),
        (["No Finding"], "no_finding"),
        (["No_Finding"], "no_finding"),
        (["no  finding"], "no_finding"),
        ([" MASS "], "mass"),
        ([], "no_finding"),
    ],
)
def test_vindr_categories_map_to_the_four_lesion_classes(categories, expected):
    assert finding_class(categories) == expected
    assert expected in LESION_CLASSES


def test_finding_crops_take_their_category_at_every_scale(studies):
    findings = read_findings(studies / "finding_annotations.csv")
    crops = PatchDataset(
        _images(studies), studies / "finding_annotations.csv", patch_size=32, scales=(0.5, 1.0, 2.0), labels="finding"
    )
    images = len(crops.images)
    assert len(crops) == 3 * (len(findings) + images)  # every finding and one background per image, per scale
    expected = sorted(LESION_CLASSES.index(finding_class(f.categories)) for f in findings) * 3
    assert sorted(
        label for label, (_, _, box, _) in zip(crops.labels, crops.items, strict=True) if box is not None
    ) == sorted(expected)
    assert crops.labels.count(LESION_CLASSES.index("no_finding")) == 3 * images
    assert sorted(set(crops.item_scales)) == [0.5, 1.0, 2.0]
    assert all(crops[i]["image"].shape == (1, 32, 32) for i in (0, len(crops) - 1))


def test_findings_named_by_file_stem_give_finding_crops_not_no_finding_crops_on_the_lesion(studies, tmp_path):
    """Half the findings name their image by file stem (VinDr's image_id), in upper case: matched by SOP Instance
    UID only, their images gave background crops labelled no finding, drawn anywhere, the lesion included."""
    records = read_manifest(studies / "manifest.csv")
    stems = {record["image_id"]: Path(record["path"]).stem.upper() for record in records}
    findings = read_findings(studies / "finding_annotations.csv")
    renamed = [replace(f, image_id=stems[f.image_id]) if i % 2 else f for i, f in enumerate(findings)]
    write_findings(renamed, tmp_path / "findings.csv")
    crops = PatchDataset(_images(studies), tmp_path / "findings.csv", patch_size=16, labels="finding")
    assert sum(box is not None for _, _, box, _ in crops.items) == len(findings)


def test_boxes_drawn_on_another_size_of_the_images_are_refused_before_training(studies, tmp_path):
    """The CSV's VinDr-style height and width say the boxes are in pixels of copies twice the size of these files."""
    rows = (studies / "finding_annotations.csv").read_text().splitlines()
    header = rows[0].split(",")
    doubled = []
    for line in csv.reader(rows[1:]):
        line[header.index("height")], line[header.index("width")] = (
            str(2 * int(line[header.index(c)])) for c in ("height", "width")
        )
        doubled.append(line)
    with open(tmp_path / "findings.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([header, *doubled])
    with pytest.raises(MammoXAIError, match=r"findings.csv: gives image .* as \d+x\d+ pixels, but .* has \d+x\d+"):
        PatchDataset(_images(studies), tmp_path / "findings.csv", patch_size=16, labels="finding")


def test_boxes_without_finding_categories_are_refused_not_trained_on_as_no_finding(studies, tmp_path):
    text = (studies / "finding_annotations.csv").read_text()
    (tmp_path / "findings.csv").write_text(text.replace("finding_categories", "category", 1))
    with pytest.raises(MammoXAIError, match=r"findings.csv: the box .* has no finding_categories"):
        PatchDataset(_images(studies), tmp_path / "findings.csv", patch_size=16, labels="finding")


def test_a_larger_scale_crop_shows_more_surroundings_shrunk_to_the_view(studies):
    crops = PatchDataset(_images(studies), studies / "finding_annotations.csv", patch_size=8, labels="finding")
    image = torch.zeros(1, 40, 40)
    image[:, 16:24, 16:24] = 1.0  # an 8-pixel square around the centre (20, 20)
    same = crops._crop(image, (20.0, 20.0), 8)
    double = crops._crop(image, (20.0, 20.0), 16)
    assert same.shape == double.shape == (1, 8, 8)
    assert same.min() == 1.0  # the square fills the view at scale 1
    assert double[0, 2:6, 2:6].min() == 1.0 and double[0, 0, 0] == 0.0 and double.mean() == pytest.approx(0.25)


def test_a_finding_class_missing_from_class_names_is_a_clear_error(studies):
    with pytest.raises(MammoXAIError, match="class 'calcification' is not one of"):
        PatchDataset(
            _images(studies), studies / "finding_annotations.csv", labels="finding", class_names=["mass", "no_finding"]
        )


@pytest.mark.parametrize("background", ["No_Finding", "No Finding", "no-finding"])
def test_finding_and_background_classes_match_class_names_regardless_of_case_and_spacing(studies, background):
    """Matched as written, a lesion-crop model of "Mass", ..., "No_Finding" could be evaluated but not trained, and
    one spelling VinDr-Mammo's "No Finding" not at all; a background class it lacks is still refused in one line
    naming the setting and the classes."""
    spelt = [" Mass", "CALCIFICATION", "Other", background]
    findings = studies / "finding_annotations.csv"
    crops = PatchDataset(_images(studies), findings, patch_size=16, labels="finding", class_names=spelt)
    expected = PatchDataset(_images(studies), findings, patch_size=16, labels="finding")
    assert crops.labels == expected.labels and crops.class_names == tuple(spelt)
    message = r"^background_class: class 'no_finding' is not one of \[' Mass', 'CALCIFICATION', 'Other', 'Background'\]"
    with pytest.raises(MammoXAIError, match=message) as refused:
        PatchDataset(_images(studies), findings, labels="finding", class_names=[*spelt[:3], "Background"])
    assert "\n" not in str(refused.value)


def test_per_class_f1_leaves_a_class_without_examples_out_of_the_macro_mean():
    labels = [0, 0, 1, 1, 3, 3]
    predictions = [0, 1, 1, 1, 3, 0]
    rows, macro = per_class_scores(labels, predictions, LESION_CLASSES)
    by_class = {row["class"]: row for row in rows}
    assert by_class["mass"]["precision"] == pytest.approx(0.5) and by_class["mass"]["recall"] == pytest.approx(0.5)
    assert by_class["calcification"]["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1
    assert math.isnan(by_class["other"]["f1"]) and by_class["other"]["support"] == 0
    assert macro == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_macro_f1_metric_matches_the_report():
    metric = MacroF1()
    labels = torch.tensor([0, 0, 1, 1, 3, 3])
    predictions = torch.tensor([0, 1, 1, 1, 3, 0])
    metric(torch.nn.functional.one_hot(predictions, 4).float(), torch.nn.functional.one_hot(labels, 4).float())
    assert metric.aggregate() == pytest.approx(per_class_scores(labels, predictions, LESION_CLASSES)[1])


def test_crops_of_a_single_class_are_refused():
    with pytest.raises(MammoXAIError, match="fewer than two classes"):
        check_crop_labels([3, 3, 3], LESION_CLASSES)


def _train(studies, tmp_path, **overrides):
    settings = dict(
        config_file=str(BUNDLE / "configs" / "train_lesion_crops.json"),
        bundle_root=str(BUNDLE),
        dataset_dir=str(studies),
        output_dir=str(tmp_path),
        ckpt_dir=str(tmp_path / "models"),
        image_size=[128, 104],
        view_size=32,
        crop_scales=[0.75, 1.5],
        epochs=1,
        batch_size=16,
        num_workers=0,
        holdout={},
        val_fraction=0.5,
    )
    monai.bundle.run(**{**settings, **overrides})


def test_the_bundle_config_trains_and_reports_per_class_f1(studies, tmp_path):
    _train(studies, tmp_path, intensity_scaling="display_range", field_of_view="image")
    assert (tmp_path / "models" / "lesion_crops.pt").is_file()
    report = json.loads((tmp_path / "lesion_crops" / "report.json").read_text())
    rows = {row["class"]: row for row in report["tables"]["per_class"]}
    assert list(rows) == list(LESION_CLASSES)
    assert rows["no_finding"]["support"] > 0 and rows["other"]["support"] == 0 and rows["other"]["f1"] is None
    assert 0.0 <= report["values"]["summary"]["macro_f1"] <= 1.0
    assert (tmp_path / "lesion_crops" / "confusion.png").is_file()
    assert np.isclose(
        report["values"]["summary"]["crops"], sum(row["support"] for row in report["tables"]["per_class"])
    )
    # what the saliency evaluation needs to check it runs the classifier as trained
    record = torch.load(tmp_path / "models" / "lesion_crops.pt", weights_only=True)["crops"]
    assert record == {
        "image_size": [128, 104],
        "view_size": 32,
        "class_names": list(LESION_CLASSES),
        "intensity_scaling": "display_range",
        "field_of_view": "image",
    }
    network, path = MammoClassifier(num_classes=len(LESION_CLASSES)), tmp_path / "models" / "lesion_crops.pt"
    load_lesion_checkpoint(network, path, [128, 104], 32, LESION_CLASSES, "display_range", "image")
    with pytest.raises(MammoXAIError, match=r"trained with lesion_image_size \[128, 104\], not the \[256, 208\]"):
        load_lesion_checkpoint(network, path, [256, 208], 32, LESION_CLASSES)
    with pytest.raises(
        MammoXAIError,
        match=r'trained with lesion_intensity_scaling "display_range", not the "breast_percentiles" of this run '
        r"\(pass --lesion_intensity_scaling '\"display_range\"'",
    ):
        load_lesion_checkpoint(network, path, [128, 104], 32, LESION_CLASSES, "breast_percentiles")
    with pytest.raises(
        MammoXAIError,
        match=r'trained with lesion_field_of_view "image", not the "breast" of this run '
        r"\(pass --lesion_field_of_view '\"image\"'",
    ):
        load_lesion_checkpoint(network, path, [128, 104], 32, LESION_CLASSES, "display_range", "breast")


@pytest.mark.parametrize(
    "view_size, backgrounds, message",
    [
        (300, 2, "view_size: is 300, larger than the 128x104 grid"),
        (0, 2, "view_size: is 0, not a positive whole number"),
        (8, 2, "view_size: is 8x8; mammo_cnn needs 16 pixels a side"),
        ("abc", 2, "view_size: is 'abc', not a positive whole number"),
        (32, -1, "backgrounds: is -1, not a whole number of 0 or more"),
    ],
)
def test_crop_settings_no_training_can_use_are_refused(view_size, backgrounds, message):
    with pytest.raises(MammoXAIError, match=message):
        check_crop_settings([128, 104], view_size, backgrounds)


def test_the_config_refuses_a_view_larger_than_the_grid_before_reading_an_image(studies, tmp_path):
    with pytest.raises(Exception) as error:
        _train(studies, tmp_path, view_size=300)
    assert "larger than the 128x104 grid" in str(user_error(error.value)), error.value
    assert not (tmp_path / "cache").exists()


def test_an_unreadable_image_is_listed_before_the_first_epoch(studies, tmp_path):
    copy = tmp_path / "studies"
    shutil.copytree(studies, copy)
    broken = copy / read_manifest(copy / "manifest.csv")[0]["path"]
    broken.write_bytes(broken.read_bytes()[:300])
    with pytest.raises(Exception) as error:
        _train(copy, tmp_path)
    assert f"1 listed images cannot be read: {broken}" in str(user_error(error.value)), error.value
    assert not (tmp_path / "models" / "lesion_crops.pt").exists()


@pytest.mark.parametrize(
    "state, message",
    [
        (None, "lesion-crop checkpoint not found .*train_lesion_crops.json"),
        ({}, "records no training grid, view size or class names .*train_lesion_crops.json"),
    ],
)
def test_a_lesion_checkpoint_without_its_record_asks_for_training(tmp_path, state, message):
    path = tmp_path / "lesion_crops.pt"
    network = MammoClassifier(num_classes=len(LESION_CLASSES))
    if state is not None:
        torch.save({"model": network.state_dict(), **state}, path)
    with pytest.raises(MammoXAIError, match=message):
        load_lesion_checkpoint(network, path)


@pytest.mark.parametrize(
    "view_size, class_names, message",
    [
        (64, LESION_CLASSES, "trained with view_size 32, not the 64 of this run .*--view_size 32"),
        (32, LESION_CLASSES[::-1], "trained with lesion_class_names .* another order.*--lesion_class_names"),
    ],
)
def test_a_lesion_checkpoint_of_other_settings_is_refused(tmp_path, view_size, class_names, message):
    path = tmp_path / "lesion_crops.pt"
    network = MammoClassifier(num_classes=len(LESION_CLASSES))
    record = LesionCropRecord([128, 104], 32, LESION_CLASSES).state_dict()
    torch.save({"model": network.state_dict(), "crops": record}, path)
    with pytest.raises(MammoXAIError, match=message):
        load_lesion_checkpoint(network, path, [128, 104], view_size, class_names)


@pytest.mark.parametrize(
    ("setting", "other", "default"),
    [("intensity_scaling", "display_range", "breast_percentiles"), ("field_of_view", "image", "breast")],
)
def test_a_lesion_record_older_than_an_input_setting_means_its_default(tmp_path, setting, other, default):
    """Records older than intensity_scaling mean breast_percentiles; older than field_of_view, breast."""
    path = tmp_path / "lesion_crops.pt"
    network = MammoClassifier(num_classes=len(LESION_CLASSES))
    record = {"image_size": [128, 104], "view_size": 32, "class_names": list(LESION_CLASSES)}
    torch.save({"model": network.state_dict(), "crops": record}, path)
    load_lesion_checkpoint(network, path, [128, 104], 32, LESION_CLASSES, **{setting: default})
    with pytest.raises(
        MammoXAIError, match=f"trained with lesion_{setting} {json.dumps(default)}, not the {json.dumps(other)}"
    ):
        load_lesion_checkpoint(network, path, [128, 104], 32, LESION_CLASSES, **{setting: other})
    assert LesionCropRecord([128, 104], 32, LESION_CLASSES, **{setting: other}).state_dict()[setting] == other
