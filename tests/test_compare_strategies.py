"""scripts/compare_strategies.py: nested labelled fractions, and a tiny side-by-side run end to end."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mammoxai.data.manifest import read_manifest, write_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.nets import BackboneClassifier, MetadataNet
from mammoxai.training.experiments import across_seeds, claim_out, earlier_results, labelled_subset, run_settings
from mammoxai.training.pretrain import CheckpointInfo, select_fields

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


def _pretraining_checkpoint(path):
    """A metadata-pretraining checkpoint of a tiny mammo_cnn that predicts the view, as configs/pretrain.json writes
    one; the view's classes are fixed, so it needs no records to fit (fitting logs, and a log line would be a second
    line on the stderr of a test that reads one)."""
    space = select_fields(["view"])
    network = MetadataNet(
        "mammo_cnn", {name: space.num_classes(name) for name in space.fields}, embed_dim=8, matching_dim=4
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network": network.state_dict(), "info": CheckpointInfo(network, space, (32, 32)).state_dict()}, path)
    return path


def _study(folder, records):
    """A study folder whose manifest lists ``records``; no image exists, so anything that reads one fails."""
    write_manifest(records, folder / "manifest.csv")
    return folder


class _ReachedTraining(Exception):
    pass


def _stop_at_training(*args, **kwargs):
    raise _ReachedTraining


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
    with pytest.raises(MammoXAIError, match="--adapt_fraction: is 0"):
        labelled_subset(records, 0.0, option="--adapt_fraction")


def test_strategies_are_trained_and_evaluated_side_by_side(studies, tmp_path):
    _pretraining_checkpoint(tmp_path / "pre.pt")
    out = tmp_path / "compare"
    code = compare_strategies.main(
        [
            "--dataset_dir", str(studies), "--out", str(out), "--strategies", "scratch", "pretrained_frozen",
            "--fractions", "1.0", "--pretrained", str(tmp_path / "pre.pt"), "--epochs", "1", "--image_size", "32", "32",
            "--batch_size", "8", "--num_workers", "0", "--device", "cpu", "--n_bootstrap", "20", "--task", "binary",
            "--seeds", "0", "1",
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
    assert [(row["strategy"], row["seed"]) for row in differences] == [
        ("pretrained_frozen", 0),
        ("pretrained_frozen", 1),
    ]
    for difference, (scratch, frozen) in zip(differences, [rows[:2], rows[2:]], strict=True):
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


def test_max_minutes_runs_the_seeds_that_fit_and_the_report_says_which_were_left_out(studies, tmp_path):
    """A limit spent by the first seed: it is run and reported whole, the others are not started."""
    _pretraining_checkpoint(tmp_path / "pre.pt")
    out = tmp_path / "compare"
    code = compare_strategies.main(
        [
            "--dataset_dir", str(studies), "--out", str(out), "--strategies", "scratch", "pretrained",
            "--fractions", "0.5", "1.0", "--pretrained", str(tmp_path / "pre.pt"), "--epochs", "1",
            "--image_size", "32", "32", "--batch_size", "8", "--num_workers", "0", "--device", "cpu",
            "--n_bootstrap", "20", "--task", "binary", "--seeds", "0", "1", "2", "--max_minutes", "0.0001",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert {(row["strategy"], row["fraction"], row["seed"]) for row in report["tables"]["strategies"]} == {
        (strategy, fraction, 0) for strategy in ("scratch", "pretrained") for fraction in (0.5, 1.0)
    }
    assert report["values"]["seeds"] == {"asked": [0, 1, 2], "run": [0], "max_minutes": 0.0001}
    assert "auc_across_seeds" not in report["tables"]  # one seed has no spread
    assert (
        "Seeds [1, 2] were left out: another seed would have ended past max_minutes (0.0001)" in report["description"]
    )
    assert not (out / "runs" / "scratch_1_seed1").exists()


def test_an_interrupted_experiment_resumes_reusing_its_finished_runs_and_pretraining(studies, tmp_path, capsys):
    out = tmp_path / "compare"
    arguments = [
        "--dataset_dir", str(studies), "--out", str(out), "--strategies", "scratch", "pretrained", "--fractions", "1.0",
        "--epochs", "1", "--pretrain_epochs", "1", "--image_size", "32", "32", "--batch_size", "8", "--num_workers", "0",
        "--device", "cpu", "--n_bootstrap", "20", "--task", "binary",
    ]  # fmt: skip
    assert compare_strategies.main(arguments) == 0
    first = json.loads((out / "report.json").read_text())["tables"]["strategies"]
    scratch, pretrained = out / "runs" / "scratch_1_seed0", out / "runs" / "pretrained_1_seed0"
    kept = {
        path: path.stat().st_mtime_ns
        for path in (scratch / "models" / "model.pt", out / "runs" / "pretrain" / "pretrained.pt")
    }
    for unfinished in (pretrained / "run.json", pretrained / "evaluation" / "report.json"):  # killed while evaluating
        unfinished.unlink()

    assert compare_strategies.main([*arguments, "--resume"]) == 0
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # the finished run and the pretraining reused
    assert (pretrained / "run.json").is_file()  # the unfinished run was done again, over its own leftovers
    rows = json.loads((out / "report.json").read_text())["tables"]["strategies"]
    assert rows[0] == first[0] and rows[1]["strategy"] == "pretrained"
    capsys.readouterr()

    assert compare_strategies.main([*arguments, "--n_bootstrap", "30", "--resume"]) == 1  # the last one counts
    assert "holds a finished run made with other settings, data or weights (n_bootstrap)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one or the other
        compare_strategies.main([*arguments, "--resume", "--overwrite"])
    assert "argument --overwrite: not allowed with argument --resume" in capsys.readouterr().err


def test_every_run_of_the_comparison_pretraining_included_reads_the_model_input_asked(studies, tmp_path):
    """A network must see the model input it was trained on: the pretraining, each fine-tune from it and each
    evaluation run under --intensity_scaling and --field_of_view, and the report says which."""
    out = tmp_path / "compare"
    code = compare_strategies.main(
        [
            "--dataset_dir", str(studies), "--out", str(out), "--strategies", "scratch", "pretrained", "--fractions",
            "1.0", "--epochs", "1", "--pretrain_epochs", "1", "--image_size", "32", "32", "--batch_size", "8",
            "--num_workers", "0", "--device", "cpu", "--n_bootstrap", "20", "--task", "binary",
            "--intensity_scaling", "display_range", "--field_of_view", "image",
        ]
    )  # fmt: skip
    assert code == 0
    inputs = {"intensity_scaling": "display_range", "field_of_view": "image"}
    info = torch.load(out / "runs" / "pretrain" / "pretrained.pt", weights_only=True)["info"]
    assert {name: info[name] for name in inputs} == inputs
    for run in ("scratch_1_seed0", "pretrained_1_seed0"):
        model = torch.load(out / "runs" / run / "models" / "model.pt", weights_only=True)
        assert model["grid"] == {"image_size": [32, 32], **inputs}
        settings = json.loads((out / "runs" / run / "run.json").read_text())
        assert {name: settings[name] for name in inputs} == inputs
    assert (
        "intensity scaling display_range, field of view image (every pretraining and fine-tune)"
        in json.loads((out / "report.json").read_text())["description"]
    )


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


def test_an_out_folder_holding_an_earlier_experiment_is_refused_unless_overwrite(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare_strategies, "train_and_evaluate", _stop_at_training)
    study = _study(tmp_path / "study", _records({"normal": 4, "benign": 2, "malignant": 2}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    arguments = ["--dataset_dir", str(study), "--out", str(out), "--strategies", "scratch", "--fractions", "1.0"]
    assert compare_strategies.main(arguments) == 1
    assert "holds report.json of an earlier experiment (pass --overwrite" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["report.json"]

    with pytest.raises(_ReachedTraining):  # past the --out check
        compare_strategies.main([*arguments, "--overwrite"])
    args = compare_strategies._parser().parse_args([*arguments, "--overwrite"])
    assert run_settings(args, out)["overwrite"] is True  # and every bundle run may replace its checkpoints


@pytest.mark.parametrize(
    "options, message",
    [
        (["--fractions", "1.5"], "--fractions: is 1.5"),
        (["--strategies", "scratch", "scratch"], "--strategies: gives scratch more than once"),
        (["--fractions", "1.0", "1"], "--fractions: gives 1 more than once"),
        (["--seeds", "0", "0"], "--seeds: gives 0 more than once"),
        (["--seeds", "0", "-1", "--pretrain_epochs", "2"], "--seeds: is -1, not a whole number of 0 or more"),
        (["--pretrain_epochs", "0"], "--pretrain_epochs: is 0"),
        (["--max_minutes", "0"], "max_minutes: is 0.0, not a positive number of minutes"),
        (["--batch_size", "0"], "batch_size: is 0"),
        (["--n_bootstrap", "0"], "n_bootstrap: is 0"),
        (["--pretrained", "CLASSIFIER"], "is not a metadata-pretraining checkpoint"),
        (["--intensity_scaling", "raw"], "--intensity_scaling: is 'raw', not an intensity scaling"),
        (
            ["--pretrained", "PRETRAINED", "--intensity_scaling", "display_range"],
            'pre.pt: was trained with intensity_scaling "breast_percentiles", not the "display_range" of this run',
        ),
        (["--field_of_view", "whole"], '--field_of_view: is \'whole\', not a field of view (use "breast" or "image")'),
        (
            ["--pretrained", "PRETRAINED", "--field_of_view", "image"],
            'pre.pt: was trained with field_of_view "breast", not the "image" of this run',
        ),
    ],
)
def test_a_wrong_command_is_refused_before_pretraining_and_leaves_out_untouched(tmp_path, capsys, options, message):
    """Each of these used to be found only after the metadata pretraining or the first fine-tune had run."""
    classifier = tmp_path / "model.pt"
    torch.save(BackboneClassifier("mammo_cnn", 3).state_dict(), classifier)
    study = _study(tmp_path / "study", _records({"normal": 4, "benign": 2, "malignant": 2}))
    out = tmp_path / "out"
    pretrained = _pretraining_checkpoint(tmp_path / "pre.pt")
    placeholders = {"CLASSIFIER": str(classifier), "PRETRAINED": str(pretrained)}
    options = [placeholders.get(option, option) for option in options]
    arguments = ["--dataset_dir", str(study), "--out", str(out), "--device", "cpu", *options]
    assert compare_strategies.main(arguments) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
    assert not out.exists()


def test_a_manifest_without_labels_or_test_split_is_refused_before_pretraining(tmp_path, capsys):
    records = _records({"normal": 4, "benign": 2, "malignant": 2})
    unlabelled = _study(tmp_path / "unlabelled", [{**record, "case_label": None} for record in records])
    unsplit = _study(tmp_path / "unsplit", [{**record, "split": None} for record in records])
    out = tmp_path / "out"
    assert compare_strategies.main(["--dataset_dir", str(unlabelled), "--out", str(out), "--device", "cpu"]) == 1
    assert "(patients outside the test split): has no case_label" in capsys.readouterr().err
    assert compare_strategies.main(["--dataset_dir", str(unsplit), "--out", str(out), "--device", "cpu"]) == 1
    assert "has no held-out test records" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_that_stopped_before_any_checkpoint_does_not_block_the_corrected_one(tmp_path):
    out = tmp_path / "out"
    for leftover in (
        "runs/pretrain_manifest.csv",
        "runs/labelled_1_seed0.csv",
        "runs/scratch_1_seed0/train.log",
        "cache/x.pt",
    ):
        (out / leftover).parent.mkdir(parents=True, exist_ok=True)
        (out / leftover).write_text("")
    claim_out(out, overwrite=False)  # manifests, logs and the cache are no results (the cache is not under runs/)
    (out / "runs" / "scratch_1_seed0" / "models").mkdir()
    (out / "runs" / "scratch_1_seed0" / "models" / "model.pt").write_text("")
    with pytest.raises(MammoXAIError, match="holds runs/scratch_1_seed0/models/model.pt of an earlier experiment"):
        claim_out(out, overwrite=False)


def test_a_pretraining_left_by_a_failed_run_is_offered_for_reuse(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare_strategies, "train_and_evaluate", _stop_at_training)
    records = _records({"normal": 4, "benign": 2, "malignant": 2})
    study = _study(tmp_path / "study", records)
    out = tmp_path / "out"
    pretrained = _pretraining_checkpoint(out / "runs" / "pretrain" / "pretrained.pt")
    (out / "runs" / "pretrain" / "pretrain_checkpoint_epoch=1.pt").write_bytes(pretrained.read_bytes())
    assert earlier_results(out) == ["runs/pretrain/pretrain_checkpoint_epoch=1.pt", "runs/pretrain/pretrained.pt"]
    assert earlier_results(out, [pretrained]) == []
    arguments = ["--dataset_dir", str(study), "--out", str(out), "--fractions", "1.0", "--image_size", "32", "32"]
    assert compare_strategies.main([*arguments, "--device", "cpu"]) == 1
    error = capsys.readouterr().err
    assert f"--pretrained {pretrained} to reuse its pretraining" in error and "2 more" not in error
    with pytest.raises(_ReachedTraining):  # its own --out is no obstacle to a run that starts from it
        compare_strategies.main([*arguments, "--device", "cpu", "--pretrained", str(pretrained)])

    (out / "runs" / "scratch_1_seed0" / "models").mkdir(parents=True)  # the run got further: keep only the pretraining
    (out / "runs" / "scratch_1_seed0" / "models" / "model.pt").write_text("")
    assert compare_strategies.main([*arguments, "--device", "cpu"]) == 1
    assert f"--overwrite --pretrained {pretrained} to replace all but its pretraining" in capsys.readouterr().err


def test_the_report_gives_the_patients_drawn_next_to_the_fraction_asked_for(tmp_path, monkeypatch):
    result = {
        "images": 8,
        "positives": 2,
        "auc": 0.6,
        "auc_low": 0.5,
        "auc_high": 0.7,
        "sensitivity": 0.5,
        "specificity": 0.5,
    }
    monkeypatch.setattr(
        compare_strategies, "train_and_evaluate", lambda *args, **kwargs: {"tables": {"binary": [result]}}
    )
    study = _study(tmp_path / "study", _records({"normal": 40, "benign": 8, "malignant": 4}))
    out = tmp_path / "out"
    arguments = [
        "--dataset_dir",
        str(study),
        "--out",
        str(out),
        "--strategies",
        "scratch",
        "--fractions",
        "0.05",
        "1.0",
    ]
    assert compare_strategies.main([*arguments, "--device", "cpu"]) == 0
    rows = json.loads((out / "report.json").read_text())["tables"]["strategies"]
    counts = [
        (row["fraction"], row["labelled_patients"], row["available_patients"], row["labelled_images"]) for row in rows
    ]
    assert counts == [(0.05, 6, 52, 24), (1.0, 52, 52, 208)]  # 5 % of 52 is 3 patients; two per class make it 6


def test_no_image_of_a_test_patient_is_pretrained_on_drawn_or_counted(tmp_path, monkeypatch):
    """A test patient's prior study marked training is in no run, as train.json leaves it out; two studies naming
    no patient are two patients, as the draw keys them (patient_key), not one blank patient_id."""
    records = _records({"normal": 4, "benign": 2, "malignant": 2})  # P8 is the test patient
    prior = {"path": "P8_prior.dcm", "patient_id": "P8", "case_label": "normal", "split": "training"}
    anonymous = [{"path": f"S{s}_{v}.dcm", "study_uid": f"S{s}", "case_label": "normal", "split": "training"}
                 for s in (1, 2) for v in (0, 1)]  # fmt: skip
    study = _study(tmp_path / "study", [*records, prior, *anonymous])
    monkeypatch.setattr(compare_strategies, "bundle_run", _stop_at_training)
    arguments = ["--dataset_dir", str(study), "--fractions", "1.0", "--device", "cpu", "--image_size", "32", "32"]
    with pytest.raises(_ReachedTraining):
        compare_strategies.main([*arguments, "--out", str(tmp_path / "pretrain"), "--strategies", "pretrained"])
    pretrained_on = [
        Path(r["path"]).name for r in read_manifest(tmp_path / "pretrain" / "runs" / "pretrain_manifest.csv")
    ]
    assert len(pretrained_on) == 36 and "P8_prior.dcm" not in pretrained_on

    result = dict.fromkeys(("images", "positives", "auc", "auc_low", "auc_high", "sensitivity", "specificity"), 1)
    monkeypatch.setattr(compare_strategies, "train_and_evaluate", lambda *a, **k: {"tables": {"binary": [result]}})
    out = tmp_path / "scratch"
    assert compare_strategies.main([*arguments, "--out", str(out), "--strategies", "scratch"]) == 0
    (row,) = json.loads((out / "report.json").read_text())["tables"]["strategies"]
    assert (row["labelled_patients"], row["available_patients"], row["labelled_images"]) == (10, 10, 36)
    assert "P8_prior.dcm" not in [Path(r["path"]).name for r in read_manifest(out / "runs" / "labelled_1_seed0.csv")]
