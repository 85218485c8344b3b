"""The datastore index stays whole and loses no change while several processes write it at once.

MONAI Label trains in a subprocess that builds the app, and so the datastore, again: building it reconciles the
index with the studies folder and writes it back while the server keeps writing it (labels, scores). Real
processes here: two servers' worth of writers and a process that starts like a training run, again and again,
each time finding an image the index does not list yet, so that it writes too.

Within the server, requests read the index (``GET /datastore``, the train guard counting final labels, the
strategies) while the folder watcher's refresh rebuilds it. A read may land between any two lines of a refresh, and a
refresh between any two lines of a read: :func:`run_line_by_line` stops one thread before each line of datastore code
and runs the other there, so every such landing happens, every time.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from monailabel.datastore.local import LocalDatastore

from mammoxai.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "mammography"))
from lib.datastore import MammogramDatastore  # noqa: E402

CLASSES = ["normal", "benign", "malignant"]
UPDATES = 60
TRAINING_STARTS = 12
WRITES = 20


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


def test_a_deleted_image_leaves_the_index_at_once_and_its_id_can_be_uploaded_again(studies, tmp_path):
    """With the folder watched, LocalDatastore left the entry of a deleted image to the watcher's refresh."""
    datastore = MammogramDatastore(str(studies), class_names=CLASSES, auto_reload=True)
    datastore._observer.stop()  # the moment before the watcher's event: it must not be needed
    datastore._observer.join()
    upload = shutil.copyfile(sorted(studies.glob("P*.dcm"))[0], tmp_path / "upload.dcm")
    datastore.add_image("again", str(upload), {})
    save_final_label(datastore, "again", tmp_path)

    datastore.remove_image("again")

    assert "again" not in datastore.list_images()
    assert "again" not in index_on_disk(studies)["objects"]
    assert not (studies / "again.dcm").exists() and not (studies / "labels" / "final" / "again.json").exists()
    assert datastore.add_image("again", str(upload), {}) == "again"  # was 409: the id was still in use
    assert datastore.get_labeled_images("final") == []


@pytest.mark.parametrize("image_id", ["case1.dcm", "case1.dcm.v2"])
def test_an_image_whose_id_holds_an_image_suffix_keeps_its_id_and_label_when_the_index_is_lost(
    studies, tmp_path, image_id
):
    """LocalDatastore cut every ``.dcm`` out of the file name: ``case1.dcm.dcm`` was indexed again as ``case1``."""
    datastore = open_datastore(studies)
    datastore.add_image(image_id, str(shutil.copyfile(sorted(studies.glob("P*.dcm"))[0], tmp_path / "up.dcm")), {})
    save_final_label(datastore, image_id, tmp_path)

    (studies / "datastore_v2.json").unlink()
    reopened = open_datastore(studies)

    assert sorted(reopened.list_images()) == sorted([image_id, *(path.stem for path in studies.glob("P*.dcm"))])
    assert reopened.get_labeled_images("final") == [image_id]


def test_a_label_survives_its_image_leaving_the_folder_and_coming_back(studies, tmp_path):
    image = sorted(path.stem for path in studies.glob("P*.dcm"))[0]
    save_final_label(open_datastore(studies), image, tmp_path)

    (studies / f"{image}.dcm").rename(tmp_path / "away.dcm")  # a share unmounted, a file moved by hand
    assert image not in open_datastore(studies).list_images()
    (tmp_path / "away.dcm").rename(studies / f"{image}.dcm")

    assert open_datastore(studies).get_labeled_images("final") == [image]


DATASTORE_CODE = {inspect.getsourcefile(LocalDatastore), inspect.getsourcefile(MammogramDatastore)}


def run_line_by_line(body: Callable[[], object], between: Callable[[], object], wait: float = 5.0) -> int:
    """Run ``body`` in a thread that stops before each line of datastore code it runs (LocalDatastore's and ours, each
    pass of a loop included) while ``between`` runs once here; return how many stops there were. A stop is given up
    after ``wait`` seconds (``between`` waiting for a lock ``body`` holds): ``body`` goes on, ``between`` then too."""
    stopped, resume = threading.Semaphore(0), threading.Semaphore(0)
    finished: list[BaseException | None] = []
    serving = [True]  # emptied when ``between`` fails: ``body`` then runs on without stopping

    def trace(frame, event, arg):
        if frame.f_code.co_filename not in DATASTORE_CODE:
            return None
        if event == "line" and serving:
            stopped.release()
            resume.acquire(timeout=wait)
        return trace

    def run() -> None:
        sys.settrace(trace)
        try:
            body()
            finished.append(None)
        except BaseException as error:  # noqa: B036 - raised again in the test's thread
            finished.append(error)
        finally:
            sys.settrace(None)
            stopped.release()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    stops = 0
    while True:
        assert stopped.acquire(timeout=60), "the traced thread hangs"
        if finished:
            break
        try:
            between()
        except BaseException:
            serving.clear()
            raise
        finally:
            resume.release()
        stops += 1
    thread.join(60)
    if finished[0] is not None:
        raise finished[0]
    return stops


def labelled_datastore(studies: Path, folder: Path) -> tuple[MammogramDatastore, list[str]]:
    """The datastore of ``studies`` with a final label for each of its images, and the images' ids."""
    datastore = open_datastore(studies)
    images = sorted(datastore.list_images())
    for image in images:
        save_final_label(datastore, image, folder)
    return datastore, images


def read_everything(datastore: MammogramDatastore) -> dict:
    """What the server's readers ask of the index: the train guard, GET /datastore, the strategies, training."""
    return {
        "final": sorted(datastore.get_labeled_images("final")),
        "unlabeled": sorted(datastore.get_unlabeled_images("final")),
        "images": sorted(datastore.list_images()),
        "completed": datastore.status()["completed"],
        "datalist": len(datastore.datalist()),
        "json": sorted(datastore.json()["objects"]),
    }


def test_a_reader_sees_every_final_label_at_every_step_of_a_refresh(studies, tmp_path):
    """A clinician clicks Train while images are being copied into the studies folder: the refresh indexing them
    must not hide, even for a moment, the final labels the train guard counts."""
    datastore, images = labelled_datastore(studies, tmp_path)
    for copy in range(2):
        shutil.copyfile(studies / f"{images[0]}.dcm", studies / f"copied_{copy}.dcm")
    reads: list[dict] = []

    stops = run_line_by_line(datastore.refresh, lambda: reads.append(read_everything(datastore)))

    assert stops > 20  # the refresh ran line by line, with a read at each line
    incomplete = [read for read in reads if read["final"] != images or not set(images) <= set(read["images"])]
    assert not incomplete, f"{len(incomplete)} of {len(reads)} reads saw an incomplete index, e.g. {incomplete[0]}"
    assert all(read["completed"] == read["datalist"] == len(images) for read in reads)
    assert {"copied_0", "copied_1"} <= set(datastore.list_images())
    assert sorted(datastore.get_labeled_images("final")) == images


LOOPING_READERS = ("get_labeled_images", "get_unlabeled_images", "status")  # the others copy the index in C


def test_a_refresh_between_any_two_steps_of_a_read_neither_fails_it_nor_hides_labels(studies, tmp_path):
    """Each refresh here indexes an image copied in, or drops it again, changing the index's size while the read
    iterates it."""
    datastore, images = labelled_datastore(studies, tmp_path)
    copied = studies / "copied.dcm"
    refreshes = 0

    def copy_in_or_delete_and_refresh() -> None:
        nonlocal refreshes
        if copied.exists():
            copied.unlink()
        else:
            shutil.copyfile(studies / f"{images[0]}.dcm", copied)
        datastore.refresh()
        refreshes += 1

    for reader in ("get_labeled_images", "get_unlabeled_images", "list_images", "status", "datalist", "json"):
        read: list = []
        stops = run_line_by_line(lambda: read.append(getattr(datastore, reader)()), copy_in_or_delete_and_refresh)
        assert stops > (len(images) if reader in LOOPING_READERS else 0), reader  # a refresh at each pass of a loop
        if reader == "get_labeled_images":
            assert sorted(read[0]) == images
        elif reader == "status":
            assert read[0]["completed"] == len(images)
    assert refreshes > 6 and sorted(datastore.get_labeled_images("final")) == images


def test_changes_made_while_the_index_is_refreshed_are_kept(studies, tmp_path):
    """Saves and score updates from request threads while the watcher refreshes again and again: none is lost, in
    memory or in the index file."""
    datastore, images = labelled_datastore(studies, tmp_path)
    done = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for value in range(WRITES):
                shutil.copyfile(studies / f"{images[0]}.dcm", studies / f"copied_{value}.dcm")
                datastore.refresh()  # what the watcher does on the file created
                save_final_label(datastore, f"copied_{value}", tmp_path)
                datastore.update_image_info(images[1], {"count": value})
        except BaseException as error:  # noqa: B036 - raised again in the test's thread
            failures.append(error)
        finally:
            done.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    while not done.is_set():
        datastore.refresh()
        time.sleep(0.005)  # the lock is polled: leave the writer its turns
    writer.join(60)
    assert not failures, failures

    expected = set(images) | {f"copied_{value}" for value in range(WRITES)}
    assert set(datastore.get_labeled_images("final")) == expected
    assert datastore.get_image_info(images[1])["count"] == WRITES - 1
    objects = index_on_disk(studies)["objects"]
    assert {image for image, entry in objects.items() if "final" in entry["labels"]} == expected
    assert objects[images[1]]["image"]["info"]["count"] == WRITES - 1
