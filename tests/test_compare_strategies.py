"""scripts/compare_strategies.py: nested labelled fractions, and a tiny side-by-side run end to end."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mammoxai.data.manifest import read_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.nets import MetadataNet
from mammoxai.training.experiments import across_seeds, labelled_subset, run_settings
from mammoxai.training.pretrain import CheckpointInfo, fit_label_space, select_fields

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_strategies.py"
_spec = importlib.util.spec_from_file_location("compare_strategies", SCRIPT)
compare_strategies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_strategies)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studies")
    synthesize(folder, patients=8, seed=0, size=192)
    return folder


def _records(counts, test_patients=2):
    """4 images per patient; ``counts`` class -> patients outside the test split."""
    records, index = [], 0
    for label, patients in [*counts.items(), ("malignant", test_patients)]:
        split = "test" if index >= sum(counts.values()) else "training"
        for _ in range(patients if split == "training" else 1):
            for image in range(4):
                records.append(
                    {"path": f"P{index}_{image}.dcm", "patient_id": f"P{index}", "case_label": label, "split": split}
                )
            index += 1
    return records


def test_labelled_fractions_are_nested_stratified_and_keep_the_test_split():
    records = _records({"normal": 40, "benign": 8, "malignant": 4})
    small = labelled_subset(records, 0.05, seed=0)
    large = labelled_subset(records, 0.25, seed=0)
    patients = lambda subset: {r["patient_id"] for r in subset if r["split"] != "test"}  # noqa: E731
    assert patients(small) < patients(large)
    per_class = Counter(r["case_label"] for r in small if r["split"] != "test" and r["path"].endswith("_0.dcm"))
    assert per_class == {"normal": 2, "benign": 2, "malignant": 2}  # 5 % rounds up, and at least two per class
    assert sum(r["split"] == "test" for r in small) == sum(r["split"] == "test" for r in records)
    assert len(patients(labelled_subset(records, 1.0))) == 52
    with pytest.raises(MammoXAIError, match="fractions"):
        labelled_subset(records, 0.0)


def test_strategies_are_trained_and_evaluated_side_by_side(studies, tmp_path):
    records = read_manifest(studies / "manifest.csv")
    space = fit_label_space(select_fields(["view"]), records)
    network = MetadataNet(
        "mammo_cnn", {name: space.num_classes(name) for name in space.fields}, embed_dim=8, matching_dim=4
    )
    torch.save(
        {"network": network.state_dict(), "info": CheckpointInfo(network, space, (32, 32)).state_dict()},
        tmp_path / "pre.pt",
    )
    out = tmp_path / "compare"
    code = compare_strategies.main(
        [
            "--dataset_dir", str(studies), "--out", str(out), "--strategies", "scratch", "pretrained_frozen",
            "--fractions", "1.0", "--pretrained", str(tmp_path / "pre.pt"), "--epochs", "1", "--image_size", "32", "32",
            "--batch_size", "8", "--num_workers", "0", "--device", "cpu", "--n_bootstrap", "20", "--task", "binary", "--seeds", "0", "1",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["tables"]["strategies"]
    assert [(row["strategy"], row["fraction"], row["seed"]) for row in rows] == [
        ("scratch", 1.0, 0), ("pretrained_frozen", 1.0, 0), ("scratch", 1.0, 1), ("pretrained_frozen", 1.0, 1)
    ]  # fmt: skip
    assert all(row["images"] == 8 and row["positives"] == 2 for row in rows)  # the 2 test patients, malignant breast
    differences = report["tables"]["difference_from_scratch"]
    assert [(row["strategy"], row["seed"]) for row in differences] == [("pretrained_frozen", 0), ("pretrained_frozen", 1)]
    for difference, (scratch, frozen) in zip(differences, [rows[:2], rows[2:]]):
        assert difference["auc_difference"] == pytest.approx(frozen["auc"] - scratch["auc"])
    (spread,) = report["tables"]["difference_across_seeds"]
    assert spread["runs"] == 2
    assert spread["mean"] == pytest.approx((differences[0]["auc_difference"] + differences[1]["auc_difference"]) / 2)
    scratch_spread = report["tables"]["auc_across_seeds"][0]
    assert (scratch_spread["strategy"], scratch_spread["min"]) == ("scratch", min(rows[0]["auc"], rows[2]["auc"]))
    run = out / "runs" / "pretrained_frozen_1_seed1"
    run_report = json.loads((run / "evaluation" / "report.json").read_text())
    assert run_report["command"].startswith("python scripts/compare_strategies.py ")
    assert (out / "runs" / "labelled_1_seed1.csv").is_file()
    assert (out / "auc_by_fraction.png").is_file()
    assert (run / "evaluation" / "report.md").is_file()


def test_spread_across_seeds_counts_differences_above_zero():
    runs = [
        {"strategy": "pretrained", "fraction": 0.25, "auc_difference": 0.08, "difference_low": 0.04},
        {"strategy": "pretrained", "fraction": 0.25, "auc_difference": 0.02, "difference_low": -0.01},
        {"strategy": "pretrained", "fraction": 0.25, "auc_difference": -0.01, "difference_low": -0.05},
        {"strategy": "pretrained", "fraction": 1.0, "auc_difference": None, "difference_low": None},
    ]
    quarter, full = across_seeds(runs, ("strategy", "fraction"), "auc_difference", low="difference_low")
    assert (quarter["runs"], quarter["above_0"], quarter["interval_above_0"]) == (3, 2, 1)
    assert quarter["mean"] == pytest.approx(0.03)
    assert quarter["sd"] == pytest.approx(np.std([0.08, 0.02, -0.01], ddof=1))
    assert (quarter["min"], quarter["max"]) == (-0.01, 0.08)
    assert (full["runs"], full["mean"], full["above_0"]) == (1, None, 0)  # a run without an AUC counts, unscored
    (single,) = across_seeds(runs[:1], ("strategy",), "auc_difference")
    assert single["sd"] == 0.0 and "above_0" not in single


def test_a_strategy_without_its_weights_is_one_line_on_stderr(studies, tmp_path, capsys):
    code = compare_strategies.main(["--dataset_dir", str(studies), "--out", str(tmp_path), "--strategies", "external"])
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--external_weights" in error[0]


def test_a_missing_pretrained_checkpoint_is_refused_before_scratch_trains(studies, tmp_path, capsys):
    missing = tmp_path / "runs" / "pretrain" / "pretrained.pt"
    arguments = ["--dataset_dir", str(studies), "--out", str(tmp_path), "--strategies", "scratch", "pretrained"]
    assert compare_strategies.main([*arguments, "--pretrained", str(missing)]) == 1
    assert "pretrained.pt: --pretrained file not found" in capsys.readouterr().err
    assert not list(tmp_path.rglob("model.pt"))  # scratch never started


def test_an_out_folder_holding_an_earlier_experiment_is_refused_unless_overwrite(studies, tmp_path, capsys):
    (tmp_path / "report.json").write_text("{}")
    arguments = ["--dataset_dir", str(studies), "--out", str(tmp_path), "--strategies", "external"]
    assert compare_strategies.main(arguments) == 1
    assert "holds report.json of an earlier experiment (pass --overwrite" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"]

    assert compare_strategies.main([*arguments, "--overwrite"]) == 1
    assert "--external_weights" in capsys.readouterr().err  # past the --out check, stopped by the next one
    args = compare_strategies._parser().parse_args([*arguments, "--overwrite"])
    assert run_settings(args, tmp_path)["overwrite"] is True  # and every bundle run may replace its checkpoints
