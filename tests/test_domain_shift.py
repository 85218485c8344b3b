"""scripts/domain_shift.py: the split by X-ray system, and the three runs scored on the same target patients."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from mammoxai.data.manifest import read_manifest, write_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "domain_shift.py"
_spec = importlib.util.spec_from_file_location("domain_shift", SCRIPT)
domain_shift = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(domain_shift)


def _records():
    """Patients P0-P9 on system A (P0-P3 malignant), P10-P13 on system B; two images each."""
    return [
        {
            "path": f"P{p}_{i}.dcm", "patient_id": f"P{p}", "xray_system": "A" if p < 10 else "B",
            "case_label": "malignant" if p < 4 else "normal", "split": "test" if p == 12 else "training",
        }
        for p in range(14)
        for i in range(2)
    ]  # fmt: skip


def test_target_patients_are_split_into_adaptation_and_test_and_never_trained_on_by_the_source():
    source, adaptation, test = domain_shift.split_by_system(_records(), "A", 0.25, seed=0)
    patients = lambda rows: {row["patient_id"] for row in rows}  # noqa: E731
    assert patients(source) == {"P10", "P11", "P12", "P13"}
    assert patients(adaptation) | patients(test) == {f"P{p}" for p in range(10)}
    assert not patients(adaptation) & patients(test)
    assert Counter(row["case_label"] for row in adaptation) == {"malignant": 4, "normal": 4}  # 2 patients each
    assert {row["split"] for row in source + adaptation} == {"training"} and {row["split"] for row in test} == {"test"}


def test_images_naming_no_patient_go_with_their_study_not_all_into_the_target():
    """Blank patient ids were one patient: one target image pulled every such image of system A into the target."""
    records = [{**row, "study_uid": row["patient_id"]} for row in _records()]
    for row in records:
        if row["patient_id"] in ("P5", "P11"):  # one patient of each system without an id
            row["patient_id"] = ""
    source, adaptation, test = domain_shift.split_by_system(records, "B", 0.5, seed=0)
    assert {row["xray_system"] for row in adaptation + test} == {"B"}
    assert {row["study_uid"] for row in source} == {f"P{p}" for p in range(10)}
    assert "P11" in {row["study_uid"] for row in adaptation + test}
    studies = lambda rows: {row["study_uid"] for row in rows}  # noqa: E731
    assert not studies(adaptation) & studies(test)


def test_an_unlabelled_image_of_an_adaptation_patient_is_not_a_target_test_image():
    """Held out, it made the patient a test patient, and the patient split then dropped the patient's adaptation
    images from training."""
    records = _records() + [
        {"path": f"P{p}_unlabelled.dcm", "patient_id": f"P{p}", "xray_system": "A", "case_label": "", "split": ""}
        for p in range(10)
    ]
    _, adaptation, test = domain_shift.split_by_system(records, "A", 0.25, seed=0)
    adapted = {row["patient_id"] for row in adaptation}
    assert adapted and not adapted & {row["patient_id"] for row in test}
    assert len(test) == 2 * (10 - len(adapted)) + (10 - len(adapted))


def test_an_unknown_or_exhausted_target_system_is_a_clear_error():
    with pytest.raises(MammoXAIError, match="use one of"):
        domain_shift.split_by_system(_records(), "C", 0.25)
    with pytest.raises(MammoXAIError, match="0 target test images"):
        domain_shift.split_by_system(_records(), "B", 1.0)


def test_a_manifest_without_the_system_column_says_so_and_another_column_may_name_the_systems():
    records = [{("model" if key == "xray_system" else key): value for key, value in row.items()} for row in _records()]
    with pytest.raises(MammoXAIError, match="--system_column xray_system: is not a column of the manifest"):
        domain_shift.split_by_system(records, "A", 0.25)
    source, _, _ = domain_shift.split_by_system(records, "A", 0.25, system_key="model")
    assert {row["patient_id"] for row in source} == {"P10", "P11", "P12", "P13"}


def test_the_report_gives_the_adaptation_part_as_drawn():
    splits = {seed: domain_shift.split_by_system(_records(), "A", 0.25, seed=seed) for seed in (0, 1)}
    # 25 % of the 4 malignant and 6 normal target patients would be 1 and 2; two per class make it 4
    assert domain_shift.adaptation_share(splits) == "4 of the 10 target patients, 8 images"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--init", "pretrained"], "--init pretrained: needs --init_weights"),
        (["--init", "external", "--init_weights", "nosuch.pt"], "nosuch.pt: backbone weights file not found"),
        (["--init_weights", "nosuch.pt"], "--init_weights nosuch.pt: is given, but --init scratch"),
        (["--epochs", "0"], "--epochs: is 0"),
        (["--adapt_epochs", "0"], "--adapt_epochs: is 0"),
        (["--adapt_fraction", "0"], "--adapt_fraction: is 0"),
        (["--seeds", "1", "1"], "--seeds: gives 1 more than once"),
        (["--system_column", "model"], "--system_column model: is not a column of the manifest"),
        (["--n_bootstrap", "-1"], "n_bootstrap: is -1"),
        (["--intensity_scaling", "raw"], "--intensity_scaling: is 'raw', not an intensity scaling (use"),
        (["--field_of_view", "whole"], "--field_of_view: is 'whole', not a field of view (use"),
    ],
)
def test_a_wrong_command_is_refused_before_training_and_leaves_out_untouched(tmp_path, capsys, options, message):
    """Each of these used to be found only when a run started (the adaptation runs after the source training),
    named an option of another script, or (a scratch start with weights) was not found at all."""
    records = [
        {
            "path": f"P{p}_{i}.dcm", "patient_id": f"P{p}", "xray_system": "A" if p < 8 else "B",
            "case_label": "malignant" if p % 2 else "normal", "split": "training",
        }
        for p in range(16)
        for i in range(2)
    ]  # fmt: skip
    write_manifest(records, tmp_path / "manifest.csv")  # no image exists: anything that reads one fails
    out = tmp_path / "out"
    arguments = ["--dataset_dir", str(tmp_path), "--out", str(out), "--target_system", "B", "--device", "cpu", *options]
    assert domain_shift.main(arguments) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
    assert not out.exists()


def test_source_adapted_and_target_only_models_are_scored_on_the_same_target_patients(tmp_path):
    studies = tmp_path / "studies"
    synthesize(studies, patients=30, seed=0, size=128, prevalence={"normal": 0.5, "malignant": 0.5})
    malignant = [record for record in read_manifest(studies / "manifest.csv") if record["case_label"] == "malignant"]
    target = Counter(record["xray_system"] for record in malignant).most_common(1)[0][0]  # cancers left to test on
    out = tmp_path / "shift"
    code = domain_shift.main(
        [
            "--dataset_dir", str(studies), "--out", str(out), "--target_system", target, "--adapt_fraction", "0.25",
            "--epochs", "1", "--adapt_epochs", "1", "--image_size", "32", "32", "--batch_size", "8",
            "--num_workers", "0", "--device", "cpu", "--n_bootstrap", "20", "--seeds", "0", "1",
            "--intensity_scaling", "display_range", "--field_of_view", "image",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert "intensity scaling display_range, field of view image (every run)" in report["description"]
    models = sorted((out / "runs").rglob("model.pt"))
    assert len(models) == 6  # 3 settings x 2 seeds
    grids = [torch.load(path, weights_only=True)["grid"] for path in models]
    assert {(grid["intensity_scaling"], grid["field_of_view"]) for grid in grids} == {("display_range", "image")}
    assert "on the adaptation part: " in report["description"] and " target patients, " in report["description"]
    tables = report["tables"]
    for seed in (0, 1):
        rows = [row for row in tables["settings"] if row["seed"] == seed]
        assert [row["setting"] for row in rows] == ["source", "source + adaptation", "adaptation only"]
        assert len({row["images"] for row in rows}) == 1 and rows[0]["images"] > 0
        assert rows[1]["training_images"] == rows[2]["training_images"] < rows[0]["training_images"]
        differences = {row["comparison"]: row["auc_difference"] for row in tables["differences"] if row["seed"] == seed}
        assert differences["source + adaptation - source"] == pytest.approx(rows[1]["auc"] - rows[0]["auc"])
        assert differences["source + adaptation - adaptation only"] == pytest.approx(rows[1]["auc"] - rows[2]["auc"])
    spread = {row["comparison"]: row for row in tables["differences_across_seeds"]}
    assert spread["source + adaptation - source"]["runs"] == 2
    mean = (
        sum(
            row["auc_difference"]
            for row in tables["differences"]
            if row["comparison"] == "source + adaptation - source"
        )
        / 2
    )
    assert spread["source + adaptation - source"]["mean"] == pytest.approx(mean)
    assert (out / "auc_by_setting.png").is_file()
