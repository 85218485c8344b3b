"""Uncertainty measures, fine-tuning on corrections, atomic checkpoints, and the simulated clinician's loop."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_factory import write_ct_dicom, write_mammo_dicom
from monailabel.tasks.activelearning.first import First
from PIL import Image

from mammoxai.data.manifest import read_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.nets import MammoClassifier, MultiViewClassifier
from mammoxai.training.checkpoints import TrainingGrid, TrainingViews
from mammoxai.training.corrections import correction_records, finetune, replace_checkpoint, usable_corrections

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "mammography"))
from clinician import simulator  # noqa: E402

from lib.activelearning import ReadableOnly, UncertaintyStrategy  # noqa: E402
from lib.infers import load_predictor  # noqa: E402
from lib.scoring.uncertainty import TTA_TRANSFORMS, UncertaintyScoring, uncertainty  # noqa: E402
from lib.trainers import CorrectionsTrainer  # noqa: E402

CLASSES = ["normal", "benign", "malignant"]


def test_entropy_is_one_for_a_uniform_prediction_and_zero_for_a_certain_one():
    assert uncertainty(torch.full((1, 3), 1 / 3), "entropy") == pytest.approx(1.0)
    assert uncertainty(torch.tensor([[1.0, 0.0, 0.0]]), "entropy") == pytest.approx(0.0, abs=1e-6)


def test_margin_is_high_when_the_two_best_classes_are_close():
    close = uncertainty(torch.tensor([[0.45, 0.44, 0.11]]), "margin")
    clear = uncertainty(torch.tensor([[0.90, 0.05, 0.05]]), "margin")
    assert close == pytest.approx(0.99) and clear == pytest.approx(0.15)


def test_tta_variance_is_zero_when_augmentations_agree_and_positive_when_they_do_not():
    agree = torch.tensor([[0.6, 0.3, 0.1]] * 4)
    disagree = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    assert uncertainty(agree, "tta") == pytest.approx(0.0)
    assert uncertainty(disagree, "tta") > 0.3
    with pytest.raises(MammoXAIError, match="augmentation"):
        uncertainty(agree[:1], "tta")


def test_tta_transforms_keep_the_model_input_shape_and_range():
    image = torch.rand(1, 1, 16, 12)
    for transform in TTA_TRANSFORMS:
        out = transform(image)
        assert out.shape == image.shape and 0 <= out.min() and out.max() <= 1


class ReloadedMidPass:
    """A predictor whose weights another request replaces (version 1 to 2) after its first ``reload_after`` forward
    passes, as an ``/infer`` beside a scoring pass does once a training run wrote new weights; version 2 is unsure
    of ``case_a`` only, version 1 of nothing."""

    class_names = tuple(CLASSES)

    def __init__(self, reload_after: int) -> None:
        self.reload_after, self.passes, self.version = reload_after, 0, 1

    @property
    def checkpoint_id(self) -> str:
        return f"v{self.version}"

    def load_weights(self) -> None:
        pass

    def predict_probabilities(self, path, transforms=()):
        if self.passes == self.reload_after:
            self.version = 2
        self.passes += 1
        unsure = self.version == 2 and Path(path).stem == "case_a"
        return torch.tensor([[1 / 3] * 3 if unsure else [0.8, 0.1, 0.1]]), self.checkpoint_id


class DictDatastore:
    """The four datastore calls scoring and ranking make, over a dict of image infos (no labels)."""

    def __init__(self, image_ids) -> None:
        self.infos = {image_id: {} for image_id in image_ids}

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return list(self.infos)

    def get_image_info(self, image_id):
        return self.infos[image_id]

    def get_image_uri(self, image_id):
        return f"{image_id}.dcm"

    def update_image_info(self, image_id, info):
        self.infos[image_id].update(info)


def test_uncertainty_strategy_ranks_every_image_when_new_weights_load_during_its_scoring_pass():
    predictor = ReloadedMidPass(reload_after=1)  # case_a is scored by version 1, the others by version 2
    datastore = DictDatastore(["case_a", "case_b", "case_c"])

    proposal = UncertaintyStrategy(UncertaintyScoring(predictor, "entropy"))({}, datastore)

    assert proposal["id"] == "case_a" and proposal["score"] == pytest.approx(1.0)  # not the best of b and c
    assert {info["uncertainty"]["checkpoint"] for info in datastore.infos.values()} == {"v2"}


def test_only_a_score_of_the_current_weights_and_measure_is_fresh():
    datastore = DictDatastore(["current", "old_weights", "other_measure", "unscored"])
    stored = {"current": ("v1", "margin"), "old_weights": ("v0", "margin"), "other_measure": ("v1", "entropy")}
    for image_id, (checkpoint, measure) in stored.items():
        score = {"checkpoint": checkpoint, "measure": measure, "score": 0.4}
        datastore.update_image_info(image_id, {"uncertainty": score})
    scoring = UncertaintyScoring(ReloadedMidPass(reload_after=0), "margin")

    fresh = {image_id: scoring.fresh_score(datastore, image_id, "v1") for image_id in datastore.infos}

    assert fresh == {"current": 0.4, "old_weights": None, "other_measure": None, "unscored": None}


class StudiesDatastore(DictDatastore):
    """A :class:`DictDatastore` whose images are ``<id>.dcm`` in a studies folder, with the unreadable mark and the
    served model's intensity scaling, as :class:`~lib.datastore.MammogramDatastore` has them."""

    def __init__(self, studies: Path, image_ids, intensity_scaling: str = "breast_percentiles") -> None:
        super().__init__(image_ids)
        self.studies = studies
        self.intensity_scaling = intensity_scaling

    def get_image_uri(self, image_id):
        return str(self.studies / f"{image_id}.dcm")

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return [image_id for image_id, info in self.infos.items() if "unreadable" not in info]

    def mark_unreadable(self, image_id, problem):
        self.update_image_info(image_id, {"unreadable": {"problem": problem}})


class Unreadable:
    """A predictor whose reader refuses every file, naming it by its path as the reader does."""

    class_names = tuple(CLASSES)
    checkpoint_id = "v1"

    def load_weights(self) -> None:
        pass

    def predict_probabilities(self, path, transforms=()):
        raise MammoXAIError(path, "no breast was found", "check the image")


def test_uncertainty_scoring_names_a_failed_image_by_its_id_not_the_servers_path(tmp_path):
    """The reason held the file's path in the server's studies folder, which the client does not know."""
    datastore = StudiesDatastore(tmp_path, ["case_a"])

    result = UncertaintyScoring(Unreadable(), "entropy")({}, datastore)

    assert result["failed"] == {"case_a": "image 'case_a': no breast was found (check the image)"}


def test_first_passes_over_an_image_with_no_breast_marking_it_by_its_id(tmp_path):
    """Proposed, it could be neither explained nor labelled, and first proposed it every time."""
    write_mammo_dicom(tmp_path / "blank.dcm", np.zeros((64, 64), dtype=np.uint16))
    datastore = StudiesDatastore(tmp_path, ["blank"])

    proposal = ReadableOnly(First())({}, datastore)

    assert proposal is None
    problem = datastore.infos["blank"]["unreadable"]["problem"]
    assert problem.startswith("image 'blank': no breast was found") and str(tmp_path) not in problem


def test_first_passes_over_an_image_the_served_intensity_scaling_cannot_scale(tmp_path):
    """A float TIFF copied into the studies folder by hand: served with display_range, every inference of it fails."""
    rows, columns = np.mgrid[0:128, 0:96]
    breast = np.where(((rows - 64) / 54) ** 2 + (columns / 67) ** 2 < 1, 0.6, 0.02).astype(np.float32)
    Image.fromarray(breast).save(tmp_path / "float.dcm", format="TIFF")  # read by its content, not its name

    assert ReadableOnly(First())({}, StudiesDatastore(tmp_path, ["float"])) == {"id": "float"}
    datastore = StudiesDatastore(tmp_path, ["float"], intensity_scaling="display_range")
    assert ReadableOnly(First())({}, datastore) is None
    assert "fixes no value range" in datastore.infos["float"]["unreadable"]["problem"]


def test_replace_checkpoint_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.pt"
    replace_checkpoint({"w": torch.ones(2)}, path)
    with pytest.raises(MammoXAIError, match="not finite"):
        replace_checkpoint({"w": torch.tensor([1.0, float("nan")])}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
    with pytest.raises(MammoXAIError, match="not finite"):  # train.json's layout: the weights under "model"
        replace_checkpoint({"model": {"w": torch.tensor([float("inf")])}, "grid": {"image_size": [8, 8]}}, path)
    replace_checkpoint({"model": {"w": torch.zeros(2)}, "grid": {"image_size": [8, 8]}}, path)
    assert torch.load(path, weights_only=True)["grid"] == {"image_size": [8, 8]}  # kept whole


@pytest.fixture(scope="module")
def corrections(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrections")
    synthesize(root / "synth", patients=3, seed=5, size=128)
    triples = []
    for record in read_manifest(root / "synth" / "manifest.csv"):
        label = {"recalled_benign": "benign"}.get(record["case_label"], record["case_label"])
        path = root / f"{Path(record['path']).stem}.json"
        path.write_text(json.dumps({"class": label, "annotator": "t", "timestamp": "2024-05-01T09:30:00+00:00"}))
        triples.append((Path(record["path"]).stem, record["path"], path))
    return root, triples


def test_correction_records_take_the_class_from_the_label_and_the_patient_from_the_header(corrections):
    _, triples = corrections
    records = correction_records(triples, CLASSES)
    assert {r["patient_id"] for r in records} == {"P0000", "P0001", "P0002"}
    assert all(r["case_label"] in CLASSES for r in records)


def test_correction_with_an_unknown_class_is_refused_naming_the_image(corrections, tmp_path):
    _, triples = corrections
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"class": "cancer", "annotator": "t", "timestamp": "2024-05-01T09:30:00+00:00"}))
    with pytest.raises(MammoXAIError, match="cancer"):
        correction_records([(triples[0][0], triples[0][1], bad)], CLASSES)


def test_usable_corrections_leave_out_an_unusable_image_or_label_naming_its_id_not_its_file(corrections, tmp_path):
    """A file replaced after its label was saved must not cost the other corrections their run."""
    _, triples = corrections
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"class": "cancer", "annotator": "t", "timestamp": "2024-05-01T09:30:00+00:00"}))
    ct = write_ct_dicom(tmp_path / "ct.dcm")
    blank = write_mammo_dicom(tmp_path / "blank.dcm", np.zeros((64, 64), dtype=np.uint16))
    label = triples[0][2]
    bad = [("ct", ct, label), ("unknown_class", triples[1][1], unknown), ("blank", blank, label)]

    headers, header_left_out = usable_corrections([*triples, *bad], CLASSES)
    records, left_out = usable_corrections([*triples, *bad], CLASSES, image_size=48)

    assert sorted(header_left_out) == ["ct", "unknown_class"] and len(headers) == len(triples) + 1  # blank's header
    assert [record["image_id"] for record in records] == [image_id for image_id, _, _ in triples]
    assert sorted(left_out) == ["blank", "ct", "unknown_class"]
    assert "not a mammogram" in left_out["ct"] and "cancer" in left_out["unknown_class"]
    assert "no breast was found" in left_out["blank"]
    assert str(tmp_path) not in json.dumps(left_out)


def test_finetune_not_worse_policy_compares_with_the_current_weights_on_the_same_split(corrections, tmp_path):
    root, triples = corrections
    bundle = simulator.make_bundle(tmp_path / "bundle", (48, 48), seed=0)
    checkpoint = bundle / "models" / "model.pt"
    before = checkpoint.read_bytes()
    overrides = {"epochs": 1, "num_workers": 0, "batch_size": 4, "device": "cpu", "image_size": [48, 48]}

    result = finetune(bundle, correction_records(triples, CLASSES), tmp_path / "work", overrides=overrides)

    assert result.baseline_metric is not None and result.metric is not None
    assert result.accepted == (result.metric >= result.baseline_metric)
    assert (checkpoint.read_bytes() != before) == result.accepted
    assert result.train_images + result.val_images == len(triples)
    if result.accepted:  # the served file keeps train.json's layout, its training input included
        grid = torch.load(checkpoint, weights_only=True)["grid"]
        assert grid == {"image_size": [48, 48], "intensity_scaling": "breast_percentiles", "field_of_view": "breast"}


def test_finetune_not_worse_refuses_a_validation_split_of_one_class_before_training(corrections, tmp_path):
    root, triples = corrections
    bundle = simulator.make_bundle(tmp_path / "bundle", (48, 48), seed=0)
    before = (bundle / "models" / "model.pt").read_bytes()
    normal = tmp_path / "normal.json"
    normal.write_text(json.dumps({"class": "normal", "annotator": "t", "timestamp": "2024-05-01T09:30:00+00:00"}))
    records = correction_records([(image_id, image, normal) for image_id, image, _ in triples], CLASSES)
    overrides = {"epochs": 1, "num_workers": 0, "device": "cpu", "image_size": [48, 48]}

    with pytest.raises(MammoXAIError, match=r"validation split of \d+ image\(s\) of class \['normal'\] only"):
        finetune(bundle, records, tmp_path / "work", overrides=overrides)
    assert (bundle / "models" / "model.pt").read_bytes() == before
    assert not (tmp_path / "work" / "models").exists()  # refused before a single epoch


def test_simulated_clinician_runs_two_rounds_against_the_real_server(tmp_path):
    synthesize(tmp_path / "synth", patients=4, seed=2, size=128)
    truth, held_out = simulator.split_studies(tmp_path / "synth", tmp_path / "studies")
    bundle = simulator.make_bundle(tmp_path / "bundle", (48, 48), seed=0)
    served = (bundle / "models" / "model.pt").stat().st_mtime_ns

    results = simulator.run_loop(
        tmp_path,
        "uncertainty",
        truth,
        held_out,
        tmp_path / "studies",
        bundle,
        rounds=2,
        per_round=6,
        train_params={"epochs": 1, "num_workers": 0, "accept": "valid"},
    )

    assert [r.round for r in results] == [0, 1, 2]
    assert [r.labels for r in results] == [0, 6, 12]
    assert all(0.0 <= r.auc.estimate <= 1.0 for r in results)
    assert all(r.auc.low <= r.auc.estimate <= r.auc.high for r in results if not math.isnan(r.auc.low))
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns != served
    assert len(list((tmp_path / "studies" / "labels" / "final").glob("*.json"))) == 12
    simulator.write_results(results, tmp_path)
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_simulated_clinician_refuses_a_studies_folder_without_manifest(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert simulator.main(["--out", str(tmp_path / "run"), "--studies", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "has no manifest.csv" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_simulated_clinician_refuses_an_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "results").write_text("not a folder")

    assert simulator.main(["--out", str(tmp_path / "results"), "--strategies", "first"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "results").read_text() == "not a folder"


def test_simulated_clinician_refuses_a_model_grid_the_network_cannot_run_on(tmp_path, capsys):
    assert simulator.main(["--out", str(tmp_path / "run"), "--image-size", "8", "8", "--strategies", "first"]) == 1
    err = capsys.readouterr().err
    assert "--image-size 8 8: is too small for the network's downsampling" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before the synthetic studies


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four synthetic patients, one of them held out (seed 2), for runs of the script whose server is faked."""
    folder = tmp_path_factory.mktemp("cohort")
    synthesize(folder, patients=4, seed=2, size=128)
    return folder


@pytest.fixture
def fake_loop(monkeypatch) -> list[dict]:
    """``run_loop`` replaced by one that records its arguments and returns a round-0 result: what the script does
    around the server, without one."""
    calls = []

    def run_loop(out, strategy, truth, held_out, pool, bundle, rounds, per_round, train_params):
        calls.append({"out": out, "pool": pool, "bundle": bundle, "cwd": Path.cwd()})
        return [simulator.RoundResult(strategy, 0, 0, simulator.ConfidenceInterval(0.5, 0.4, 0.6, 0.95, 10), True, 0.0)]

    monkeypatch.setattr(simulator, "run_loop", run_loop)
    return calls


def test_simulated_clinician_with_a_relative_out_gives_the_server_absolute_paths(
    cohort, fake_loop, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    studies = os.path.relpath(cohort, tmp_path)

    status = simulator.main(
        ["--out", "al_run", "--studies", studies, "--strategies", "first", "--image-size", "48", "48"]
    )

    assert status == 0
    (call,) = fake_loop
    for path in (call["out"], call["pool"], call["bundle"]):  # the server runs in the strategy folder, not here
        assert path.is_absolute() and path.is_relative_to(tmp_path / "al_run" / "first")
    assert (call["bundle"] / "configs" / "inference.json").is_file()
    assert (tmp_path / "al_run" / "results.csv").read_text().splitlines()[1].startswith("first,0,0,0.5000")


def test_simulated_clinician_refuses_an_out_with_earlier_results_unless_overwrite(cohort, fake_loop, tmp_path, capsys):
    out = tmp_path / "run"
    command = ["--out", str(out), "--studies", str(cohort), "--strategies", "random", "--image-size", "48", "48"]
    assert simulator.main(command) == 0
    (out / "random" / "notes.txt").write_text("the earlier run's")
    (out / "mine.txt").write_text("a user's file")
    before = (out / "results.csv").read_bytes()

    assert simulator.main(command) == 1
    err = capsys.readouterr().err
    assert "results.csv, curve.png, random of an earlier simulation" in err and "--overwrite" in err
    assert (out / "random" / "notes.txt").exists() and (out / "results.csv").read_bytes() == before
    assert len(fake_loop) == 1

    assert simulator.main([*command, "--overwrite"]) == 0
    assert not (out / "random" / "notes.txt").exists()  # the script's own folder, replaced
    assert (out / "mine.txt").read_text() == "a user's file"  # anything else left alone
    assert len(fake_loop) == 2


def test_simulated_clinician_refuses_earlier_synthetic_studies_and_writes_them_again_with_overwrite(
    fake_loop, tmp_path, capsys
):
    out = tmp_path / "run"
    (out / "synth").mkdir(parents=True)
    synthesize(out / "synth", patients=4, seed=2, size=128)
    command = [
        "--out",
        str(out),
        "--patients",
        "5",
        "--size",
        "128",
        "--seed",
        "2",
        "--strategies",
        "first",
        "--image-size",
        "48",
        "48",
    ]

    assert simulator.main(command) == 1
    assert "synth/manifest.csv of an earlier simulation" in capsys.readouterr().err

    assert simulator.main([*command, "--overwrite"]) == 0
    assert len({record["patient_id"] for record in read_manifest(out / "synth" / "manifest.csv")}) == 5


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--strategies", "bogus"], "invalid choice: 'bogus'"),
        (["--strategies", ".."], "invalid choice: '..'"),
        (["--strategies", "random", "first", "random"], "--strategies names random more than once"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--per-round", "-1"], "--per-round must be at least 1"),
        (["--patients", "0"], "--patients must be at least 1"),
        (["--image-size", "0", "48"], "--image-size must be at least 1"),
        (["--epochs", "many"], "invalid int value: 'many'"),
    ],
)
def test_simulated_clinician_refuses_bad_arguments_before_touching_out(arguments, message, tmp_path, capsys):
    sibling = tmp_path / "danger" / "keep.txt"
    sibling.parent.mkdir()
    sibling.write_text("user data")

    with pytest.raises(SystemExit) as exit_info:
        simulator.main(["--out", str(tmp_path / "danger" / "out"), *arguments])

    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert sibling.read_text() == "user data" and not (tmp_path / "danger" / "out").exists()


def test_simulated_clinician_refuses_studies_without_held_out_patients(tmp_path):
    synthesize(tmp_path / "one", patients=1, seed=0, size=128)

    with pytest.raises(MammoXAIError, match="has no images in the (held-out test split|pool)"):
        simulator.split_studies(tmp_path / "one", tmp_path / "pool")
    assert not (tmp_path / "pool").exists()


def test_finetune_refuses_served_weights_of_another_network_and_keeps_them(corrections, tmp_path):
    root, triples = corrections
    bundle = simulator.make_bundle(tmp_path / "bundle", (48, 48), seed=0)
    checkpoint = bundle / "models" / "model.pt"
    torch.save(MammoClassifier(num_classes=3).state_dict(), checkpoint)  # no metadata heads
    before = checkpoint.read_bytes()
    overrides = {"epochs": 1, "num_workers": 0, "batch_size": 4, "device": "cpu", "image_size": [48, 48]}

    with pytest.raises(MammoXAIError, match="no metadata heads"):
        finetune(bundle, correction_records(triples, CLASSES), tmp_path / "work", overrides=overrides)
    assert checkpoint.read_bytes() == before


def test_finetune_refuses_served_multi_view_weights_of_another_view_order_and_keeps_them(corrections, tmp_path):
    """Served CC + MLO weights would fine-tune on MLO + CC breasts: each view in the other's head position."""
    root, triples = corrections
    bundle = simulator.make_bundle(tmp_path / "bundle", (48, 48), seed=0)
    checkpoint = bundle / "models" / "model.pt"
    served = MultiViewClassifier(num_classes=3).state_dict()
    torch.save({"model": served, "views": TrainingViews(["CC", "MLO"], "concat").state_dict()}, checkpoint)
    before = checkpoint.read_bytes()
    overrides = {
        "epochs": 1,
        "num_workers": 0,
        "device": "cpu",
        "image_size": [48, 48],
        "network_def": "@finetune_network_def",
        "views": ["MLO", "CC"],
    }

    refusal = r"""was trained with views \["CC", "MLO"\].*pass --views '\["CC", "MLO"\]'"""
    with pytest.raises(MammoXAIError, match=refusal):
        finetune(bundle, correction_records(triples, CLASSES), tmp_path / "work", overrides=overrides)
    assert checkpoint.read_bytes() == before
    assert not (tmp_path / "work" / "models").exists()  # refused before a single epoch


@pytest.mark.parametrize(
    ("setting", "other", "default"),
    [("intensity_scaling", "display_range", "breast_percentiles"), ("field_of_view", "image", "breast")],
)
def test_finetune_refuses_served_weights_of_another_input_setting_and_keeps_them(
    corrections, tmp_path, setting, other, default
):
    """Fine-tuned on images scaled or framed another way, the weights would start from features that do not apply."""
    root, triples = corrections
    bundle = simulator.make_bundle(tmp_path / "bundle", (48, 48), seed=0)
    checkpoint = bundle / "models" / "model.pt"
    grid = TrainingGrid([48, 48], **{setting: other}).state_dict()
    torch.save({"model": torch.load(checkpoint, weights_only=True), "grid": grid}, checkpoint)
    before = checkpoint.read_bytes()
    overrides = {"epochs": 1, "num_workers": 0, "device": "cpu", "image_size": [48, 48]}  # train.json's settings

    refusal = f"was trained with {setting} {json.dumps(other)}, not the {json.dumps(default)} of this run"
    with pytest.raises(MammoXAIError, match=refusal):
        finetune(bundle, correction_records(triples, CLASSES), tmp_path / "work", overrides=overrides)
    assert checkpoint.read_bytes() == before
    assert not (tmp_path / "work" / "models").exists()  # refused before a single epoch


class FinalLabels:
    """The three datastore calls the trainer makes to gather the ``final`` labels, over correction triples."""

    def __init__(self, triples) -> None:
        self.corrections = {image_id: (image, label) for image_id, image, label in triples}

    def get_labeled_images(self, label_tag=None, labels=None):
        return list(self.corrections)

    def get_label_uri(self, image_id, label_tag=None):
        return str(self.corrections[image_id][1])

    def get_image_uri(self, image_id):
        return str(self.corrections[image_id][0])


def test_retraining_on_corrections_uses_and_records_the_served_intensity_scaling_and_field_of_view(
    corrections, tmp_path
):
    """The served predictor reloads what the run writes: trained on, and recording, its own scaling and field of view
    it serves at once; trained with train.json's defaults it would be refused at the reload and the server would serve
    nothing."""
    root, triples = corrections
    bundle = simulator.make_bundle(tmp_path / "bundle", (48, 48), seed=0)
    config = bundle / "configs" / "inference.json"
    inputs = {"intensity_scaling": "display_range", "field_of_view": "image"}
    config.write_text(json.dumps({**json.loads(config.read_text()), **inputs}))
    predictor = load_predictor(bundle, "cpu")
    predictor.load_weights()
    served = predictor.checkpoint_id
    assert (predictor.intensity_scaling, predictor.field_of_view) == ("display_range", "image")

    request = {"epochs": 1, "num_workers": 0, "batch_size": 4, "accept": "valid"}
    stats = CorrectionsTrainer(bundle, predictor)(request, FinalLabels(triples))

    assert stats["accepted"], stats["reason"]
    assert {name: stats["overrides"][name] for name in inputs} == inputs
    saved = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert saved["grid"] == {"image_size": [48, 48], **inputs}
    predictor.load_weights()
    assert predictor.checkpoint_id != served  # the new weights are served


def test_a_round_the_server_refused_to_train_is_not_reported_as_rejected_weights(tmp_path, capsys):
    """One correction is of one patient: the server refuses to train (422), so no weights were judged."""
    synthesize(tmp_path / "synth", patients=4, seed=2, size=128)
    truth, held_out = simulator.split_studies(tmp_path / "synth", tmp_path / "studies")
    bundle = simulator.make_bundle(tmp_path / "bundle", (48, 48), seed=0)

    results = simulator.run_loop(
        tmp_path, "random", truth, held_out, tmp_path / "studies", bundle, rounds=1, per_round=1, train_params={}
    )

    assert [r.accepted for r in results] == [True, None]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("random: round 1, 1 labels") and last.endswith("new weights not trained")
    simulator.write_results(results, tmp_path)
    assert (tmp_path / "results.csv").read_text().splitlines()[2].split(",")[6] == ""
