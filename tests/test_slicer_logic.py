"""The Slicer panel's logic (``slicer_extension/MammoXAI/MammoXAILib``) driven end to end against the real server.

The logic is plain Python, so it runs here exactly as inside Slicer: a case is picked by the server's strategy
and downloaded, inferred, corrected with a lesion box that goes through a volume's RAS-to-IJK matrix, saved as
the final label and read back; training is started when the server offers it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from mammoxai.io import read_mammogram
from mammoxai.io.heatmap import read_heatmap_nrrd
from mammoxai.schema import validate_label, validate_prediction

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MammoXAI"))
from loopback_servers import Proxy, StandInServer, json_body  # noqa: E402
from MammoXAILib import (  # noqa: E402
    MammoXAIClient,
    MammoXAIClientError,
    ReviewSession,
    box_lesion,
    ijk_to_ras,
    point_lesion,
    read_nrrd_geometry,
)

pytest_plugins = ["server_fixture"]


@pytest.fixture
def unlabelled(app_server):
    """A fresh copy of a study under a new id, so a strategy always has an unlabelled image to pick."""
    image_id = f"copy_{uuid.uuid4().hex[:8]}"
    MammoXAIClient(app_server.url).upload_image(str(app_server.studies / f"{app_server.study_ids()[0]}.dcm"), image_id)
    return image_id


@pytest.fixture
def session(app_server, tmp_path):
    session = ReviewSession(app_server.url, str(tmp_path / "work"), str(tmp_path / "pending"), annotator="dr.test")
    session.connect()
    return session


def ras_corner(ijk_to_ras_matrix, x, y):
    """RAS of original-pixel position (x, y), continuous coordinates (pixel centre at i + 0.5)."""
    return (np.asarray(ijk_to_ras_matrix) @ [x - 0.5, y - 0.5, 0.0, 1.0])[:3]


def sha1(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def wait_for(read, done, timeout=60.0):
    """``read()`` until ``done`` holds for its value (MONAI Label queues a task before it runs it), or time out."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


def test_connect_names_the_model_its_classes_and_strategies(session, app_server):
    info = session.info

    assert info.model == app_server.model
    assert info.class_names == app_server.class_names
    assert "random" in info.strategies
    assert info.url == app_server.url
    assert app_server.model in info.summary
    assert info.saliency_method == "gradcam"
    # CAM is not offered: the served network's class head does not read the global average pool of its last block
    assert info.saliency_methods[0] == "gradcam" and not {"cam", "correlax"} & set(info.saliency_methods)


def test_a_saliency_method_the_server_cannot_run_is_refused_before_any_request(session, app_server):
    session.client.url = "http://127.0.0.1:9"  # a request would now fail as unreachable, not as input

    with pytest.raises(MammoXAIClientError) as raised:
        session.run(app_server.study_ids()[0], saliency_method="correlax")

    assert raised.value.kind == "input"
    assert "'correlax'" in raised.value.message and "gradcam" in raised.value.message


def test_next_case_downloads_the_image_the_strategy_picks_byte_for_byte(session, app_server, unlabelled):
    case = session.next_case("uncertainty")

    assert case is not None
    stored = app_server.studies / Path(case.image_path).name
    assert stored.is_file()
    assert sha1(case.image_path) == sha1(stored)
    assert case.strategy in session.info.strategies
    if "uncertainty" not in session.info.strategies:
        assert "no 'uncertainty' strategy" in case.note
    assert read_mammogram(case.image_path).shape == read_mammogram(stored).shape


def test_run_returns_table_rows_and_a_heatmap_on_the_image_grid(session, app_server):
    image_id = app_server.study_ids()[0]
    mammogram = read_mammogram(app_server.studies / f"{image_id}.dcm")

    outcome = session.run(image_id, saliency_method="gradcam")

    view = outcome.view
    assert view.class_names == app_server.class_names
    assert [row.name for row in view.rows[: len(view.class_names)]] == app_server.class_names
    assert sum(row.highlighted for row in view.rows if row.section == "class") == 1
    metadata = {row.name: row for row in view.rows if row.section == "metadata"}
    assert "view" in metadata  # the served network's metadata heads, beside the header value they are checked against
    assert metadata["view"].reference == mammogram.view
    assert view.image_shape == mammogram.shape
    assert view.timing_text.startswith("server ")
    assert outcome.notes == []
    shape, spacing = read_nrrd_geometry(outcome.heatmap_path)
    heatmap, reference_spacing = read_heatmap_nrrd(outcome.heatmap_path)
    assert shape == heatmap.shape == mammogram.shape
    assert spacing == pytest.approx(reference_spacing)


def test_raw_prediction_from_the_client_passes_the_project_schema(app_server, tmp_path):
    client = MammoXAIClient(app_server.url)

    result = client.infer(app_server.model, app_server.study_ids()[1], str(tmp_path))

    validate_prediction(result.prediction, source="slicer client")
    assert Path(result.heatmap_path).read_bytes().startswith(b"NRRD")


def test_a_case_is_corrected_with_a_ras_box_saved_and_read_back(session, app_server, unlabelled):
    case = session.next_case("random")
    assert case is not None
    outcome = session.run(case.image_id)
    rows, columns = outcome.view.image_shape
    # the volume Slicer builds for the image, and its inverse as vtkMRMLVolumeNode.GetRASToIJKMatrix gives it
    to_ras = ijk_to_ras(outcome.view.spacing_mm)
    ras_to_ijk = np.linalg.inv(np.asarray(to_ras)).tolist()
    corner_a, corner_b = ras_corner(to_ras, 10, 20), ras_corner(to_ras, 40, 60)
    bounds = [
        coordinate
        for pair in zip(np.minimum(corner_a, corner_b), np.maximum(corner_a, corner_b), strict=True)
        for coordinate in pair
    ]
    box = box_lesion(ras_to_ijk, bounds, (rows, columns), finding="mass")
    point = point_lesion(ras_to_ijk, ras_corner(to_ras, 30.5, 44.0), (rows, columns))
    assert box["box"] == pytest.approx([10, 20, 40, 60])
    assert point["point"] == pytest.approx([30.5, 44.0])

    label = session.make_label(
        app_server.class_names[-1], birads="4", lesions=[box, point], image_shape=(rows, columns)
    )
    validate_label(label, class_names=app_server.class_names, image_shape=(rows, columns), source="slicer label")
    answer = session.submit(case.image_id, label)

    assert answer["label"] == case.image_id
    assert session.read_back(case.image_id) == label
    stored = app_server.studies / "labels" / "final" / f"{case.image_id}.json"
    assert json.loads(stored.read_text()) == label
    assert session.pending.pending() == []


def run_ended(status):
    return status.ended


def save_two_patients_two_classes(session, app_server):
    """Final labels a run accepts: two images of each patient, of two classes."""
    for images in app_server.study_ids_by_patient().values():
        for image_id, class_name in zip(images, app_server.class_names[:2], strict=False):
            shape = read_mammogram(app_server.studies / f"{image_id}.dcm").shape
            label = session.make_label(class_name, image_shape=shape)
            assert session.submit(image_id, label)["label"] == image_id


def test_training_on_final_labels_of_two_patients_starts_reports_running_and_stops(session, app_server):
    weights = app_server.checkpoint.read_bytes()
    save_two_patients_two_classes(session, app_server)

    assert app_server.model in session.info.trainers
    session.start_training({"epochs": 1})
    try:
        status = wait_for(session.training_status, lambda status: not status.line.startswith("training SUBMITTED"))
        assert status.line.startswith("training RUNNING (started "), status
        assert not status.ended
    finally:
        stopped = session.stop_training()

    assert stopped["status"] == "STOPPED"
    status = session.training_status()
    assert status.line.startswith("training STOPPED") and status.ended
    assert app_server.checkpoint.read_bytes() == weights  # a run stopped midway never replaces the weights


def test_a_failed_training_run_is_reported_with_the_reason_from_its_log_and_a_done_one_names_what_it_left_out(
    session, app_server
):
    """A run that fails in the background process (here: pixels of a corrected image cut off after the labels were
    saved, which the header-only check at the request cannot see, under ``strict: true``) shows the run's own error
    line in the panel, naming the image by its id; the run the error offers (``strict: false``, the default) leaves
    that image out and trains on the others, and the panel names it with the reason (it said only "DONE")."""
    broken = f"cut_{uuid.uuid4().hex[:8]}"
    source = app_server.studies / f"{app_server.study_ids()[0]}.dcm"
    session.client.upload_image(str(source), broken)
    save_two_patients_two_classes(session, app_server)
    session.submit(broken, session.make_label(app_server.class_names[0], image_shape=read_mammogram(source).shape))
    stored = app_server.studies / f"{broken}.dcm"
    stored.write_bytes(stored.read_bytes()[:-2000])
    weights = app_server.checkpoint.read_bytes()
    try:
        session.start_training({"epochs": 1, "strict": True})
        failed = wait_for(session.training_status, run_ended, 300).line
        unchanged = app_server.checkpoint.read_bytes()
        session.start_training({"epochs": 1, "accept": "valid"})  # what the error offers
        skipped = wait_for(session.training_status, run_ended, 300).line
    finally:
        requests.delete(f"{app_server.url}/datastore/image", params={"id": broken}, timeout=60)
        app_server.checkpoint.write_bytes(weights)  # the other tests' served weights

    assert failed.startswith("training ERROR (started "), failed
    assert f"image {broken!r}" in failed and "cannot be used" in failed and "truncated" in failed, failed
    assert str(app_server.studies) not in failed
    assert unchanged == weights
    assert skipped.startswith("training DONE (started "), skipped
    assert f"; 1 correction left out: image {broken!r} (" in skipped and "truncated" in skipped, skipped
    assert str(app_server.studies) not in skipped


def test_a_server_without_training_is_reported_before_any_request(app_server, tmp_path):
    info = MammoXAIClient(app_server.url).info()
    requests_seen = []

    def respond(method, path):
        requests_seen.append((method, path))
        return 200, "application/json", json_body({**info, "trainers": {}})

    with StandInServer(respond) as no_training:
        session = ReviewSession(no_training.url, str(tmp_path / "work"), str(tmp_path / "pending"), annotator="dr.test")
        session.connect()
        with pytest.raises(MammoXAIClientError, match="offers no training") as raised:
            session.start_training()

    assert raised.value.kind == "input"
    assert all(method == "GET" for method, _ in requests_seen)  # nothing was posted to /train/


def status_from_stand_in(task, info, tmp_path):
    """The panel's training status from a server answering ``/train/`` with ``task`` and everything else with
    ``info``: for states a real run reaches only by chance (out of memory) or slowly."""

    def respond(method, path):
        return 200, "application/json", json_body(task if path.startswith("/train/") else info)

    with StandInServer(respond) as server:
        session = ReviewSession(server.url, str(tmp_path / "work"), str(tmp_path / "pending"))
        session.connect()
        return session.training_status()


@pytest.mark.parametrize(
    "stats, said",
    [
        ({"accepted": True, "left_out": {}}, ""),
        (
            {"accepted": True, "left_out": {"a": "no breast was found", "b": "is not a mammogram (a CT)"}},
            "; 2 corrections left out: image 'a' (no breast was found), image 'b' (is not a mammogram (a CT))",
        ),
        (None, ""),
    ],
    ids=["none_left_out", "two_left_out", "no_stats"],
)
def test_a_done_run_says_the_corrections_it_left_out_only_when_it_left_some(app_server, tmp_path, stats, said):
    info = MammoXAIClient(app_server.url).info()
    info.pop("train_stats", None)  # no_stats: a server that has not written any
    if stats:
        info["train_stats"] = {app_server.model: stats}
    task = {"id": "t1", "status": "DONE", "start_ts": "2024-05-01 09:30:12", "details": []}
    status = status_from_stand_in(task, info, tmp_path)

    assert status.line == f"training DONE (started 2024-05-01 09:30:12){said}"
    assert status.ended


@pytest.mark.parametrize(
    "details, reason",
    [
        (
            ["Epoch 1/5", "Traceback (most recent call last):", "RuntimeError: CUDA out of memory"],
            "RuntimeError: CUDA out of memory",
        ),
        (["loading", "killed by the operating system"], "killed by the operating system"),
        ([], ""),
    ],
    ids=["other_error_with_its_type", "no_error_line_the_last_line", "no_output"],
)
def test_a_failed_run_without_a_user_error_shows_its_last_error_line(app_server, tmp_path, details, reason):
    info = MammoXAIClient(app_server.url).info()
    task = {"id": "t1", "status": "ERROR", "start_ts": "2024-05-01 09:30:12", "details": details}
    status = status_from_stand_in(task, info, tmp_path)

    assert status.line == "training ERROR (started 2024-05-01 09:30:12)" + (f": {reason}" if reason else "")
    assert status.ended


@pytest.mark.parametrize(
    "state, ended",
    [("SUBMITTED", False), ("RUNNING", False), ("DONE", True), ("ERROR", True), ("STOPPED", True)],
)
def test_the_panel_polls_a_queued_or_running_run_until_it_reaches_a_final_state(app_server, tmp_path, state, ended):
    """MONAI Label reports a run SUBMITTED until its process starts: the panel's first poll, straight after Train,
    sees that, and must keep polling to see RUNNING and then DONE or ERROR."""
    info = MammoXAIClient(app_server.url).info()
    task = {"id": "t1", "status": state, "start_ts": "2024-05-01 09:30:12", "details": []}
    status = status_from_stand_in(task, info, tmp_path)

    assert status.line.startswith(f"training {state} (started 2024-05-01 09:30:12)")
    assert status.ended == ended


def test_a_training_status_the_server_cannot_give_for_a_moment_keeps_the_panel_polling(session, app_server, tmp_path):
    upstream = urllib.parse.urlsplit(app_server.url)
    with Proxy((upstream.hostname, upstream.port)) as proxy:
        through = ReviewSession(proxy.url, str(tmp_path / "work"), str(tmp_path / "pending"))
        through.connect()
        proxy.down()
        down = through.training_status()
        proxy.up()
        back = through.training_status()

    assert down.line.startswith(f"training status unknown: Cannot reach the server at {proxy.url}"), down.line
    assert not down.ended
    assert back.line == session.training_status().line and not back.line.startswith("training status unknown")
