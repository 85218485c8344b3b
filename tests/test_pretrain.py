"""Metadata pretraining: labels from headers or CSV columns, study batches, the bundle workflow and its resumption."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cache import breast_pixels
from torch.utils.data import DataLoader

from mammoxai.data.cache import PreprocessedCache
from mammoxai.data.manifest import build_manifest, read_manifest, write_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError
from mammoxai.io.preprocess import FIELDS_OF_VIEW, INTENSITY_SCALINGS
from mammoxai.nets import MetadataNet
from mammoxai.training.losses import MetadataLoss, PretrainingLoss, SupervisedContrastiveLoss
from mammoxai.training.pretrain import (
    CheckpointInfo,
    MatchingAccuracy,
    MetadataAccuracy,
    MetadataDataset,
    PretrainBatch,
    Resume,
    StudyBatchSampler,
    TrainerState,
    fit_label_space,
    load_pretrained,
    load_records,
    record_metadata,
    select_fields,
    split_by_patient,
    split_fingerprint,
)

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundle"
CONFIGS = BUNDLE / "configs"
SIZE = (64, 64)
#: the smallest configuration that exercises everything: the bundle's small CNN at 64 x 64 pixels
TINY = {
    "backbone": "mammo_cnn",
    "image_size": list(SIZE),
    "batch_size": 8,
    "embed_dim": 32,
    "matching_dim": 16,
    "num_workers": 0,
    "log_every": 1,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Eight synthetic patients (some with a prior study) and a preprocessed-image cache shared by the tests."""
    folder = tmp_path_factory.mktemp("cohort")
    synthesize(folder / "studies", patients=8, seed=0, size=128)
    return folder


@pytest.fixture(autouse=True)
def _root_logger_restored():
    """The workflow adds a log file to the root logger; keep it from outliving the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [handler for handler in root.handlers if handler not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def pretrain_workflow(cohort: Path, out: Path, **overrides) -> ConfigWorkflow:
    settings = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(cohort / "studies"),
        "ckpt_dir": str(out / "models"),
        "output_dir": str(out / "logs"),
        "cache_dir": str(cohort / "cache"),
        **TINY,
        **overrides,
    }
    return ConfigWorkflow(config_file=str(CONFIGS / "pretrain.json"), logging_file=False, **settings)


def run(workflow: ConfigWorkflow) -> ConfigWorkflow:
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def user_error(error: BaseException) -> MammoXAIError | None:
    """The MammoXAIError behind the RuntimeError that MONAI's config parser wraps it in."""
    while error is not None and not isinstance(error, MammoXAIError):
        error = error.__cause__ or error.__context__
    return error


def cohort_records(cohort: Path) -> list[dict]:
    return read_manifest(cohort / "studies" / "manifest.csv")


# -- labels and groups ----------------------------------------------------------------------------------------------
def test_record_metadata_shows_manifest_columns_under_their_dicom_keywords_too():
    record = {"path": "a.dcm", "kvp": 28.0, "view": "MLO", "laterality": "L", "patient_id": "P1", "density": "C"}
    metadata = record_metadata(record)
    assert metadata["KVP"] == 28.0 and metadata["ViewPosition"] == "MLO" and metadata["ImageLaterality"] == "L"
    assert metadata["PatientID"] == "P1" and metadata["density"] == "C"


def test_dataset_gives_header_labels_and_one_group_per_study(cohort):
    records = cohort_records(cohort)
    space = fit_label_space(select_fields(["view", "laterality", "kvp", "xray_system"]), records)
    dataset = MetadataDataset(records, space, SIZE, cache_dir=cohort / "cache")
    sample = dataset[0]
    assert sample["image"].shape == (1, *SIZE)
    assert sample["fields"] == space.encode(record_metadata(records[0]))
    assert space.decode("view", sample["fields"]["view"]) == records[0]["view"]
    studies = [(record["patient_id"], record["study_uid"]) for record in records]
    for i, j in [(i, j) for i in range(len(records)) for j in range(len(records))]:
        assert (dataset.groups[i] == dataset.groups[j]) == (studies[i] == studies[j])
    assert any(record["is_prior"] == "1" for record in records)  # so a patient's prior study is another group


def test_png_images_with_a_label_csv_get_csv_labels_and_patient_groups(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    rows = [
        ("a.png", "A", "L", "CC", "B"),
        ("b.png", "A", "L", "MLO", "B"),
        ("c.png", "B", "R", "CC", "D"),
        ("d.png", "B", "R", "MLO", ""),
    ]
    for seed, (name, *_) in enumerate(rows):
        Image.fromarray((breast_pixels(seed=seed) // 16).astype(np.uint8)).save(folder / name)
    with open(tmp_path / "labels.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([("file", "patient_id", "laterality", "view", "density"), *rows])
    write_manifest(build_manifest(folder).records, folder / "manifest.csv")

    records = load_records(folder / "manifest.csv", label_csv=tmp_path / "labels.csv", id_column="file")
    density = {"name": "density", "type": "categorical", "keys": ["density"], "classes": ["A", "B", "C", "D"]}
    space = fit_label_space(select_fields(["view", "laterality", "density"], extra_fields=[density]), records)
    dataset = MetadataDataset(records, space, SIZE)
    labels = {Path(record["path"]).name: dataset.targets[i] for i, record in enumerate(dataset.data)}
    assert labels["a.png"] == {"view": 0, "laterality": 0, "density": 1}
    assert labels["c.png"] == {"view": 0, "laterality": 1, "density": 3}
    assert labels["d.png"]["density"] == -1  # empty CSV cell: unknown, masked out of the loss
    groups = {Path(record["path"]).name: group for record, group in zip(dataset.data, dataset.groups, strict=True)}
    assert groups["a.png"] == groups["b.png"] != groups["c.png"] == groups["d.png"]
    assert dataset[2]["image"].shape == (1, *SIZE)


def test_ages_and_binned_columns_of_a_semicolon_label_csv_written_with_decimal_commas_get_their_classes(tmp_path):
    """A spreadsheet where the comma is the decimal mark saves "CSV" with semicolons and writes 49.5 as "49,5". Only
    the manifest's typed columns were read so: an age or a column a custom field bins stayed "49,5", read as no number,
    so every such image was silently unknown for that field, masked out of its loss (here: refused as unlabelled)."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        Image.fromarray((breast_pixels(seed=seed) // 16).astype(np.uint8)).save(folder / name)
    write_manifest(build_manifest(folder).records, folder / "manifest.csv")
    (tmp_path / "labels.csv").write_text(
        "File;Patient ID;age;glandular_fraction;comment\na.png;P1;49,5;0,35;BI-RADS 2, benign\nb.png;P2;71,25;0,6;\n",
        encoding="utf-8",
    )
    column_map = {"File": "file"}
    records = load_records(folder / "manifest.csv", tmp_path / "labels.csv", "file", column_map=column_map)
    glandular = {"name": "glandular", "type": "binned", "keys": ["glandular_fraction"], "edges": [0.25, 0.5]}
    space = fit_label_space(select_fields(["age", "glandular"], extra_fields=[glandular]), records)
    dataset = MetadataDataset(records, space, SIZE)

    labels = {Path(record["path"]).name: dataset.targets[i] for i, record in enumerate(dataset.data)}
    assert labels == {"a.png": {"age": 0, "glandular": 1}, "b.png": {"age": 3, "glandular": 2}}
    assert [record.get("comment") for record in dataset.data] == ["BI-RADS 2, benign", None]  # text stays text


@pytest.mark.parametrize("config", ["pretrain.json", "evaluate_pretrain.json", "ablation.json", "train.json"])
def test_every_config_joining_a_label_csv_renames_its_columns_by_label_column_map(tmp_path, config):
    """A published CSV names its columns its own way (``ACR`` for the BI-RADS density, ``File Name``): each config
    that joins ``--label_csv`` reads them as manifest fields with ``--label_column_map``."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    for seed, name in enumerate(("a", "b")):
        Image.fromarray((breast_pixels(seed=seed) // 16).astype(np.uint8)).save(folder / f"{name}.png")
    write_manifest(build_manifest(folder).records, folder / "manifest.csv")
    (tmp_path / "labels.csv").write_text("File Name;ACR;Patient\na.png;2;P1\nb.png;4;P2\n", encoding="utf-8")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(folder),
            "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"),
            "num_workers": 0,
            "label_csv": str(tmp_path / "labels.csv"),
            "label_id_column": "file",
            "label_column_map": {"File Name": "file", "ACR": "density", "Patient": "patient_id"},
        }
    )

    records = {Path(record["path"]).name: record for record in parser.get_parsed_content("records")}

    assert [(records[name]["density"], records[name]["patient_id"]) for name in ("a.png", "b.png")] == [
        ("B", "P1"),
        ("D", "P2"),
    ]


def test_split_keeps_every_patient_on_one_side(cohort):
    records = cohort_records(cohort)
    train, val = split_by_patient(records, select_fields(["view"]), val_fraction=0.25, seed=3)
    train_patients = {record["patient_id"] for record in train}
    val_patients = {record["patient_id"] for record in val}
    assert len(val_patients) == 2 and not train_patients & val_patients
    assert len(train) + len(val) == len(records)


def test_split_of_images_without_a_patient_id_warns_that_priors_may_leak(cohort, caplog):
    records = [dict(record, patient_id="") for record in cohort_records(cohort)]
    split_by_patient(records, select_fields(["view"]), val_fraction=0.25, seed=3)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any(message.startswith(f"{len(records)} of {len(records)} images name no patient") for message in warnings)


def test_an_unknown_field_is_named_with_the_defined_ones():
    with pytest.raises(MammoXAIError, match=r"fields: names \['colour'\].*xray_system"):
        select_fields(["view", "colour"])


def test_a_field_absent_from_every_training_image_is_refused(cohort):
    records = [dict(record, kvp=None) for record in cohort_records(cohort)]
    message = "field 'kvp': is absent from all 40 training images.*remove it from 'fields'"
    with pytest.raises(MammoXAIError, match=message):
        fit_label_space(select_fields(["view", "kvp"]), records)


@pytest.mark.parametrize(
    ("definition", "values", "message"),
    [
        (
            {"type": "categorical", "classes": ["A", "B", "C", "D"]},
            "323",
            r"'3', '2'\), but none is one of its classes",
        ),
        ({"type": "binned", "edges": [10, 20], "range": [0, 100]}, ["250", "300", "250"], "none is a number from 0 to"),
    ],
    ids=["categorical", "binned"],
)
def test_a_field_whose_values_all_fall_outside_its_classes_is_refused_saying_so_not_as_absent(
    definition, values, message
):
    """A CSV gave every image a density, 1 to 4 for a field of classes A-D: the error said the column was absent."""
    records = [{"path": f"{i}.png", "density": value} for i, value in enumerate(values)]
    density = {"name": "density", "keys": ["density"], **definition}
    with pytest.raises(MammoXAIError, match=f"field 'density': has values in 3 training images .*{message}"):
        fit_label_space(select_fields(["density"], extra_fields=[density]), records)


def test_a_dataset_dir_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "studies.zip").write_bytes(b"PK")
    with pytest.raises(MammoXAIError, match=r"studies\.zip: is a file, not a folder of images \(set dataset_dir"):
        load_records(tmp_path / "studies.zip" / "manifest.csv")


def test_a_manifest_with_a_missing_file_is_refused_listing_it(cohort, tmp_path):
    records = cohort_records(cohort)
    write_manifest([*records, missing_image(records[0], tmp_path)], tmp_path / "manifest.csv")
    with pytest.raises(MammoXAIError, match=r"1 listed images do not exist: .*gone\.dcm"):
        load_records(tmp_path / "manifest.csv")


def test_unreadable_images_are_found_before_training_and_the_readable_ones_cached_on_the_way(cohort, tmp_path):
    records = cohort_records(cohort)
    manifest = write_manifest([*records, *damaged_images(records[0], tmp_path)], tmp_path / "manifest.csv")
    with pytest.warns(UserWarning, match=r"2 listed images cannot be read: .*truncated\.dcm.*; they are skipped"):
        usable = load_records(manifest, strict=False, image_size=SIZE, cache_dir=tmp_path / "cache", num_workers=2)
    assert [record["path"] for record in usable] == [record["path"] for record in records]
    cache = PreprocessedCache(tmp_path / "cache", SIZE)
    assert all(cache.entry(record["path"]).is_file() for record in records)
    assert len(load_records(manifest, strict=False)) == len(records) + 2  # without a grid: existence only


def test_strict_and_resume_written_as_words_on_the_command_line_mean_what_they_say(cohort, tmp_path):
    records = cohort_records(cohort)
    write_manifest([*records, missing_image(records[0], tmp_path)], tmp_path / "manifest.csv")
    assert len(load_records(tmp_path / "manifest.csv", strict="false")) == len(records)  # skipped, not refused
    with pytest.raises(MammoXAIError, match="listed images do not exist"):
        load_records(tmp_path / "manifest.csv", strict="True")
    assert [Resume(tmp_path, {}, enabled=word).enabled for word in ("false", "No", "0", "true", "YES")] == [
        False,
        False,
        False,
        True,
        True,
    ]
    with pytest.raises(MammoXAIError, match="resume: is 'ja', not a boolean"):
        Resume(tmp_path, {}, enabled="ja")


# -- study batches ------------------------------------------------------------------------------------------------
def test_every_image_is_seen_once_per_epoch_in_batches_of_whole_study_pairs():
    groups = [index // 4 for index in range(24)] + [-1, -1]  # six four-view studies and two unknowns
    sampler = StudyBatchSampler(groups, batch_size=8, views_per_study=2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert sorted(index for batch in batches for index in batch) == list(range(26))
    for batch in batches:
        known = [groups[index] for index in batch if groups[index] >= 0]
        assert all(known.count(group) % 2 == 0 for group in known)  # pairs of the same study, never split


@pytest.mark.parametrize("views", [1, 3, 5, 7])
def test_every_image_of_a_study_with_an_odd_number_of_images_is_seen_exactly_once(views):
    groups = [0] * views + [1] * 4  # a study missing a view (3) or with extra views (5, 7), and a full one
    for shuffle in (False, True):
        batches = StudyBatchSampler(groups, batch_size=4, views_per_study=2, shuffle=shuffle).batches()
        assert sorted(index for batch in batches for index in batch) == list(range(views + 4))


def test_each_epoch_is_shuffled_differently_but_reproducibly():
    sampler = StudyBatchSampler([index // 2 for index in range(40)], batch_size=8, seed=0)
    first = list(sampler)
    sampler.set_epoch(2)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first != second


def test_processes_get_disjoint_batches_of_the_same_epoch_and_as_many_each():
    groups = [index // 2 for index in range(36)]
    shards = [list(StudyBatchSampler(groups, batch_size=8, num_replicas=2, rank=rank)) for rank in (0, 1)]
    whole = StudyBatchSampler(groups, batch_size=8).batches()
    assert len(shards[0]) == len(shards[1]) == 3
    assert shards[0][:2] == whole[0:4:2] and shards[1][:2] == whole[1:4:2]
    assert shards[0][2] == whole[4] and shards[1][2] == whole[0]  # the odd batch count is padded by repeating


def test_views_per_study_below_two_is_refused():
    with pytest.raises(MammoXAIError, match="views_per_study"):
        StudyBatchSampler([0, 0, 1, 1], batch_size=4, views_per_study=1)


# -- engine glue ---------------------------------------------------------------------------------------------------
def test_losses_fall_on_study_batches_of_synthetic_mammograms(cohort):
    records = cohort_records(cohort)
    fields = ["xray_system", "view", "thickness", "kvp"]
    space = fit_label_space(select_fields(fields), records)
    dataset = MetadataDataset(records, space, SIZE, cache_dir=cohort / "cache")
    loader = DataLoader(dataset, batch_sampler=StudyBatchSampler(dataset.groups, batch_size=12, views_per_study=2))
    images, targets = PretrainBatch()(next(iter(loader)))
    net = MetadataNet("mammo_cnn", {name: space.num_classes(name) for name in fields}, embed_dim=32, matching_dim=16)
    loss = PretrainingLoss(MetadataLoss(dict.fromkeys(fields, 1.0)), SupervisedContrastiveLoss(0.1))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    history = []
    for _ in range(12):
        terms = loss.terms(net(images), targets)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        history.append(terms["loss"].item())
        assert all(torch.isfinite(value) for value in terms.values())
    assert history[-1] < history[0]


def test_metadata_accuracy_leaves_out_unknown_labels_and_unlabelled_fields():
    metric = MetadataAccuracy(["view", "kvp"])
    pred = {"logits": {"view": torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), "kvp": torch.zeros(3, 5)}}
    label = {"fields": {"view": torch.tensor([0, 0, -1]), "kvp": torch.full((3,), -1)}}
    metric.reset()
    metric.update((pred, label))
    assert metric.compute() == 0.5


def test_matching_accuracy_counts_nearest_neighbours_from_the_same_study():
    metric = MatchingAccuracy()
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.3], [0.1, 0.9]])
    embeddings = torch.nn.functional.normalize(points)
    metric.reset()
    metric.update(({"match": embeddings}, {"group": torch.tensor([0, 0, 1, 1, -1])}))
    # 0 -> 1 and 1 -> 0 right; 2 -> 4 (unknown) wrong; 3 -> 1 wrong; 4 has no known group and asks nothing
    assert metric.compute() == 0.5


@pytest.mark.parametrize("word, meaning", [("false", False), ("No", False), ("true", True)])
def test_amp_channels_last_and_deterministic_written_as_words_mean_what_they_say(cohort, tmp_path, word, meaning):
    workflow = pretrain_workflow(cohort, tmp_path, amp=word, channels_last=word, deterministic=word)
    parsed = workflow.parser.get_parsed_content
    assert parsed("amp_enabled") is meaning and parsed("channels_last_enabled") is meaning
    assert parsed("deterministic_enabled") is meaning
    memory_format = torch.channels_last if meaning else torch.preserve_format
    assert parsed("memory_format") == memory_format and parsed("prepare_batch").memory_format == memory_format
    with pytest.raises(Exception) as error:
        pretrain_workflow(cohort, tmp_path, amp="sometimes").parser.get_parsed_content("amp_enabled")
    assert "amp: is 'sometimes', not a boolean" in str(user_error(error.value))


# -- the bundle workflow ------------------------------------------------------------------------------------------
def test_pretraining_bundle_checkpoints_logs_and_yields_a_loadable_model(cohort, tmp_path):
    workflow = run(pretrain_workflow(cohort, tmp_path, epochs=2))
    assert workflow.parser.get_parsed_content("amp") is False
    assert workflow.parser.get_parsed_content("channels_last") is False
    assert not torch.cuda.is_initialized()

    models = tmp_path / "models"
    assert sorted(path.name for path in models.iterdir()) == ["pretrain_checkpoint_epoch=2.pt", "pretrained.pt"]
    log = (tmp_path / "logs" / "pretrain.log").read_text()
    assert "Epoch: 2/2" in log and "loss/contrastive" in log and "val_acc/xray_system" in log and "val_mean_acc" in log
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert {"loss", "loss/view", "loss/contrastive"} <= set(events.Tags()["scalars"])

    parsed = workflow.parser.get_parsed_content
    written = [parsed(saver).file_names() for saver in ("validate#checkpoint", "train#checkpoint")]
    assert (parsed("checkpoint_folder#fixed"), parsed("checkpoint_folder#series")) == tuple(
        [name for names in kind for name in names] for kind in zip(*written, strict=True)
    )  # the check in initialize, before any image is read, guards exactly the files the savers write

    pretrained = load_pretrained(models / "pretrained.pt")
    train_records = workflow.parser.get_parsed_content("split")[0]
    systems = sorted({f"{record['manufacturer']} {record['model']}".upper() for record in train_records})
    assert pretrained.label_space.class_names("xray_system") == systems
    assert pretrained.image_size == SIZE and pretrained.network.config["backbone"] == "mammo_cnn"
    seed, val_fraction = parsed("seed"), parsed("val_fraction")
    assert pretrained.split == {  # what evaluations check their split against, without a patient id
        "seed": seed,
        "val_fraction": val_fraction,
        "fingerprint": split_fingerprint({record["patient_id"] for record in train_records}),
        "train_patients": len({record["patient_id"] for record in train_records}),
    }
    out = pretrained.network(torch.rand(2, 1, *SIZE))
    assert {name: logits.shape[1] for name, logits in out["logits"].items()} == {
        name: pretrained.label_space.num_classes(name) for name in pretrained.label_space.fields
    }


@pytest.mark.parametrize("fields", [["view", "thickness"], "view"])
def test_fields_given_as_names_train_those_heads_with_weight_one(cohort, tmp_path, fields):
    workflow = run(pretrain_workflow(cohort, tmp_path, epochs=1, fields=fields))
    names = [fields] if isinstance(fields, str) else fields
    assert workflow.parser.get_parsed_content("loss").metadata.weights == dict.fromkeys(names, 1.0)
    assert load_pretrained(tmp_path / "models" / "pretrained.pt").label_space.fields == names


@pytest.mark.parametrize("component", ["field_definitions", "loss#metadata"])
def test_fields_the_command_line_could_not_read_as_a_list_are_refused_by_each_reader(cohort, tmp_path, component):
    """``--fields view,thickness`` was one field named "view,thickness": refused as undefined, or (the loss) a weight
    of a head no network has."""
    with pytest.raises(Exception) as error:
        pretrain_workflow(cohort, tmp_path, fields="view,thickness").parser.get_parsed_content(component)
    message = str(user_error(error.value))
    assert message.startswith("fields: is 'view,thickness', not a name or a list of names") and "--fields '[" in message


def test_one_int_image_size_is_a_square_grid_recorded_as_such(cohort, tmp_path):
    run(pretrain_workflow(cohort, tmp_path, epochs=1, image_size=SIZE[0]))
    assert load_pretrained(tmp_path / "models" / "pretrained.pt").image_size == (SIZE[0], SIZE[0])


def test_a_second_run_into_the_same_folder_needs_overwrite_and_leaves_no_epoch_of_the_first(cohort, tmp_path):
    run(pretrain_workflow(cohort, tmp_path, epochs=2))
    models = tmp_path / "models"
    first = {path.name: path.read_bytes() for path in models.iterdir()}
    with pytest.raises(Exception) as error:
        run(pretrain_workflow(cohort, tmp_path, epochs=1))
    message = str(user_error(error.value))
    assert "pretrained.pt of an earlier run" in message and "--overwrite true" in message and "--resume true" in message
    assert {path.name: path.read_bytes() for path in models.iterdir()} == first

    run(pretrain_workflow(cohort, tmp_path, epochs=1, overwrite="true", seed=1))  # another seed: other weights
    assert sorted(path.name for path in models.iterdir()) == ["pretrain_checkpoint_epoch=1.pt", "pretrained.pt"]
    assert (models / "pretrained.pt").read_bytes() != first["pretrained.pt"]


def test_an_interrupted_run_resumes_with_its_epoch_count_and_optimizer_state(cohort, tmp_path):
    first = pretrain_workflow(cohort, tmp_path, epochs=3)
    first.initialize()
    first.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate()
    )
    first.run()
    assert sorted(path.name for path in (tmp_path / "models").glob("pretrain_*")) == ["pretrain_checkpoint_epoch=1.pt"]

    second = pretrain_workflow(cohort, tmp_path, epochs=3, resume=True)
    second.initialize()
    epochs = []
    second.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch)
    )
    second.run()
    assert epochs == [2, 3]
    state = torch.load(tmp_path / "models" / "pretrain_checkpoint_epoch=3.pt", weights_only=True)
    per_epoch = state["trainer"]["epoch_length"]
    assert state["trainer"]["iteration"] == 3 * per_epoch
    assert state["trainer"]["scaler"] == {}  # the AMP loss scale's place (TrainerState); no AMP on the CPU
    assert {float(param["step"]) for param in state["optimizer"]["state"].values()} == {3.0 * per_epoch}


def test_the_trainer_checkpoint_entry_restores_the_amp_loss_scale_with_the_epoch():
    """MONAI's trainer makes its GradScaler in run(); a resumed AMP run started again from the initial scale."""

    def trainer(scale: float) -> Engine:
        engine = Engine(lambda engine, batch: None)
        engine.scaler = torch.amp.GradScaler("cpu", init_scale=scale)  # what run() makes; enabled on the CPU
        return engine

    interrupted = trainer(scale=2.0**16)
    interrupted.run([0, 1], max_epochs=2)
    interrupted.scaler.scale(torch.ones(1))  # a step under AMP, after which the run had backed off to 256
    interrupted.scaler.update(new_scale=256.0)
    saved = TrainerState(interrupted).state_dict()
    resumed = trainer(scale=2.0**16)
    TrainerState(resumed).load_state_dict(saved)
    assert resumed.scaler.get_scale() == 256.0 and resumed.state.epoch == 2 and resumed.state.iteration == 4
    no_amp = Engine(lambda engine, batch: None)  # a run without AMP has no scaler, and saves no scale
    TrainerState(no_amp).load_state_dict(TrainerState(interrupted).state_dict())
    assert TrainerState(no_amp).state_dict()["scaler"] == {}


def test_resuming_with_another_setup_is_refused(cohort, tmp_path):
    run(pretrain_workflow(cohort, tmp_path, epochs=1))
    with pytest.raises(Exception) as error:
        run(pretrain_workflow(cohort, tmp_path, epochs=2, resume=True, embed_dim=64))
    assert "another network_config" in str(user_error(error.value))


#: each setting of the model input (prepare_image), with the value that is not its default and its refusal of a typo
INPUT_SETTINGS = {
    "intensity_scaling": (
        "display_range",
        "window",
        'intensity_scaling: is \'window\', not an intensity scaling (use "breast_percentiles" or "display_range")',
    ),
    "field_of_view": ("image", "whole", 'field_of_view: is \'whole\', not a field of view (use "breast" or "image")'),
}


def cached_inputs(cache_dir: Path, paths: list) -> dict[tuple[str, str], int]:
    """How many of ``paths`` the cache in ``cache_dir`` holds under each (intensity_scaling, field_of_view)."""
    return {
        (scaling, view): sum(
            PreprocessedCache(cache_dir, SIZE, intensity_scaling=scaling, field_of_view=view).entry(path).is_file()
            for path in paths
        )
        for scaling in INTENSITY_SCALINGS
        for view in FIELDS_OF_VIEW
    }


@pytest.mark.parametrize("setting", INPUT_SETTINGS)
def test_pretraining_under_another_model_input_reads_its_images_so_and_records_it(cohort, tmp_path, setting):
    """The readability check fills, and the datasets read, the cache entries of the run's intensity scaling and
    field of view, none of the defaults'; the checkpoint says so, for evaluations to read images as it was trained."""
    cache_dir, value = tmp_path / "cache", INPUT_SETTINGS[setting][0]
    run(pretrain_workflow(cohort, tmp_path, epochs=1, cache_dir=str(cache_dir), **{setting: value}))

    pretrained = load_pretrained(tmp_path / "models" / "pretrained.pt")
    recorded = tuple({"intensity_scaling": "breast_percentiles", "field_of_view": "breast", setting: value}.values())
    assert (pretrained.intensity_scaling, pretrained.field_of_view) == recorded
    paths = [record["path"] for record in cohort_records(cohort)]
    expected = {
        (scaling, view): len(paths) if (scaling, view) == recorded else 0
        for scaling in INTENSITY_SCALINGS
        for view in FIELDS_OF_VIEW
    }
    assert cached_inputs(cache_dir, paths) == expected


def test_a_record_older_than_an_input_setting_means_the_one_there_was(tmp_path):
    """pretrained.pt written before intensity_scaling and field_of_view were recorded was trained on breast
    percentiles of the breast's crop: it loads so, resumes a run of those, and refuses a run of another."""
    space = select_fields(["view"])
    network = MetadataNet("mammo_cnn", {"view": space.num_classes("view")}, embed_dim=8, matching_dim=4)
    old = CheckpointInfo(network, space, SIZE).state_dict()
    del old["intensity_scaling"], old["field_of_view"]
    torch.save({"network": network.state_dict(), "info": old}, tmp_path / "pretrained.pt")

    pretrained = load_pretrained(tmp_path / "pretrained.pt")

    assert (pretrained.intensity_scaling, pretrained.field_of_view) == ("breast_percentiles", "breast")
    CheckpointInfo(network, space, SIZE).load_state_dict(old)  # a resume of the same input
    for setting, (value, _, _) in INPUT_SETTINGS.items():
        with pytest.raises(MammoXAIError, match=f"made with another {setting} than this run's"):
            CheckpointInfo(network, space, SIZE, **{setting: value}).load_state_dict(old)


@pytest.mark.parametrize("setting", INPUT_SETTINGS)
def test_resuming_under_another_model_input_is_refused_naming_it(cohort, tmp_path, setting):
    run(pretrain_workflow(cohort, tmp_path, epochs=1))
    models = {path.name: path.read_bytes() for path in (tmp_path / "models").iterdir()}
    with pytest.raises(Exception) as error:
        run(pretrain_workflow(cohort, tmp_path, epochs=2, resume=True, **{setting: INPUT_SETTINGS[setting][0]}))
    assert f"the checkpoint was made with another {setting} than this run's" in str(user_error(error.value))
    assert {path.name: path.read_bytes() for path in (tmp_path / "models").iterdir()} == models  # no epoch 2


@pytest.mark.parametrize("setting", INPUT_SETTINGS)
def test_an_unknown_model_input_setting_is_refused_before_any_image_is_read(cohort, tmp_path, setting):
    """A manifest with damaged images would be refused for them, had the check come after the images were read."""
    _, typo, expected = INPUT_SETTINGS[setting]
    overrides = {**damaged_files(cohort, tmp_path), setting: typo, "cache_dir": str(tmp_path / "c")}
    with pytest.raises(Exception) as error:
        run(pretrain_workflow(cohort, tmp_path, **overrides))
    assert str(user_error(error.value)) == expected
    assert not (tmp_path / "c").exists() and not (tmp_path / "models").exists()


@pytest.mark.parametrize("setting", INPUT_SETTINGS)
def test_both_pretraining_configs_check_the_model_input_before_claiming_a_folder(setting):
    """multi_gpu_pretrain.json restates initialize, so it must name the checks too."""
    for configs in (["pretrain.json"], ["pretrain.json", "multi_gpu_pretrain.json"]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / name) for name in configs])
        initialize = parser["initialize"]
        assert initialize.index(f"@{setting}_check") < initialize.index("@checkpoint_folder"), configs


@pytest.mark.parametrize("setting", INPUT_SETTINGS)
def test_an_unknown_model_input_setting_is_one_line_from_monai_bundle_run(cohort, tmp_path, setting):
    _, typo, expected = INPUT_SETTINGS[setting]
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/pretrain.json",
        "--dataset_dir", str(cohort / "studies"), "--ckpt_dir", str(tmp_path / "models"),
        "--output_dir", str(tmp_path / "logs"), "--cache_dir", str(tmp_path / "cache"), f"--{setting}", typo,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # MONAI's own warning may come first
    assert result.stderr.strip().splitlines()[-1] == f"error: {expected}"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "models").exists()


def test_resuming_on_another_split_is_refused_naming_the_seed_and_val_fraction_to_pass(cohort, tmp_path):
    run(pretrain_workflow(cohort, tmp_path, epochs=1))
    models = {path.name: path.read_bytes() for path in (tmp_path / "models").iterdir()}
    with pytest.raises(Exception) as error:
        run(pretrain_workflow(cohort, tmp_path, epochs=2, resume=True, seed=7, val_fraction=0.5))
    message = str(user_error(error.value))
    assert "seed 0 and val_fraction 0.2" in message and "resume with --seed 0 --val_fraction 0.2" in message
    assert {path.name: path.read_bytes() for path in (tmp_path / "models").iterdir()} == models  # no epoch 2


def unknown_field(cohort: Path, tmp_path: Path) -> dict:
    return {"fields": {"view": 1.0, "colour": 1.0}}


def unknown_backbone(cohort: Path, tmp_path: Path) -> dict:
    return {"backbone": "vgg16"}


def missing_file(cohort: Path, tmp_path: Path) -> dict:
    records = cohort_records(cohort)
    manifest = write_manifest([*records, missing_image(records[0], tmp_path)], tmp_path / "manifest.csv")
    return {"manifest": str(manifest)}


def missing_image(record: dict, folder: Path) -> dict:
    """A manifest record of ``record``'s patient whose file does not exist."""
    return dict(record, path=str(folder / "gone.dcm"), image_id="gone", sop_uid="1.2.3.0")


def damaged_images(record: dict, folder: Path) -> list[dict]:
    """Two manifest records of ``record``'s patient whose files cannot be read: a truncated DICOM and a text file."""
    truncated, text = folder / "truncated.dcm", folder / "notes.dcm"
    data = Path(record["path"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text.write_text("not an image")
    return [
        dict(record, path=str(truncated), image_id="truncated", sop_uid="1.2.3.1"),
        dict(record, path=str(text), image_id="notes", sop_uid="1.2.3.2"),
    ]


def damaged_files(cohort: Path, tmp_path: Path) -> dict:
    records = cohort_records(cohort)
    return {"manifest": str(write_manifest([*records, *damaged_images(records[0], tmp_path)], tmp_path / "m.csv"))}


def field_absent_everywhere(cohort: Path, tmp_path: Path) -> dict:
    manifest = write_manifest([dict(record, kvp=None) for record in cohort_records(cohort)], tmp_path / "manifest.csv")
    return {"manifest": str(manifest)}


def absent_gpu(cohort: Path, tmp_path: Path) -> dict:
    return {"device": "cuda:99"}


def grid_of_three_sides(cohort: Path, tmp_path: Path) -> dict:
    return {"image_size": [64, 64, 3]}


def output_dir_is_a_file(cohort: Path, tmp_path: Path) -> dict:
    (tmp_path / "logs.txt").write_text("a file where the logs should go")
    return {"output_dir": str(tmp_path / "logs.txt" / "run")}


def ckpt_dir_is_a_file(cohort: Path, tmp_path: Path) -> dict:
    (tmp_path / "models.txt").write_text("a file where the checkpoints should go")
    return {"ckpt_dir": str(tmp_path / "models.txt")}


@pytest.mark.parametrize(
    "bad_input, message",
    [
        (unknown_field, r"fields: names \['colour'\]"),
        (unknown_backbone, r"backbone 'vgg16': is not a known backbone .*resnet18"),
        (missing_file, r"listed images do not exist: .*gone\.dcm"),
        (damaged_files, r"2 listed images cannot be read: .*truncated\.dcm \(has .*pixel data.*notes\.dcm \(is not"),
        (field_absent_everywhere, r"field 'kvp': is absent from all \d+ training images"),
        (absent_gpu, r"device 'cuda:99': asks for (a CUDA GPU, and this machine has none|CUDA GPU 99)"),
        (grid_of_three_sides, r"image_size: is \[64, 64, 3\], not a grid size"),
        (output_dir_is_a_file, r"output_dir .*logs\.txt: is a file, not a folder"),
        (ckpt_dir_is_a_file, r"ckpt_dir .*models\.txt: is a file, not a folder"),
    ],
)
def test_bad_input_stops_the_bundle_before_training(cohort, tmp_path, bad_input, message):
    with pytest.raises(Exception) as error:
        run(pretrain_workflow(cohort, tmp_path, **bad_input(cohort, tmp_path)))
    assert re.search(message, str(user_error(error.value))), error.value
    assert not (tmp_path / "models").exists()


def test_multi_gpu_config_trains_with_two_processes_under_torchrun(cohort, tmp_path):
    """DistributedDataParallel on the CPU (gloo): each process gets half the batches, rank 0 writes the models;
    each checks half the images, and both learn of every unreadable one."""
    records = cohort_records(cohort)
    damaged = damaged_images(records[0], tmp_path)  # the last two records: one for each process
    arguments = {
        "manifest": write_manifest([*records, *damaged], tmp_path / "manifest.csv"),
        "strict": False,
        "ckpt_dir": tmp_path / "models",
        "output_dir": tmp_path / "logs",
        "cache_dir": cohort / "cache",
        "epochs": 1,
        **TINY,
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run", "--config_file", "['configs/pretrain.json','configs/multi_gpu_pretrain.json']",
        *[part for key, value in arguments.items() for part in (f"--{key}", str(value).replace(" ", ""))],
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=BUNDLE, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert (tmp_path / "models" / "pretrained.pt").is_file()
    assert {path.name for path in (tmp_path / "logs").glob("*.log")} == {"pretrain_rank0.log", "pretrain_rank1.log"}
    for rank in (0, 1):
        log = (tmp_path / "logs" / f"pretrain_rank{rank}.log").read_text()
        assert f"{len(records)} of {len(records) + 2} listed images read" in log
        assert ("Saved checkpoint" in log) is (rank == 0)  # rank 1 saves nothing and says so
    config = json.loads((CONFIGS / "pretrain.json").read_text())  # the handlers multi_gpu_pretrain.json disables
    disabled = [config["train"]["handlers"][3], config["train"]["handlers"][4], config["validate"]["handlers"][1]]
    assert [handler["_target_"] for handler in disabled] == [
        "StatsHandler",
        "TensorBoardStatsHandler",
        "TensorBoardStatsHandler",
    ]
    for events in (tmp_path / "logs").glob("events.out.tfevents.*"):  # only rank 0 writes TensorBoard files
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        assert accumulator.Tags()["scalars"], f"{events.name} holds no scalar"
    train, _ = split_by_patient(cohort_records(cohort), select_fields(["view"]), val_fraction=0.2, seed=0)
    state = torch.load(tmp_path / "models" / "pretrain_checkpoint_epoch=1.pt", weights_only=True)
    assert state["trainer"]["epoch_length"] == math.ceil(math.ceil(len(train) / 8) / 2)
    assert "val_mean_acc" in (tmp_path / "logs" / "pretrain_rank0.log").read_text()
