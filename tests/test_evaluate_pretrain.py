"""Pretraining evaluation: held-out pairs, per-field metrics, the report, and the bundle config end to end."""

import json
import math
import shutil

import monai.bundle
import numpy as np
import pytest
import torch
from PIL import Image
from test_manifest import write_csv

from mammoxai.cli import BUNDLE_ROOT
from mammoxai.data.cache import PreprocessedCache
from mammoxai.data.dataset import MammogramDataset
from mammoxai.data.manifest import read_manifest, record_header, write_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.io.fields import UNKNOWN, MetadataLabelSpace
from mammoxai.io.preprocess import FIELDS_OF_VIEW
from mammoxai.io.preprocess import INTENSITY_SCALINGS as SCALINGS
from mammoxai.nets import MetadataNet
from mammoxai.reports import Report, bar_figure, confusion_matrix_figure
from mammoxai.training.evaluate_pretrain import (
    bootstrap_groups,
    collect_outputs,
    field_metrics,
    held_out_records,
    main,
    matching_metrics,
    matching_pairs,
    record_identity,
    split_patients,
)
from mammoxai.training.pretrain import (
    CheckpointInfo,
    fit_label_space,
    load_pretrained,
    select_fields,
    split_by_patient,
    split_fingerprint,
)

#: the bundle's fields, with the X-ray systems "ACME ONE" and "ACME TWO" learned
SPACE = MetadataLabelSpace.default().fit(
    record_header({"manufacturer": "Acme", "model": model}) for model in ("One", "Two")
)


def _records(patients, studies=1, views=4, prefix="P"):
    """Manifest-like records: every patient has ``studies`` studies of ``views`` images."""
    return [
        {"path": f"{prefix}{p}_S{s}_{v}.dcm", "patient_id": f"{prefix}{p}", "study_uid": f"{prefix}{p}.{s}"}
        for p in range(patients)
        for s in range(studies)
        for v in range(views)
    ]


# -- pairs ------------------------------------------------------------------------------------------------------
def test_pairs_are_balanced_and_positives_are_same_patient_and_study():
    records = _records(5, studies=2, views=4)
    identities = [record_identity(record, SPACE) for record in records]
    pairs = matching_pairs(identities, seed=0)
    positives, negatives = pairs[pairs[:, 2] == 1], pairs[pairs[:, 2] == 0]
    assert len(positives) == len(negatives) == 5 * 2 * 6  # 4 views -> 6 pairs per study
    assert all(identities[i] == identities[j] and i != j for i, j, _ in positives)
    assert all(identities[i][0] != identities[k][0] for i, k, _ in negatives)


def test_prior_studies_of_the_same_patient_are_not_positives():
    identities = [("P1", "S1"), ("P1", "S2"), ("P2", "S3"), ("P2", "S3")]
    pairs = matching_pairs(identities, seed=0)
    assert pairs[pairs[:, 2] == 1][:, :2].tolist() == [[2, 3]]


def test_pairs_are_deterministic_per_seed():
    identities = [record_identity(record, SPACE) for record in _records(8)]
    np.testing.assert_array_equal(matching_pairs(identities, seed=3), matching_pairs(identities, seed=3))
    assert not np.array_equal(matching_pairs(identities, seed=3), matching_pairs(identities, seed=4))


def test_positive_cap_keeps_the_pairs_balanced():
    identities = [record_identity(record, SPACE) for record in _records(8)]
    pairs = matching_pairs(identities, seed=0, max_positives=10)
    assert (pairs[:, 2] == 1).sum() == (pairs[:, 2] == 0).sum() == 10


def test_images_without_a_patient_take_no_part_and_a_missing_study_groups_by_patient():
    identities = [("P1", "S1"), ("P1", "S1"), (None, "S1"), ("P2", None), ("P2", None), ("P3", "S3")]
    pairs = matching_pairs(identities, seed=0)
    assert 2 not in set(pairs[:, :2].ravel())
    assert pairs[pairs[:, 2] == 1][:, :2].tolist() == [[0, 1], [3, 4]]


def test_held_out_pairs_share_no_patient_with_training():
    train = _records(6, prefix="A")
    evaluation = _records(4, prefix="B") + train[:4]  # a leaked training patient
    held_out = held_out_records(evaluation, train, SPACE)
    assert len(held_out) == 16
    pairs = matching_pairs([record_identity(record, SPACE) for record in held_out], seed=0)
    paired_patients = {held_out[i]["patient_id"] for i in pairs[:, :2].ravel()}
    assert paired_patients and not paired_patients & {record["patient_id"] for record in train}


def test_evaluating_only_training_patients_is_a_clear_error():
    train = _records(3)
    with pytest.raises(MammoXAIError, match="all 12 images belong to patients in the training split"):
        held_out_records(train, train, SPACE)


def test_evaluation_images_naming_no_patient_are_kept_with_a_warning_that_they_cannot_be_checked(caplog):
    """Such images were reported as held out, "none of whom is in the training split", without a word."""
    train = _records(3)
    anonymous = [{"path": record["path"]} for record in train]
    assert len(held_out_records([*anonymous, *_records(2, prefix="Q")], train, SPACE)) == 20
    assert "12 of 20 evaluation images name neither a patient nor a study" in caplog.text


def test_bootstrap_units_are_the_patient_else_the_study_else_the_image():
    records = [
        {"path": "a.png", "patient_id": "P1"},
        {"path": "b.png", "patient_id": "P1", "study_uid": "S9"},
        {"path": "c.png", "study_uid": "S9"},
        {"path": "d.png"},
        {"path": "e.png"},
    ]
    groups = bootstrap_groups(records, SPACE)
    assert groups[0] == groups[1] and len(set(groups)) == 4  # the study of c is not the patient P1


def test_bootstrap_units_are_the_owners_the_pretraining_split_kept_apart():
    """One rule (pretrain.record_owner) for the split, its fingerprint and the bootstrap: the units of a training
    split's images are the patients whose fingerprint the checkpoint records."""
    records = [
        {"path": "a.png", "patient_id": "P1", "view": "CC"},
        {"path": "b.png", "patient_id": "P2", "study_uid": "S9", "view": "MLO"},
        {"path": "c.png", "study_uid": "S9", "view": "CC"},
        {"path": "d.png", "view": "MLO"},
    ]
    network = MetadataNet("mammo_cnn", {name: SPACE.num_classes(name) for name in SPACE.fields}, 8, 4)
    info = CheckpointInfo(network, SPACE, (32, 32), train_records=records, seed=0, val_fraction=0.5)
    assert bootstrap_groups(records, SPACE) == ["P1", "P2", "S9", "d.png"]
    assert split_fingerprint(bootstrap_groups(records, SPACE)) == info.split["fingerprint"]


def test_field_intervals_of_images_naming_no_patient_are_not_of_zero_width():
    """Every such image was one shared "patient", so every resample was the whole set: intervals of zero width."""
    records = [{"path": f"{i}.png", "view": "CC" if i % 2 else "MLO"} for i in range(40)]
    encoded = [SPACE.encode(record_header(record)) for record in records]
    targets = {name: np.array([labels[name] for labels in encoded]) for name in SPACE.fields}
    generator = torch.Generator().manual_seed(0)
    logits = {name: torch.randn(40, SPACE.num_classes(name), generator=generator) for name in SPACE.fields}
    rows, _ = field_metrics(SPACE, logits, targets, bootstrap_groups(records, SPACE), n_bootstrap=100)
    view = next(row for row in rows if row["field"] == "view")
    assert view["images"] == 40 and view["accuracy_high"] > view["accuracy_low"]


def test_patient_split_is_disjoint_complete_and_seeded():
    patients = [f"P{i}" for i in range(10)] * 2
    first, second = split_patients(patients, 0.3, seed=1)
    assert len(first) == 3 and len(second) == 7 and not first & second
    assert first | second == set(patients)
    assert split_patients(list(reversed(patients)), 0.3, seed=1) == (first, second)


# -- matching metrics -------------------------------------------------------------------------------------------
def _study_embeddings(identities, noise=0.0, seed=0):
    """One direction per study (+ noise): a perfect matcher when noise is 0."""
    studies = sorted({study for _, study in identities})
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.eye(len(studies))[[studies.index(study) for _, study in identities]]
    return embeddings + noise * torch.randn(embeddings.shape, generator=generator)


def test_perfect_matching_embeddings_score_one():
    identities = [record_identity(record, SPACE) for record in _records(10)]
    values, roc = matching_metrics(_study_embeddings(identities), identities, n_bootstrap=100)
    assert values["auc"] == pytest.approx(1.0) and values["accuracy"] == pytest.approx(1.0)
    assert values["test_pairs"] == 2 * 5 * 6 and values["threshold_pairs"] == 2 * 5 * 6
    assert "separate" in values["threshold_source"]
    fpr, tpr = roc
    assert fpr[0] == 0 and tpr[-1] == 1


def test_matching_accuracy_uses_the_threshold_of_the_other_patients():
    identities = [record_identity(record, SPACE) for record in _records(10)]
    embeddings = _study_embeddings(identities)
    threshold_part, _ = split_patients([patient for patient, _ in identities], 0.5, seed=0)
    for index, (patient, _) in enumerate(identities):
        if patient in threshold_part:  # a useless matcher here: every pair looks the same
            embeddings[index] = torch.ones(embeddings.shape[1])
    values, _ = matching_metrics(embeddings, identities, n_bootstrap=50)
    assert values["best_balanced_accuracy"] == pytest.approx(1.0)
    assert values["accuracy"] == pytest.approx(0.5)  # the threshold learned elsewhere calls nothing a match


def test_noisy_embeddings_give_an_auc_interval_around_the_estimate():
    identities = [record_identity(record, SPACE) for record in _records(30)]
    values, _ = matching_metrics(_study_embeddings(identities, noise=0.6), identities, n_bootstrap=200)
    assert 0.5 < values["auc"] < 1.0
    assert values["auc_low"] < values["auc"] < values["auc_high"]


SYSTEM = "xray_system"


def test_a_matcher_that_only_knows_the_system_is_exposed_by_the_within_system_auc():
    identities = [record_identity(record, SPACE) for record in _records(40)]
    systems = np.array([int(patient[1:]) % 2 for patient, _ in identities])  # two systems, one per patient
    only_system = torch.eye(2)[systems]  # every image of a system looks the same to this matcher
    values, _ = matching_metrics(only_system, identities, n_bootstrap=50, strata=systems, stratum_name=SYSTEM)
    assert values["auc"] > 0.7  # random negatives come from the other system half of the time
    assert values["within_xray_system_negatives"] > 0
    assert values["within_xray_system_auc"] == pytest.approx(0.5)  # same-system negatives tie with positives
    perfect, _ = matching_metrics(
        _study_embeddings(identities), identities, n_bootstrap=50, strata=systems, stratum_name=SYSTEM
    )
    assert perfect["within_xray_system_auc"] == pytest.approx(1.0)


def test_within_stratum_auc_leaves_out_unknown_strata_and_says_when_nothing_is_left():
    identities = [record_identity(record, SPACE) for record in _records(10)]
    unknown = np.full(len(identities), UNKNOWN)
    values, _ = matching_metrics(
        _study_embeddings(identities), identities, n_bootstrap=10, strata=unknown, stratum_name=SYSTEM
    )
    assert values["within_xray_system_negatives"] == 0
    assert "not evaluated" in values["within_xray_system_note"] and "within_xray_system_auc" not in values


def test_matching_without_same_study_pairs_is_reported_not_raised():
    identities = [(f"P{i}", f"S{i}") for i in range(6)]  # one image per study
    values, roc = matching_metrics(torch.randn(6, 4), identities, n_bootstrap=10)
    assert roc is None and values["note"] == "no test patient has two images of one study: matching not evaluated"


@pytest.mark.parametrize(
    ("identities", "reason"),
    [
        ([(None, None)] * 8, "no evaluation image names a patient (give a patient_id column"),
        ([("P1", None)] * 4 + [("P2", None)] * 4, "the test part holds 1 patient(s), and a negative pair needs two"),
    ],
    ids=["no patient column", "one test patient"],
)
def test_matching_that_cannot_be_evaluated_says_what_to_change(identities, reason):
    """Both said "no same-study image pairs", though the one patient's four images are all same-study pairs."""
    values, roc = matching_metrics(torch.randn(len(identities), 4), identities, n_bootstrap=10)
    assert roc is None and values["note"].startswith(reason) and values["note"].endswith(": matching not evaluated")


# -- field metrics ----------------------------------------------------------------------------------------------
def _logits(predicted, num_classes):
    return torch.nn.functional.one_hot(torch.as_tensor(predicted), num_classes).float()


def test_field_metrics_leave_out_unknown_targets_and_match_hand_counts():
    space = SPACE
    n = 6
    targets = {name: np.full(n, UNKNOWN) for name in space.fields}
    logits = {name: _logits([0] * n, space.num_classes(name)) for name in space.fields}
    targets["view"] = np.array([0, 0, 0, 1, 1, UNKNOWN])
    logits["view"] = _logits([0, 0, 1, 1, 0, 1], space.num_classes("view"))
    targets["thickness"] = np.array([0, 1, 2, 3, 4, 4])
    logits["thickness"] = _logits([0, 1, 2, 3, 3, 4], space.num_classes("thickness"))
    rows, matrices = field_metrics(space, logits, targets, [f"P{i}" for i in range(n)], n_bootstrap=50)
    by_field = {row["field"]: row for row in rows}
    view = by_field["view"]
    assert view["images"] == 5
    assert view["accuracy"] == pytest.approx(3 / 5)
    assert view["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert view["majority_baseline"] == pytest.approx(3 / 5)
    assert "spearman" not in view
    thickness = by_field["thickness"]
    assert thickness["accuracy"] == pytest.approx(5 / 6)
    assert thickness["spearman"] > 0.9 and thickness["pearson"] > 0.9
    assert by_field["kvp"]["images"] == 0 and math.isnan(by_field["kvp"]["accuracy"])
    np.testing.assert_array_equal(matrices["view"][:2, :2], [[2, 1], [1, 1]])


def test_field_missing_from_the_network_is_a_clear_error():
    space = SPACE
    targets = {name: np.zeros(2, dtype=np.int64) for name in space.fields}
    with pytest.raises(MammoXAIError, match="no head"):
        field_metrics(space, {"view": _logits([0, 1], 4)}, targets, ["a", "b"], n_bootstrap=10)


# -- report writer ----------------------------------------------------------------------------------------------
def test_report_writes_json_markdown_and_figures(tmp_path):
    report = Report("Demo", "what and how", command="python run.py --x 1")
    report.add_values("summary", {"auc": np.float32(0.875), "undefined": float("nan"), "n": np.int64(3)})
    report.add_table("rows", [{"task": "view", "d": 1.23456}, {"task": "a|b", "d": None}], title="Ranked")
    report.add_data("matrix", np.eye(2, dtype=np.int64))
    report.add_figure("cm", confusion_matrix_figure([[3, 1], [0, 2]], ["A", "B"], "field"))
    report.add_figure(
        "bars", bar_figure(["x", "y"], [1.0, float("inf")], "t", "effect", low=[0.5, 1.0], high=[1.5, 2.0])
    )
    out = report.write(tmp_path / "report")
    document = json.loads((out / "report.json").read_text())
    assert document["values"]["summary"] == {"auc": 0.875, "undefined": None, "n": 3}
    assert document["values"]["matrix"] == [[1, 0], [0, 1]]
    assert document["tables"]["rows"][0] == {"task": "view", "d": 1.23456}
    assert document["command"] == "python run.py --x 1" and document["environment"]["hardware"].startswith("CPU")
    markdown = (out / "report.md").read_text()
    assert "| view | 1.235 |" in markdown and "| a\\|b | n/a |" in markdown
    assert "![cm](cm.png)" in markdown and "matrix" not in markdown
    for name in ("cm", "bars"):
        with Image.open(out / f"{name}.png") as image:
            assert image.width > 100 and image.height > 50


def test_report_entry_names_are_unique():
    report = Report("Demo")
    report.add_values("summary", {"a": 1})
    with pytest.raises(ValueError, match="twice"):
        report.add_table("summary", [])


# -- the bundle config, end to end ------------------------------------------------------------------------------
FIELDS = ["xray_system", "view", "laterality", "thickness", "kvp"]


@pytest.fixture(scope="module")
def pretrained_bundle(tmp_path_factory):
    """A bundle folder (the repository's configs) with a tiny untrained checkpoint, and 8 synthetic patients."""
    root = tmp_path_factory.mktemp("pretrained")
    studies = root / "studies"
    synthesize(studies, patients=8, seed=0, size=128)
    bundle = root / "bundle"
    shutil.copytree(BUNDLE_ROOT / "configs", bundle / "configs")
    label_space = fit_label_space(select_fields(FIELDS), read_manifest(studies / "manifest.csv"))
    network = MetadataNet(
        "resnet18", {name: label_space.num_classes(name) for name in label_space.fields}, embed_dim=16, matching_dim=8
    )
    train, _ = split_by_patient(read_manifest(studies / "manifest.csv"), label_space, val_fraction=0.5, seed=0)
    info = CheckpointInfo(network, label_space, (64, 52), train_records=train, seed=0, val_fraction=0.5)
    (bundle / "models").mkdir()
    torch.save({"network": network.state_dict(), "info": info.state_dict()}, bundle / "models" / "pretrained.pt")
    return bundle, studies, label_space


#: settings of the tiny runs: half the 8 patients held out, no worker processes, few bootstrap resamples
TINY = {"val_fraction": 0.5, "num_workers": 0, "n_bootstrap": 50, "device": "cpu", "batch_size": 8}


@pytest.fixture(scope="module")
def other_input_bundle(pretrained_bundle):
    """The tiny bundle's checkpoint pretrained, one epoch, by ``monai.bundle run`` on another model input than the
    default in both its settings - intensity_scaling display_range, field_of_view image - into a bundle folder of its
    own."""
    source, studies, _ = pretrained_bundle
    bundle = source.parent / "other_input"
    shutil.copytree(source / "configs", bundle / "configs")
    monai.bundle.run(
        config_file=str(bundle / "configs" / "pretrain.json"),
        bundle_root=str(bundle),
        dataset_dir=str(studies),
        intensity_scaling="display_range",
        field_of_view="image",
        backbone="mammo_cnn",
        image_size=[64, 52],
        embed_dim=16,
        matching_dim=8,
        epochs=1,
        **{key: TINY[key] for key in ("val_fraction", "num_workers", "device", "batch_size")},
    )
    return bundle, studies


def cached_inputs(cache_dir, paths, image_size=(64, 52)):
    """The (intensity_scaling, field_of_view) pairs whose cache entries in ``cache_dir`` hold all of ``paths`` (of the
    given grid)."""
    caches = {
        (scaling, view): PreprocessedCache(cache_dir, image_size, intensity_scaling=scaling, field_of_view=view)
        for scaling in SCALINGS
        for view in FIELDS_OF_VIEW
    }
    return {inputs for inputs, cache in caches.items() if all(cache.entry(path).is_file() for path in paths)}


def test_evaluation_config_runs_through_monai_bundle_and_writes_the_report(pretrained_bundle):
    bundle, studies, label_space = pretrained_bundle
    monai.bundle.run(
        config_file=str(bundle / "configs" / "evaluate_pretrain.json"),
        bundle_root=str(bundle),
        dataset_dir=str(studies),
        **TINY,
    )
    out = bundle / "eval" / "pretrain_evaluation"
    report = json.loads((out / "report.json").read_text())
    assert [row["field"] for row in report["tables"]["fields"]] == FIELDS
    train, held_out = split_by_patient(read_manifest(studies / "manifest.csv"), label_space, val_fraction=0.5, seed=0)
    assert all(row["images"] <= len(held_out) for row in report["tables"]["fields"])
    assert report["tables"]["fields"][1]["images"] == len(held_out)  # every image has a view
    matching = report["values"]["matching"]
    assert matching["test_patients"] + matching["threshold_patients"] == len({r["patient_id"] for r in held_out})
    assert matching["test_pairs"] > 0 and 0.0 <= matching["auc"] <= 1.0
    assert "within_xray_system_negatives" in matching  # the default stratum: the X-ray system
    assert report["values"]["confusion_matrices"]["view"]["classes"] == label_space.class_names("view")
    for name in ["matching_roc", *(f"confusion_{field}" for field in FIELDS)]:
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "| xray_system |" in (out / "report.md").read_text()


def test_evaluation_reads_the_images_as_the_checkpoint_was_trained(other_input_bundle, tmp_path):
    """Both settings of the model input come from the checkpoint, not from the config's defaults."""
    bundle, studies = other_input_bundle
    pretrained = load_pretrained(bundle / "models" / "pretrained.pt")
    assert (pretrained.intensity_scaling, pretrained.field_of_view) == ("display_range", "image")

    monai.bundle.run(
        config_file=str(bundle / "configs" / "evaluate_pretrain.json"),
        bundle_root=str(bundle),
        dataset_dir=str(studies),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "report"),
        **TINY,
    )

    _, held_out = split_by_patient(read_manifest(studies / "manifest.csv"), pretrained.label_space, 0.5, seed=0)
    assert cached_inputs(tmp_path / "cache", [record["path"] for record in held_out]) == {("display_range", "image")}
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    description = "scaled by intensity_scaling display_range and framed by field_of_view image, as pretraining did"
    assert description in report["description"]


def test_evaluation_on_another_manifest_leaves_out_the_training_patients(pretrained_bundle, tmp_path):
    bundle, studies, label_space = pretrained_bundle
    manifest = studies / "manifest.csv"  # every patient, the training ones included
    monai.bundle.run(
        config_file=str(bundle / "configs" / "evaluate_pretrain.json"),
        bundle_root=str(bundle),
        dataset_dir=str(studies),
        eval_manifest=str(manifest),
        output_dir=str(tmp_path),
        **TINY,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    _, held_out = split_by_patient(read_manifest(manifest), label_space, val_fraction=0.5, seed=0)
    assert report["tables"]["fields"][1]["images"] == len(held_out)
    assert "manifest.csv" in report["description"]


def test_a_matching_stratum_outside_the_label_space_is_refused_before_evaluating(pretrained_bundle, tmp_path, capsys):
    bundle, studies, _ = pretrained_bundle
    arguments = ["--bundle_root", str(bundle), "--dataset_dir", str(studies), "--output_dir", str(tmp_path / "report")]
    arguments += [
        "--matching_stratum",
        "density",
        *(item for key, value in TINY.items() for item in (f"--{key}", str(value))),
    ]
    assert main(arguments) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "'density' is not a field of the checkpoint's label space" in error[0]
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("override", [("--seed", "3"), ("--val_fraction", "0.25")])
def test_a_split_other_than_pretrainings_is_refused_before_evaluating(pretrained_bundle, tmp_path, capsys, override):
    """Another seed or fraction would hold out patients pretraining trained on, and call them held out."""
    bundle, studies, _ = pretrained_bundle
    arguments = ["--bundle_root", str(bundle), "--dataset_dir", str(studies), "--output_dir", str(tmp_path / "report")]
    arguments += [item for key, value in TINY.items() for item in (f"--{key}", str(value))] + list(override)

    assert main(arguments) == 1

    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is not the one pretraining held out" in error[0], error
    assert "--seed 0 --val_fraction 0.5" in error[0]
    assert not (tmp_path / "report").exists()


def test_outputs_of_a_shuffling_loader_are_refused(pretrained_bundle):
    bundle, studies, _ = pretrained_bundle
    pretrained = load_pretrained(bundle / "models" / "pretrained.pt")
    dataset = MammogramDataset(read_manifest(studies / "manifest.csv")[:6], pretrained.image_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True)
    with pytest.raises(MammoXAIError, match="set shuffle to false"):
        collect_outputs(pretrained.network, loader)


def test_evaluation_script_records_its_command_line(pretrained_bundle, tmp_path):
    bundle, studies, _ = pretrained_bundle
    arguments = ["--bundle_root", str(bundle), "--dataset_dir", str(studies), "--output_dir", str(tmp_path / "report")]
    arguments += [item for key, value in TINY.items() for item in (f"--{key}", str(value))]
    assert main(arguments) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["command"].startswith("python scripts/evaluate_pretrain.py --bundle_root")
    assert "--val_fraction 0.5" in report["command"]


def test_evaluation_script_reports_a_missing_checkpoint_in_one_line(pretrained_bundle, tmp_path, capsys):
    bundle, studies, _ = pretrained_bundle
    arguments = ["--bundle_root", str(bundle), "--dataset_dir", str(studies), "--checkpoint", str(tmp_path / "none.pt")]
    assert main(arguments) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pretrained checkpoint not found" in error[0] and "none.pt" in error[0]


def test_evaluation_script_rejects_a_dangling_override(capsys):
    assert main(["--dataset_dir"]) == 1
    assert "--key value" in capsys.readouterr().err


def test_evaluation_script_refuses_a_mistyped_setting_before_reading_anything(pretrained_bundle, tmp_path, capsys):
    """``monai.bundle run`` would add the key and write the report where the config's default says."""
    bundle, studies, _ = pretrained_bundle
    arguments = ["--bundle_root", str(bundle), "--dataset_dir", str(studies), "--output_dri", str(tmp_path / "report")]

    assert main(arguments) == 1

    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: --output_dri: is not a setting of evaluate_pretrain.json (did you mean --output_dir?)"]
    assert not (tmp_path / "report").exists()


def test_another_manifest_is_joined_with_the_label_csv_so_its_training_patients_are_left_out(
    pretrained_bundle, tmp_path
):
    """A PNG data set's patient ids live in the label CSV only: without the join, every image of the eval manifest
    had an unknown patient, so the training patients' images were evaluated as held out."""
    bundle, studies, label_space = pretrained_bundle
    records = read_manifest(studies / "manifest.csv")
    write_csv(tmp_path / "labels.csv", ["image_id", "patient_id"], [[r["image_id"], r["patient_id"]] for r in records])
    without_patients = [{"path": r["path"], "image_id": r["image_id"], "view": r["view"]} for r in records]
    write_manifest(without_patients, tmp_path / "eval_manifest.csv")
    monai.bundle.run(
        config_file=str(bundle / "configs" / "evaluate_pretrain.json"),
        bundle_root=str(bundle),
        dataset_dir=str(studies),
        eval_manifest=str(tmp_path / "eval_manifest.csv"),
        label_csv=str(tmp_path / "labels.csv"),
        label_id_column="image_id",
        output_dir=str(tmp_path / "report"),
        **TINY,
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    _, held_out = split_by_patient(records, label_space, val_fraction=0.5, seed=0)
    assert report["tables"]["fields"][1]["images"] == len(held_out) < len(records)
