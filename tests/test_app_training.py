"""The active-learning endpoints of the app over HTTP: next case, training on corrections, batch inference."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from clinician import save_final, served_checkpoint, simulator
from dicom_factory import write_ct_dicom, write_mammo_dicom

from mammoxai.data.synth import synthesize

pytest_plugins = ["server_fixture"]

LABEL = {"annotator": "dr.test", "timestamp": "2024-05-01T09:30:00+00:00"}


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    """A server of its own (its labels and trained weights must not leak into the shared one), tiny images."""
    root = tmp_path_factory.mktemp("loop_server")
    synthesize(root / "synth", patients=3, seed=3, size=128)
    truth, _ = simulator.split_studies(root / "synth", root / "studies")
    bundle = simulator.make_bundle(root / "bundle", (64, 64), seed=0)
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    server = simulator.demo.ServerProcess(
        root / "studies",
        port=simulator._free_port(),
        conf={"bundle": str(bundle), "device": "cpu"},
        log=root / "server.log",
        env=env,
    )
    with server:
        yield server.url, bundle, truth


def image_info(url: str, image_id: str) -> dict:
    return requests.get(f"{url}/datastore/image/info", params={"image": image_id}, timeout=30).json()


# A test that needs final labels saves them itself: run alone (-k, a rerun of the failed tests) it finds none saved
# by the tests before it, and the guard answers its training request with 422, "0 final label(s)".


def save_true_classes_of_every_other_image(url: str, truth: dict[str, str]) -> list[str]:
    """The final labels of every other image (images of all three patients), their true classes; their ids. The
    other images stay unlabeled, for the scoring and batch-inference tests."""
    corrected = sorted(truth)[::2]
    for image_id in corrected:
        assert save_final(url, image_id, truth[image_id]).status_code == 200
    return corrected


def save_a_class_per_patient(url: str, truth: dict[str, str]) -> None:
    """Every image's final label: normal for the first patient's images, benign for the others'."""
    patients = sorted({image_id.split("_")[0] for image_id in truth})
    for image_id in truth:
        assert save_final(url, image_id, "normal" if image_id.startswith(patients[0]) else "benign").status_code == 200


def training_lock_is_free(bundle: Path) -> bool:
    """Whether no process holds the lock a training run holds on the bundle's weights while it runs."""
    with open(bundle / "models" / ".train.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True


def scored_with(url: str, image_id: str) -> str:
    """The checkpoint of the uncertainty score the datastore listing shows for ``image_id``."""
    index = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()
    return index["objects"][image_id]["image"]["info"]["uncertainty"]["checkpoint"]


def test_unknown_strategy_is_404_listing_the_strategies(loop_server):
    url, _, _ = loop_server
    response = requests.post(f"{url}/activelearning/cleverest", json={}, timeout=60)

    assert response.status_code == 404, response.text
    assert "'cleverest'" in response.json()["detail"] and "uncertainty" in response.json()["detail"]


def test_unknown_trainer_is_404_listing_the_trainers_and_starts_nothing(loop_server):
    url, bundle, _ = loop_server
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns

    response = requests.post(f"{url}/train/segmentation", json={"epochs": 1}, timeout=60)

    assert response.status_code == 404, response.text
    assert "trainer 'segmentation'" in response.json()["detail"] and "mammoxai" in response.json()["detail"]
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns == before


def test_train_without_final_labels_is_422_saying_how_to_label(loop_server):
    url, bundle, _ = loop_server
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns

    response = requests.post(f"{url}/train/mammoxai", json={"epochs": 1}, timeout=60)

    assert response.status_code == 422, response.text
    assert "tag=final" in response.json()["detail"]
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns == before


def test_uncertainty_strategy_proposes_the_most_uncertain_unlabeled_image(loop_server):
    url, _, truth = loop_server

    case = requests.post(f"{url}/activelearning/uncertainty", json={}, timeout=300).json()

    scores = {image_id: image_info(url, image_id)["uncertainty"] for image_id in truth}
    assert case["id"] in truth
    assert case["score"] == pytest.approx(max(s["score"] for s in scores.values()))
    assert case["uncertainty"] == scores[case["id"]]  # MONAI Label adds the stored image info
    assert len({s["checkpoint"] for s in scores.values()}) == 1  # all scored by the served weights
    assert {s["measure"] for s in scores.values()} == {"entropy"}


@pytest.mark.parametrize(
    "body, words",
    [
        ({"epochs": 0}, ["epochs: is 0, not a positive whole number"]),
        ({"epochs": 1, "learning_rate": "fast"}, ["learning_rate: is 'fast'"]),
        ({"epochs": 1, "accept": "always"}, ["accept 'always'", "not_worse"]),
        ({"epochs": 1, "strict": "maybe"}, ["strict: is 'maybe', not a boolean"]),
        ({"epoch": 2, "lr": 1e-05}, ["sets ['epoch', 'lr'], which are not options", "'epochs'", "'learning_rate'"]),
    ],
    ids=["no_epochs", "learning_rate_a_word", "unknown_policy", "strict_not_a_boolean", "misspelt_options"],
)
def test_train_request_no_run_can_use_is_422_before_any_run(loop_server, body, words):
    url, bundle, _ = loop_server
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns

    response = requests.post(f"{url}/train/mammoxai", json=body, timeout=60)

    assert response.status_code == 422, response.text
    assert all(word in response.json()["detail"] for word in words), response.json()["detail"]
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns == before


def test_info_advertises_the_training_options_a_run_takes_when_the_request_sets_none(loop_server):
    """``/info`` said epochs 5 while a request without epochs ran train.json's."""
    url, bundle, _ = loop_server
    recipe = json.loads((bundle / "configs" / "train.json").read_text())

    config = requests.get(f"{url}/info/", timeout=30).json()["trainers"]["mammoxai"]["config"]

    options = ["epochs", "batch_size", "learning_rate", "weight_decay", "val_fraction", "num_workers", "seed"]
    assert config == {
        **{key: recipe[key] for key in options},
        "strict": False,
        "accept": ["not_worse", "valid"],
    }


def test_train_every_model_with_a_body_no_run_can_use_is_422_before_any_run(loop_server):
    url, bundle, _ = loop_server
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns

    # MONAI Label's deprecated POST /train/ (its client's train_start without a model) trains each model
    response = requests.post(f"{url}/train/", json={"mammoxai": {"epochs": 0}}, timeout=60)

    assert response.status_code == 422, response.text
    assert "epochs: is 0, not a positive whole number" in response.json()["detail"]
    assert requests.get(f"{url}/train/", timeout=30).status_code == 404  # no run was started
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns == before


def test_train_on_final_labels_of_one_class_is_422_before_any_run(loop_server):
    url, bundle, truth = loop_server
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns
    for image_id in sorted(truth)[::2]:  # the next test labels the same images with their true classes
        assert save_final(url, image_id, "normal").status_code == 200

    response = requests.post(f"{url}/train/mammoxai", json={"epochs": 1}, timeout=60)

    assert response.status_code == 422, response.text
    assert "two classes" in response.json()["detail"] and "class ['normal']" in response.json()["detail"]
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns == before


def test_training_on_final_labels_serves_new_weights_and_refuses_a_second_run(loop_server):
    url, bundle, truth = loop_server
    checkpoint = bundle / "models" / "model.pt"
    corrected = save_true_classes_of_every_other_image(url, truth)
    served_before = served_checkpoint(url, sorted(truth)[1])
    before = checkpoint.stat().st_mtime_ns
    info_before = requests.get(f"{url}/info/", timeout=30).json()

    started = requests.post(
        f"{url}/train/mammoxai", json={"epochs": 1, "accept": "valid", "num_workers": 0}, timeout=60
    )
    second = requests.post(f"{url}/train/mammoxai", json={"epochs": 1}, timeout=60)
    task = simulator.wait_for_training(url, timeout=300)

    assert started.status_code == 200, started.text
    assert second.status_code == 409, second.text
    assert "already running" in second.json()["detail"]
    assert task["status"] == "DONE", list(task.get("details", []))
    assert checkpoint.stat().st_mtime_ns != before
    stats = json.loads((bundle / "models" / "train_stats.json").read_text())
    assert stats["accepted"] is True and stats["corrections"] == len(corrected)
    trained_with = torch.load(checkpoint, weights_only=True)["grid"]
    assert stats["overrides"]["intensity_scaling"] == trained_with["intensity_scaling"] == "breast_percentiles"
    assert stats["overrides"]["field_of_view"] == trained_with["field_of_view"] == "breast"  # the served model's
    assert served_checkpoint(url, sorted(truth)[1]) != served_before
    case = requests.post(f"{url}/activelearning/uncertainty", json={}, timeout=300).json()
    assert case["id"] not in corrected  # labelled images are never proposed again
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert info["version"] == info_before["version"]  # the app's: the served weights are named apart
    served = info["models"]["mammoxai"]["checkpoint"]
    assert served["id"] != info_before["models"]["mammoxai"]["checkpoint"]["id"]
    assert served["id"] == case["uncertainty"]["checkpoint"]  # ranked by the new weights
    assert served["modified"] == served_checkpoint(url, sorted(truth)[1])


@pytest.mark.parametrize("enqueue", [False, True], ids=["now", "enqueued"])
def test_train_while_a_run_the_server_does_not_know_holds_the_weights_is_409(loop_server, enqueue):
    url, bundle, truth = loop_server
    save_true_classes_of_every_other_image(url, truth)  # what a run needs, so that only the lock can refuse it
    runs = lambda: requests.get(f"{url}/train/", params={"all": "true"}, timeout=30).json()  # noqa: E731
    last = runs()  # 404 {"detail": ...} before any run
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns

    with open(bundle / "models" / ".train.lock", "w") as lock:  # what a run started before a restart holds
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        response = requests.post(
            f"{url}/train/mammoxai", params={"enqueue": str(enqueue).lower()}, json={"epochs": 1}, timeout=60
        )

    assert response.status_code == 409, response.text
    assert "is being trained by another run" in response.json()["detail"]
    assert "before the server restarted" in response.json()["detail"]
    assert runs() == last  # no run was started
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns == before


def test_scores_written_by_a_background_scoring_run_are_served(loop_server):
    url, bundle, truth = loop_server
    stat = (bundle / "models" / "model.pt").stat()
    served = f"{stat.st_mtime_ns}-{stat.st_size}"  # the trained weights: every stored score is stale
    unlabeled = sorted(set(truth) - set(sorted(truth)[::2]))

    started = requests.post(f"{url}/scoring/uncertainty", json={}, timeout=60)  # MONAI Label runs it in a process
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + 120
    while requests.get(f"{url}/scoring/", timeout=30).json().get("status") not in ("DONE", "ERROR"):
        assert time.monotonic() < deadline, "the scoring run did not end"
        time.sleep(0.5)
    while (stored := {scored_with(url, image_id) for image_id in unlabeled}) != {served}:
        assert time.monotonic() < deadline, f"the server still shows scores of {stored}, not of {served}"
        time.sleep(0.5)


def test_a_known_scoring_method_passes_the_guard_and_scores_every_image(loop_server):
    url, _, truth = loop_server

    response = requests.post(f"{url}/scoring/uncertainty", params={"run_sync": "true"}, json={}, timeout=600)

    assert response.status_code == 200, response.text
    assert '"scored"' in response.text and '"skipped"' in response.text, response.text  # the app's scoring ran
    assert all(image_info(url, image_id).get("uncertainty") for image_id in truth)


def test_batch_infer_stores_heatmaps_under_the_prediction_tag_not_as_corrections(loop_server):
    url, _, truth = loop_server
    unlabeled = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()
    response = requests.post(
        f"{url}/batch/infer/mammoxai",
        params={"images": "unlabeled", "run_sync": "true"},
        json={"device": "cpu", "multi_gpu": False},
        timeout=600,
    )

    assert response.status_code == 200, response.text
    results = response.json()
    assert results and all("predicted_class" in result for result in results.values())
    image_id = sorted(results)[0]
    heatmap = requests.get(f"{url}/datastore/label", params={"label": image_id, "tag": "prediction"}, timeout=30)
    assert heatmap.status_code == 200 and heatmap.content.startswith(b"NRRD")
    info = requests.get(f"{url}/datastore/label/info", params={"label": image_id, "tag": "prediction"}, timeout=30)
    assert info.json()["params"]["predicted_class"] == results[image_id]["predicted_class"]
    after = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()
    finals = lambda index: {k for k, v in index["objects"].items() if "final" in v.get("labels", {})}  # noqa: E731
    assert finals(after) == finals(unlabeled)


def test_label_with_a_box_outside_the_image_is_422_and_not_stored(loop_server):
    url, _, truth = loop_server
    image_id = sorted(truth)[-1]
    content = json.dumps({**LABEL, "class": "benign", "lesions": [{"type": "box", "box": [1, 1, 5000, 20]}]}).encode()

    response = requests.put(
        f"{url}/datastore/label",
        params={"image": image_id, "tag": "final"},
        files={"label": ("l.json", content)},
        timeout=60,
    )

    assert response.status_code == 422, response.text
    assert "outside" in response.json()["detail"]
    assert "final" not in requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"][
        image_id
    ].get("labels", {})


def test_a_run_that_fails_leaves_the_served_model_and_says_why_in_train_status_and_info(loop_server):
    url, bundle, truth = loop_server
    checkpoint = bundle / "models" / "model.pt"
    save_a_class_per_patient(url, truth)  # the validation split, one patient, holds one class
    before = checkpoint.read_bytes()

    started = requests.post(f"{url}/train/mammoxai", json={"epochs": 1, "num_workers": 0}, timeout=60)
    task = simulator.wait_for_training(url, timeout=300)

    assert started.status_code == 200, started.text  # the guard cannot know the split: the run finds out
    assert task["status"] == "ERROR" and "validation AUC cannot judge new weights" in task["details"][-1]
    assert checkpoint.read_bytes() == before
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["mammoxai"]
    assert stats["accepted"] is False and "the run failed" in stats["reason"] and "validation AUC" in stats["reason"]


def test_a_stopped_run_keeps_the_served_model_says_it_did_not_end_and_leaves_no_scratch_files(loop_server):
    url, bundle, truth = loop_server
    temporary = lambda: set(Path(tempfile.gettempdir()).glob("mammoxai-train-*"))  # noqa: E731
    before = temporary()
    served = (bundle / "models" / "model.pt").read_bytes()
    params = {"num_workers": 0, "accept": "valid"}
    save_a_class_per_patient(url, truth)
    assert requests.post(f"{url}/train/mammoxai", json={**params, "epochs": 500}, timeout=60).status_code == 200
    deadline = time.monotonic() + 120
    while not any("Epoch[" in line for line in requests.get(f"{url}/train/", timeout=30).json().get("details", [])):
        assert time.monotonic() < deadline, "the run never started an epoch"
        time.sleep(0.5)

    assert requests.delete(f"{url}/train/", timeout=60).json()["status"] == "STOPPED"  # kills the run's process
    assert training_lock_is_free(bundle)  # answered once the killed process has exited, not while it still held it
    assert (bundle / "models" / "model.pt").read_bytes() == served
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["mammoxai"]  # not the run before's
    assert stats["accepted"] is False and "has not ended" in stats["reason"] and "stopped" in stats["reason"]
    assert requests.post(f"{url}/train/mammoxai", json={**params, "epochs": 1}, timeout=60).status_code == 200
    task = simulator.wait_for_training(url, timeout=300)

    assert task["status"] == "DONE", task.get("details")
    assert not (bundle / "eval" / "train_run").exists()
    assert temporary() == before


def final_labelled(url: str) -> set[str]:
    """Ids of the images the datastore lists with a final label."""
    objects = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    return {image_id for image_id, entry in objects.items() if "final" in entry.get("labels", {})}


def write_blank(path: Path) -> Path:
    """A mammogram of an exposure with nothing in it: no breast is found in it."""
    return write_mammo_dicom(path, np.zeros((64, 64), dtype=np.uint16))


@pytest.mark.parametrize(
    "replace, words",
    [(write_ct_dicom, ["is not a mammogram", "CT"]), (write_blank, ["no breast was found"])],
    ids=["by_a_ct", "by_an_image_of_no_breast"],
)
def test_a_corrected_image_whose_file_was_replaced_is_left_out_naming_it_and_the_run_trains_on_the_rest(
    loop_server, replace, words
):
    """A label saved before its image's file was replaced (or a pair copied in by hand) made every run fail: a CT's
    header refused the request with 422, an image of no breast ended the run in its log, naming the server's path."""
    url, bundle, truth = loop_server
    studies = bundle.parent / "studies"
    save_true_classes_of_every_other_image(url, truth)
    replaced = f"replaced_{replace.__name__}"
    source = studies / f"{sorted(truth)[0]}.dcm"
    upload = {"file": (source.name, source.read_bytes())}
    assert requests.put(f"{url}/datastore/image", params={"image": replaced}, files=upload, timeout=60).ok
    try:
        assert save_final(url, replaced, truth[sorted(truth)[0]]).status_code == 200
        corrected = final_labelled(url) - {replaced}  # the earlier tests' too
        replace(studies / f"{replaced}.dcm")

        started = requests.post(
            f"{url}/train/mammoxai", json={"epochs": 1, "accept": "valid", "num_workers": 0}, timeout=60
        )
        task = simulator.wait_for_training(url, timeout=300) if started.ok else {}
    finally:
        requests.delete(f"{url}/datastore/image", params={"id": replaced}, timeout=60)
        deadline = time.monotonic() + 30
        while replaced in final_labelled(url) and time.monotonic() < deadline:  # the folder watcher unlists it
            time.sleep(0.5)

    assert started.status_code == 200, started.text
    assert task["status"] == "DONE", list(task.get("details", []))
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["mammoxai"]
    assert stats["accepted"] is True and stats["corrections"] == len(corrected), stats
    assert list(stats["left_out"]) == [replaced], stats
    assert all(word in stats["left_out"][replaced] for word in words), stats
    assert str(studies) not in json.dumps(stats)
    assert any(f"image {replaced!r}" in line and words[0] in line for line in task["details"]), task["details"]
