"""The datastore index stays whole and loses no change while several processes write it at once.

MONAI Label trains in a subprocess that builds the app, and so the datastore, again: building it reconciles the
index with the studies folder and writes it back while the server keeps writing it (labels, scores). Real
processes here: two servers' worth of writers and a process that starts like a training run, again and again,
each time finding an image the index does not list yet, so that it writes too.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
from pathlib import Path

import pytest

from mammoxai.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "mammography"))
from lib.datastore import MammogramDatastore  # noqa: E402

CLASSES = ["normal", "benign", "malignant"]
UPDATES = 60
TRAINING_STARTS = 12


@pytest.fixture
def studies(tmp_path) -> Path:
    synthesize(tmp_path / "studies", patients=1, seed=5, size=128, prior_fraction=0.0)
    open_datastore(tmp_path / "studies")  # writes the first index
    return tmp_path / "studies"


def open_datastore(studies: Path) -> MammogramDatastore:
    return MammogramDatastore(str(studies), class_names=CLASSES, auto_reload=False)


def count_in_image_info(studies: Path, image_id: str, key: str, ready: multiprocessing.Barrier) -> None:
    """A server process storing a score: ``info[key]`` of one image set to 0, 1, ... UPDATES - 1, starting once
    every process has loaded the index."""
    datastore = open_datastore(studies)
    ready.wait()
    for value in range(UPDATES):
        datastore.update_image_info(image_id, {key: value})


def start_training_runs(studies: Path, source: Path, ready: multiprocessing.Barrier) -> None:
    """What each training subprocess does first: build the datastore, here after a new image arrived unlisted."""
    ready.wait()
    for run in range(TRAINING_STARTS):
        shutil.copyfile(source, studies / f"arrived_{run}.dcm")
        open_datastore(studies)


def index_on_disk(studies: Path) -> dict:
    """The index file as it is, parsed without reconciling it with the folder (which would repair what was lost)."""
    return json.loads((studies / "datastore_v2.json").read_text())


def run_together(*processes: multiprocessing.Process) -> None:
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0, f"{process.name} failed"


def test_concurrent_writers_and_training_starts_lose_no_change(studies):
    first, second = sorted(path.stem for path in studies.glob("P*.dcm"))[:2]
    fork = multiprocessing.get_context("fork")
    ready = fork.Barrier(3)

    run_together(
        fork.Process(target=count_in_image_info, args=(studies, first, "first_count", ready), name="first writer"),
        fork.Process(target=count_in_image_info, args=(studies, second, "second_count", ready), name="second writer"),
        fork.Process(target=start_training_runs, args=(studies, studies / f"{first}.dcm", ready), name="training"),
    )

    objects = index_on_disk(studies)["objects"]
    assert objects[first]["image"]["info"]["first_count"] == UPDATES - 1
    assert objects[second]["image"]["info"]["second_count"] == UPDATES - 1
    assert {f"arrived_{run}" for run in range(TRAINING_STARTS)} <= set(objects)


def test_a_reader_never_sees_a_partial_index_while_processes_write_it(studies):
    first, second = sorted(path.stem for path in studies.glob("P*.dcm"))[:2]
    fork = multiprocessing.get_context("fork")
    ready = fork.Barrier(2)
    writers = [
        fork.Process(target=count_in_image_info, args=(studies, first, "first_count", ready), name="first writer"),
        fork.Process(target=start_training_runs, args=(studies, studies / f"{second}.dcm", ready), name="training"),
    ]
    for writer in writers:
        writer.start()

    reads = 0
    while any(writer.is_alive() for writer in writers) or reads == 0:
        assert set(index_on_disk(studies)) >= {"name", "objects"}  # no lock taken: what any other reader sees
        reads += 1
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0, f"{writer.name} failed"

    assert reads > 1
    assert not list(studies.glob(".datastore_v2.json.*.tmp"))  # no temporary file left behind


def test_a_change_made_by_another_process_is_seen_by_the_next_step_here(studies):
    image = sorted(path.stem for path in studies.glob("P*.dcm"))[0]
    server = open_datastore(studies)
    training = open_datastore(studies)

    training.update_image_info(image, {"written_by": "training"})
    server.update_image_info(image, {"score": 0.5})

    info = index_on_disk(studies)["objects"][image]["image"]["info"]
    assert info["written_by"] == "training" and info["score"] == 0.5
    assert server.get_image_info(image)["written_by"] == "training"


def save_final_label(datastore: MammogramDatastore, image_id: str, folder: Path) -> None:
    label = folder / "label.json"
    label.write_text(json.dumps({"class": "benign", "annotator": "t", "timestamp": "2024-05-01T09:30:00+00:00"}))
    datastore.save_label(image_id, str(label), "final", {})


def test_a_saved_label_is_indexed_again_when_the_index_is_lost(studies, tmp_path):
    image = sorted(path.stem for path in studies.glob("P*.dcm"))[0]
    save_final_label(open_datastore(studies), image, tmp_path)

    (studies / "datastore_v2.json").unlink()  # deleted, or restored from a backup older than the label
    reopened = open_datastore(studies)

    assert reopened.get_labeled_images("final") == [image]
    assert json.loads(Path(reopened.get_label_uri(image, "final")).read_text())["class"] == "benign"


def test_a_label_survives_its_image_leaving_the_folder_and_coming_back(studies, tmp_path):
    image = sorted(path.stem for path in studies.glob("P*.dcm"))[0]
    save_final_label(open_datastore(studies), image, tmp_path)

    (studies / f"{image}.dcm").rename(tmp_path / "away.dcm")  # a share unmounted, a file moved by hand
    assert image not in open_datastore(studies).list_images()
    (tmp_path / "away.dcm").rename(studies / f"{image}.dcm")

    assert open_datastore(studies).get_labeled_images("final") == [image]
