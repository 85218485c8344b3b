"""Classifier evaluation: operating points, calibration, exam aggregation, ensembles, and evaluate.json end to end."""

import json
from collections import Counter

import monai.bundle
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from mammoxai.cli import BUNDLE_ROOT
from mammoxai.data.dataset import MammogramDataset
from mammoxai.data.manifest import read_manifest, write_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.nets import MammoClassifier
from mammoxai.training.checkpoints import TrainingViews
from mammoxai.training.classification import patient_split
from mammoxai.training.evaluate_classifier import (
    ClassifierEvaluator,
    aggregate_exams,
    binary_metrics,
    calibration_bins,
    load_checkpoints,
    main,
    predict_probabilities,
    select_records,
    sensitivity_specificity,
    threshold_for_specificity,
)

CLASSES = ["normal", "benign", "malignant"]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studies")
    synthesize(folder, patients=8, seed=0, size=192)
    return folder


def served_network(class_names: list[str], views: list[str] | None = None) -> nn.Module:
    """The network ``configs/train.json`` trains, freshly initialised: the served one with its metadata heads, or
    the multi-view fine-tuning network of ``views``."""
    parser = ConfigParser()
    parser.read_config(BUNDLE_ROOT / "configs" / "train.json")
    parser.update({"bundle_root": str(BUNDLE_ROOT), "class_names": class_names, "views": views})
    return parser.get_parsed_content("network_def" if views is None else "finetune_network_def")


class Constant(nn.Module):
    """A 'network' whose softmax is the given probabilities for every image."""

    def __init__(self, probabilities):
        super().__init__()
        self.logits = nn.Parameter(torch.log(torch.tensor(probabilities)))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


# -- metrics ----------------------------------------------------------------------------------------------------
def test_sensitivity_and_specificity_count_scores_at_the_threshold_as_positive():
    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.5, 0.2, 0.5, 0.1, 0.0, 0.3]
    sensitivity, specificity = sensitivity_specificity(labels, scores, 0.5)
    assert sensitivity == pytest.approx(2 / 3)
    assert specificity == pytest.approx(3 / 4)
    assert np.isnan(sensitivity_specificity([0, 0], [0.1, 0.2], 0.5)[0])


def test_threshold_for_specificity_is_the_lowest_that_reaches_the_target():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.8])
    threshold = threshold_for_specificity(labels, scores, 0.75)
    assert threshold == pytest.approx(0.35)  # 3 of 4 negatives below it, and the positive at 0.35 is caught
    assert sensitivity_specificity(labels, scores, threshold) == (1.0, 0.75)
    assert threshold_for_specificity(labels, scores, 1.0) > 0.4  # every negative below: the 0.4 one too


def test_calibrated_probabilities_have_zero_ece_and_overconfident_ones_do_not():
    labels = np.array([1] * 8 + [0] * 2 + [1] * 2 + [0] * 8)
    calibrated = np.array([0.8] * 10 + [0.2] * 10)
    ece, rows = calibration_bins(labels, calibrated, n_bins=10)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert [row["images"] for row in rows] == [10, 10]
    overconfident, _ = calibration_bins(labels, np.where(calibrated > 0.5, 1.0, 0.0), n_bins=10)
    assert overconfident == pytest.approx(0.2)  # |0.8 - 1.0| and |0.2 - 0.0|, each on half the images


def test_exam_score_is_the_max_or_mean_of_its_views_and_positive_if_any_view_is():
    records = [
        {"patient_id": "A", "study_uid": "s1", "laterality": "L"},
        {"patient_id": "A", "study_uid": "s1", "laterality": "L"},
        {"patient_id": "A", "study_uid": "s1", "laterality": "R"},
    ]
    scores, labels = np.array([0.2, 0.6, 0.1]), np.array([0, 1, 0])
    exams, maxima, exam_labels, patients = aggregate_exams(records, scores, labels, ["study_uid", "laterality"], "max")
    assert exams == ["s1/L", "s1/R"] and patients == ["A", "A"]
    assert maxima.tolist() == [0.6, 0.1] and exam_labels.tolist() == [1, 0]
    _, means, _, _ = aggregate_exams(records, scores, labels, ["study_uid"], "mean")
    assert means.tolist() == pytest.approx([0.3])
    with pytest.raises(MammoXAIError, match="exam_aggregation"):
        aggregate_exams(records, scores, labels, ["study_uid"], "median")


def test_an_exam_never_groups_images_of_several_patients_or_a_blank_study():
    """Blank study_uid cells grouped every such image of one side into one exam, across patients."""
    records = [
        {"path": "a", "patient_id": "P1", "study_uid": "", "laterality": "L"},
        {"path": "b", "patient_id": "P2", "study_uid": "", "laterality": "L"},
        {"path": "c", "patient_id": "P3", "study_uid": "s3", "laterality": "L"},
        {"path": "d", "patient_id": "P3", "study_uid": "s3", "laterality": "L"},
        {"path": "e", "patient_id": "P4", "study_uid": "s3", "laterality": "L"},  # a study uid reused by a site
    ]
    scores, labels = np.array([0.1, 0.9, 0.5, 0.7, 0.2]), np.array([0, 1, 0, 0, 0])
    exams, maxima, exam_labels, patients = aggregate_exams(records, scores, labels, ["study_uid", "laterality"])
    assert patients == ["P1", "P2", "P3", "P4"] and len(set(exams)) == 4
    assert maxima.tolist() == [0.1, 0.9, 0.7, 0.2] and exam_labels.tolist() == [0, 1, 0, 0]


def test_separable_scores_give_auc_one_with_a_patient_level_interval():
    labels = np.array([0, 0, 1, 1] * 5)
    scores = labels * 0.5 + np.linspace(0, 0.4, 20)
    patients = [f"P{i // 2}" for i in range(20)]
    values = binary_metrics(labels, scores, patients, threshold=0.5, target_specificity=0.9, n_bootstrap=200)
    assert values["auc"] == values["auc_low"] == values["auc_high"] == 1.0
    assert values["patients"] == 10 and values["positives"] == 10
    assert values["sensitivity_at_target"] == 1.0 and values["specificity_at_target"] >= 0.9


def test_a_row_resting_on_one_patient_has_no_interval_rather_than_one_of_zero_width():
    """A device only one test patient was imaged on: every patient resample is that patient."""
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.3, 0.2])
    values = binary_metrics(labels, scores, ["P1"] * 4, n_bootstrap=50)
    assert values["auc"] == pytest.approx(0.75) and values["sensitivity"] == pytest.approx(0.5)
    assert all(np.isnan(values[key]) for key in ("auc_low", "auc_high", "sensitivity_low", "specificity_high"))
    two = binary_metrics(labels, scores, ["P1", "P1", "P2", "P2"], n_bootstrap=50)
    assert not np.isnan(two["specificity_low"])


def test_every_record_is_trained_validated_or_evaluated_under_a_holdout_of_two_fields():
    """Training held out a record matching any field, evaluation scored those matching all: a test record of the
    other site was neither trained on nor scored. A record is held out when it matches every field."""
    labels = ["normal", "benign", "malignant"] * 3
    records = [
        {"path": f"P{i}.dcm", "patient_id": f"P{i}", "case_label": label, "split": "training", "site": "A"}
        for i, label in enumerate(labels)
    ]
    records += [{**records[0], "path": "T1.dcm", "patient_id": "T1", "split": "test"}]
    records += [{**records[0], "path": "T2.dcm", "patient_id": "T2", "split": "test", "site": "B"}]
    holdout = {"split": "test", "site": "A"}
    train, val = patient_split(records, val_fraction=0.3, seed=0, holdout=holdout)
    evaluated = select_records(records, holdout)
    assert [record["path"] for record in evaluated] == ["T1.dcm"]
    assert sorted(record["path"] for record in [*train, *val, *evaluated]) == sorted(r["path"] for r in records)


def test_an_unknown_exam_aggregation_is_refused_before_any_image_is_scored(tmp_path):
    """It was found after the whole test set was scored; the evaluator is built from nothing it would score."""
    with pytest.raises(MammoXAIError, match=r"^exam_aggregation: is 'median' \(use 'max' or 'mean'\)$"):
        ClassifierEvaluator([], None, CLASSES, output_dir=tmp_path / "report", exam_aggregation="median")


def test_select_records_keeps_the_holdout_and_refuses_an_empty_selection():
    records = [{"path": "a", "split": "test"}, {"path": "b", "split": "training"}]
    assert [r["path"] for r in select_records(records, {"split": "test"})] == ["a"]
    assert len(select_records(records, {})) == 2
    with pytest.raises(MammoXAIError, match="match none"):
        select_records(records, {"split": "validation"})
    with pytest.raises(MammoXAIError, match=r"^eval_where: is \"{'split': 'test'}\", not a mapping"):
        select_records(records, "{'split': 'test'}")  # Python quotes through scripts/evaluate.py's JSON reading


# -- checkpoints and ensembles ------------------------------------------------------------------------------------
def test_ensemble_probabilities_are_the_mean_of_its_members(studies):
    dataset = MammogramDataset(
        studies / "manifest.csv", image_size=32, class_names=CLASSES, label_map={"recalled_benign": "benign"}
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False)
    members = [Constant([0.7, 0.2, 0.1]), Constant([0.1, 0.2, 0.7])]
    probabilities, fields = predict_probabilities(members, loader)
    assert probabilities.shape == (len(dataset), 3)
    np.testing.assert_allclose(probabilities, np.tile([0.4, 0.2, 0.4], (len(dataset), 1)), atol=1e-6)
    assert fields == {}  # members without metadata heads
    with pytest.raises(MammoXAIError, match="order"):
        predict_probabilities(
            members,
            torch.utils.data.DataLoader(
                dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)
            ),
        )


def test_metadata_head_probabilities_are_averaged_over_members_like_the_classes(studies):
    dataset = MammogramDataset(
        studies / "manifest.csv", image_size=32, class_names=CLASSES, label_map={"recalled_benign": "benign"}
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(served_network(CLASSES).eval())
    probabilities, fields = predict_probabilities(members, loader)
    images = torch.stack([dataset[index]["image"] for index in range(len(dataset))])
    with torch.no_grad():
        outputs = [member.forward_with_metadata(images) for member in members]
    expected_view = torch.stack([heads["view"].softmax(1) for _, heads in outputs]).mean(0)
    assert set(fields) == {"view", "thickness", "compression_force", "kvp", "age"}
    np.testing.assert_allclose(fields["view"], expected_view.numpy(), atol=1e-5)
    np.testing.assert_allclose(fields["view"].sum(1), 1.0, atol=1e-5)
    assert probabilities.shape == (len(dataset), 3)


def test_checkpoints_load_plain_and_wrapped_state_dicts(tmp_path):
    torch.manual_seed(0)
    source = MammoClassifier(num_classes=3)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pt")
    members = load_checkpoints(MammoClassifier(num_classes=3), [tmp_path / "plain.pt", tmp_path / "wrapped.pt"])
    image = torch.rand(1, 1, 64, 64)
    source.eval()
    for member in members:
        assert not member.training
        torch.testing.assert_close(member(image), source(image))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: MammoClassifier(num_classes=2).state_dict(), "does not fit"),
        (lambda: {"weights": [1, 2, 3]}, "does not fit"),
        (None, "not found"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is not None:
        torch.save(content(), path)
    with pytest.raises(MammoXAIError, match=message) as error:
        load_checkpoints(MammoClassifier(num_classes=3), [path])
    assert "model.pt" in str(error.value)


# -- the bundle config end to end ---------------------------------------------------------------------------------
def _evaluate(studies, tmp_path, *overrides):
    return main(
        [
            "--dataset_dir",
            str(studies),
            "--evaluation_dir",
            str(tmp_path / "report"),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--image_size",
            "[64, 48]",
            "--num_workers",
            "0",
            "--n_bootstrap",
            "50",
            "--eval_where",
            "{}",
            *overrides,
        ]
    )


def _evaluate_network(studies, tmp_path, network, *overrides, name="model.pt"):
    """Save ``network``'s weights as the one checkpoint and evaluate it; the exit status."""
    torch.save(network.state_dict(), tmp_path / name)
    return _evaluate(studies, tmp_path, "--checkpoints", json.dumps([str(tmp_path / name)]), *overrides)


def _report(tmp_path):
    return json.loads((tmp_path / "report" / "report.json").read_text())


def test_a_multi_view_evaluation_reports_breasts_where_it_scored_breasts(studies, tmp_path):
    views = ["CC", "MLO"]
    network = served_network(CLASSES, views)
    assert (
        _evaluate_network(
            studies, tmp_path, network, "--views", json.dumps(views), "--network_def", "@finetune_network_def"
        )
        == 0
    )
    report = _report(tmp_path)
    breast_row, exam_row = report["tables"]["binary"]
    assert breast_row["level"] == "breast" and breast_row["images"] == exam_row["images"] == 20
    assert report["description"].startswith("20 labelled breasts of 8 patients, every record of the manifest")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Each sample is a breast, its views CC+MLO scored together" in markdown


def test_a_multi_view_checkpoint_evaluated_in_another_view_order_is_one_line_on_stderr(studies, tmp_path, capsys):
    """A concat head weighs each view position on its own: fed MLO then CC it scores with the views swapped."""
    network = served_network(CLASSES, ["CC", "MLO"])
    path = tmp_path / "model.pt"
    torch.save({"model": network.state_dict(), "views": TrainingViews(["CC", "MLO"], "concat").state_dict()}, path)
    overrides = ["--checkpoints", json.dumps([str(path)]), "--network_def", "@finetune_network_def"]
    assert _evaluate(studies, tmp_path, *overrides, "--views", '["MLO", "CC"]') == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{path}: was trained with views" in error[0]
    assert """pass --views '["CC", "MLO"]'""" in error[0]
    assert not (tmp_path / "report").exists()


def test_evaluate_config_writes_the_report_of_an_ensemble(studies, tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(str(tmp_path / f"model{seed}.pt"))
        torch.save(served_network(CLASSES).state_dict(), paths[-1])
    assert _evaluate(studies, tmp_path, "--checkpoints", json.dumps(paths)) == 0
    report = _report(tmp_path)
    assert report["values"]["checkpoints"] == paths
    assert [row["level"] for row in report["tables"]["binary"]][0] == "image"
    assert report["tables"]["binary"][0]["images"] == 40
    assert report["tables"]["binary"][1]["images"] == 20  # 8 patients x studies x 2 breasts, both views merged
    assert [row["class"] for row in report["tables"]["per_class"]] == [*CLASSES, "macro average"]
    systems = {row["xray_system"] for row in report["tables"]["per_device"]}
    assert len(systems) >= 2
    assert 0.0 <= report["values"]["calibration"]["ece"] <= 1.0
    for name in ("report.md", "roc.png", "reliability.png"):
        assert (tmp_path / "report" / name).is_file()
    assert "scripts/evaluate.py" in report["command"]


def test_a_report_of_every_record_does_not_call_them_held_out(studies, tmp_path, capfd):
    """With holdout and eval_where {}, the manifest's training images are scored: the report must not say held-out."""
    torch.manual_seed(0)
    network = served_network(CLASSES)
    assert _evaluate_network(studies, tmp_path, network, "--holdout", "{}", "--n_bootstrap", "5") == 0
    description = _report(tmp_path)["description"]
    assert "held-out" not in description and "eval_where is empty: images training used are scored too" in description
    logged = capfd.readouterr()
    assert "eval_where is empty: every record of the manifest is scored" in logged.out + logged.err
    assert _evaluate_network(studies, tmp_path, network, "--eval_where", '{"split": "test"}', "--n_bootstrap", "5") == 0
    assert " labelled held-out images of " in _report(tmp_path)["description"]


def test_images_naming_no_patient_are_resampled_with_their_study_not_one_by_one(studies, tmp_path):
    """Without a patient column the CC and MLO of a study counted as independent patients: intervals too narrow."""
    records = [{**record, "patient_id": ""} for record in read_manifest(studies / "manifest.csv")]
    folder = tmp_path / "no_patients"
    write_manifest(records, folder / "manifest.csv")
    torch.manual_seed(0)
    assert _evaluate_network(folder, tmp_path, served_network(CLASSES), "--n_bootstrap", "5") == 0
    image_row, exam_row = _report(tmp_path)["tables"]["binary"]
    assert image_row["images"] == 40 and image_row["patients"] == len({r["study_uid"] for r in records}) < 40
    assert exam_row["patients"] == image_row["patients"]


def test_one_column_name_is_a_list_of_one_column_as_one_finding_class_is(studies, tmp_path):
    """``--finding_classes mass`` was one class while ``--exam_keys study_uid`` was refused as not a list."""
    torch.manual_seed(0)
    overrides = ("--exam_keys", "study_uid", "--breakdown_keys", "density", "--n_bootstrap", "5")
    assert _evaluate_network(studies, tmp_path, served_network(CLASSES), *overrides) == 0
    report = _report(tmp_path)
    assert report["tables"]["binary"][1]["level"] == "exam (study_uid, max)"  # both breasts of a study: one exam
    densities = [row["density"] for row in report["tables"]["positives_by_density"]]
    assert densities and set(densities) <= set("ABCD")  # one breakdown by density, not one per letter of "density"


@pytest.mark.parametrize("setting", ["--exam_keys", "--breakdown_keys"])
@pytest.mark.parametrize("text", ["study_uid,laterality", "[study_uid, laterality", "study_uid laterality"])
def test_column_lists_the_command_line_could_not_read_are_refused_not_read_one_character_per_column(
    studies, tmp_path, capsys, setting, text
):
    torch.manual_seed(0)
    status = _evaluate_network(studies, tmp_path, served_network(CLASSES), setting, text)
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    refusal = f"{setting[2:]}: is {text!r}, not a name or a list of names"
    assert f"{refusal} (give one name, or a list, e.g. {setting} '[" in error
    assert not (tmp_path / "report").exists()


def test_exam_keys_no_image_has_are_refused_before_any_image_is_scored(studies, tmp_path, capsys):
    """A misspelt key would group the images of a study, or all images, as one exam and report their AUC."""
    torch.manual_seed(0)
    status = _evaluate_network(studies, tmp_path, served_network(CLASSES), "--exam_keys", '["study_uid", "lat"]')

    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "exam_keys ['lat']: are columns of no evaluated image" in error and "'laterality'" in error
    assert not (tmp_path / "report").exists()


def test_positives_are_broken_down_by_lesion_type_against_every_negative(studies, tmp_path):
    torch.manual_seed(0)
    assert _evaluate_network(studies, tmp_path, served_network(CLASSES)) == 0
    report = _report(tmp_path)
    overall, kinds = report["tables"]["binary"][0], report["tables"]["positives_by_lesion_types"]
    records = read_manifest(studies / "manifest.csv")
    malignant = [r["lesion_types"] or "unspecified" for r in records if r["case_label"] == "malignant"]
    assert {row["lesion_types"]: row["positives"] for row in kinds} == dict(Counter(malignant))
    negatives = overall["images"] - overall["positives"]
    assert all(row["images"] - row["positives"] == negatives for row in kinds)
    assert len(kinds) >= 2  # the 8 synthetic patients have cancers of more than one kind
    assert "## malignant images by lesion_types" in (tmp_path / "report" / "report.md").read_text()


def test_the_positive_class_matches_a_class_regardless_of_case_and_spacing(studies, tmp_path, capsys):
    """``--positive_class " Malignant "`` was refused as not a class, where the label "Malignant" is the class
    "malignant"; a class the model lacks is still one line on stderr naming the classes."""
    torch.manual_seed(0)
    network = served_network(CLASSES)
    assert _evaluate_network(studies, tmp_path, network, "--positive_class", " Malignant ", "--n_bootstrap", "5") == 0
    assert "## malignant images by lesion_types" in (tmp_path / "report" / "report.md").read_text()
    assert _evaluate_network(studies, tmp_path, network, "--positive_class", "cancer") == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1] == (
        "error: positive_class: class 'cancer' is not one of ['normal', 'benign', 'malignant'] (name one of class_names)"
    )


def test_metadata_heads_are_scored_against_the_header_with_their_qc_flags(studies, tmp_path):
    torch.manual_seed(0)
    network = served_network(CLASSES)
    with torch.no_grad():  # a view head sure of "MLO" whatever the image: every CC image is a confident mismatch
        network.heads["view"].weight.zero_()
        network.heads["view"].bias.copy_(torch.tensor([-20.0, 20.0, -20.0, -20.0]))
    assert _evaluate_network(studies, tmp_path, network) == 0
    rows = {row["field"]: row for row in _report(tmp_path)["tables"]["metadata_heads"]}
    assert list(rows) == ["view", "thickness", "compression_force", "kvp", "age"]
    views = [r["view"] for r in read_manifest(studies / "manifest.csv")]
    assert rows["view"]["images"] == len(views)
    assert rows["view"]["accuracy"] == pytest.approx(views.count("MLO") / len(views))
    assert rows["view"]["qc_flags"] == views.count("CC")
    assert rows["view"]["qc_flag_rate"] == pytest.approx(views.count("CC") / len(views))
    for row in rows.values():
        assert 0 <= row["qc_flags"] <= row["images"] and 0.0 <= row["majority_baseline"] <= 1.0


def test_a_network_without_metadata_heads_has_no_metadata_table(studies, tmp_path):
    torch.manual_seed(0)
    plain = {"_target_": "mammoxai.nets.MammoClassifier", "num_classes": 3}
    assert _evaluate_network(studies, tmp_path, MammoClassifier(num_classes=3), "--network_def", json.dumps(plain)) == 0
    report = _report(tmp_path)
    assert "metadata_heads" not in report["tables"]
    assert "binary" in report["tables"]


def test_binary_task_has_no_per_class_table(studies, tmp_path):
    torch.manual_seed(0)
    label_map = {"normal": "other", "benign": "other", "recalled_benign": "other"}
    options = ["--class_names", '["other", "malignant"]', "--label_map", json.dumps(label_map)]
    assert _evaluate_network(studies, tmp_path, served_network(["other", "malignant"]), *options) == 0
    report = _report(tmp_path)
    assert "per_class" not in report["tables"]
    assert report["tables"]["binary"][0]["positives"] == 4


@pytest.mark.parametrize(
    ("option", "value", "fix"),
    [
        ("--class_names", "normal,benign", """--class_names '["normal", "benign", "malignant"]'"""),
        ("--views", "CC,MLO", """--views '["CC", "MLO"]'"""),
    ],
)
def test_a_list_the_script_reads_as_text_is_one_line_on_stderr_before_anything_is_read(
    tmp_path, capsys, option, value, fix
):
    """scripts/evaluate.py reads ``normal,benign`` as text (a folder name may hold a comma): one name per letter."""
    assert _evaluate(tmp_path / "no studies", tmp_path, option, value) == 1
    error = capsys.readouterr().err.strip().splitlines()
    problem = f"is {value!r}, not a list of names (give a list, e.g. {fix})"
    assert error == [f"error: {option.removeprefix('--')}: {problem}"]
    assert not (tmp_path / "report").exists() and not (tmp_path / "cache").exists()


def test_a_checkpoint_of_another_class_count_is_one_line_on_stderr(studies, tmp_path, capsys):
    assert _evaluate_network(studies, tmp_path, served_network(["other", "malignant"]), name="two.pt") == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "two.pt" in error[0] and "class_names" in error[0]
    assert not (tmp_path / "report").exists()


def test_a_model_is_evaluated_only_on_the_intensity_scaling_and_field_of_view_it_was_trained_with(
    studies, tmp_path, capsys
):
    """Scored on images scaled or framed otherwise than it learnt from, a network gives numbers and no error."""
    monai.bundle.run(
        config_file=str(BUNDLE_ROOT / "configs" / "train.json"),
        bundle_root=str(BUNDLE_ROOT),
        logging_file=False,
        dataset_dir=str(studies),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        image_size=[64, 48],
        intensity_scaling="display_range",
        field_of_view="image",
        epochs=1,
        batch_size=8,
        num_workers=0,
        device="cpu",
    )
    model = tmp_path / "models" / "model.pt"
    grid = torch.load(model, weights_only=True)["grid"]
    assert (grid["intensity_scaling"], grid["field_of_view"]) == ("display_range", "image")
    capsys.readouterr()
    checkpoints = ["--checkpoints", json.dumps([str(model)])]
    assert _evaluate(studies, tmp_path, *checkpoints) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f'error: {model}: was trained with intensity_scaling "display_range", not the "breast_percentiles" of this '
        """run (pass --intensity_scaling '"display_range"', or retrain with this run's settings)"""
    ]
    scaled = [*checkpoints, "--intensity_scaling", "display_range"]
    assert _evaluate(studies, tmp_path, *scaled) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f'error: {model}: was trained with field_of_view "image", not the "breast" of this '
        """run (pass --field_of_view '"image"', or retrain with this run's settings)"""
    ]
    assert not (tmp_path / "report").exists()
    assert _evaluate(studies, tmp_path, *scaled, "--field_of_view", "image") == 0
    assert _report(tmp_path)["tables"]["binary"][0]["images"] == 40
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / name) for name in ("train.json", "evaluate.json")])
    parser.update({"bundle_root": str(BUNDLE_ROOT), "dataset_dir": str(studies), "eval_where": {}})
    parser.update({"intensity_scaling": "display_range", "field_of_view": "image"})
    dataset = parser.get_parsed_content("evaluate#dataset")  # what it scored
    assert (dataset.intensity_scaling, dataset.field_of_view) == ("display_range", "image")
