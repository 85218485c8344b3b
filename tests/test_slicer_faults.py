"""What the Slicer panel's logic says when something goes wrong, and that no correction is lost on the way.

Faults are real: a port nothing listens on, loopback servers that answer something else or never answer, a
proxy to the real MammoXAI server that goes down and comes back, and the real server's own 4xx answers.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
from loopback_servers import Proxy, SilentServer, StandInServer, json_body

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MammoXAI"))
from MammoXAILib import MammoXAIClient, MammoXAIClientError, PendingCorrections, ReviewSession  # noqa: E402

pytest_plugins = ["server_fixture"]


def test_the_error_keeps_its_message_kind_and_status_through_pickle_and_copy():
    error = MammoXAIClientError("The server answered 409: a training run is in progress", "http", 409)
    for copied in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert (str(copied), copied.message, copied.kind, copied.status) == (str(error), error.message, "http", 409)


def session_for(url, tmp_path, **kwargs):
    return ReviewSession(url, str(tmp_path / "work"), str(tmp_path / "pending"), annotator="dr.test", **kwargs)


def test_nothing_listening_is_reported_as_unreachable_with_the_url(tmp_path, free_port):
    url = f"http://127.0.0.1:{free_port}"

    with pytest.raises(MammoXAIClientError) as raised:
        session_for(url, tmp_path).connect()

    assert raised.value.kind == "unreachable"
    assert url in raised.value.message
    assert "start the server or check the URL" in raised.value.message


@pytest.mark.parametrize("url", ["", "ftp://127.0.0.1:8000", "http://"])
def test_a_malformed_url_is_refused_before_any_request(url):
    with pytest.raises(MammoXAIClientError) as raised:
        MammoXAIClient(url)

    assert raised.value.kind == "input"
    assert "http://127.0.0.1:8000" in raised.value.message  # the message shows what a URL looks like


@pytest.mark.parametrize("name", ["moved_away.dcm", "."])
def test_an_image_file_that_cannot_be_read_is_refused_as_input_before_any_request(tmp_path, free_port, name):
    client = MammoXAIClient(f"http://127.0.0.1:{free_port}")  # nothing listens: the file is checked first
    with pytest.raises(MammoXAIClientError) as raised:
        client.upload_image(str(tmp_path / name), "case1")
    assert raised.value.kind == "input" and "choose an image file" in str(raised.value)


def test_a_missing_scheme_means_http():
    assert MammoXAIClient("127.0.0.1:8000/").url == "http://127.0.0.1:8000"


def test_a_web_server_that_is_not_mammoxai_is_named_as_such(tmp_path):
    with StandInServer(lambda method, path: (200, "text/html", b"<html>It works!</html>")) as other:
        with pytest.raises(MammoXAIClientError) as raised:
            session_for(other.url, tmp_path).connect()

    assert raised.value.kind == "not_mammoxai"
    assert f"{other.url} is not a MammoXAI server" in raised.value.message


def test_a_monai_label_server_without_a_classification_model_is_not_mammoxai(tmp_path):
    info = {
        "name": "Segmentation",
        "labels": ["spleen"],
        "models": {"seg": {"type": "segmentation", "labels": ["spleen"]}},
    }
    with StandInServer(lambda method, path: (200, "application/json", json_body(info))) as other:
        with pytest.raises(MammoXAIClientError, match="serves no classification model") as raised:
            session_for(other.url, tmp_path).connect()

    assert raised.value.kind == "not_mammoxai"


def test_a_server_that_never_answers_times_out_quickly(tmp_path):
    with SilentServer() as hung:
        start = time.monotonic()
        with pytest.raises(MammoXAIClientError) as raised:
            session_for(hung.url, tmp_path, timeout=0.5).connect()
        elapsed = time.monotonic() - start

    assert raised.value.kind == "timeout"
    assert "timed out after 0.5 s" in raised.value.message
    assert elapsed < 5


def test_an_unknown_image_is_reported_with_the_servers_explanation(app_server, tmp_path):
    session = session_for(app_server.url, tmp_path)
    session.connect()

    with pytest.raises(MammoXAIClientError) as raised:
        session.run("no_such_image")

    assert raised.value.kind == "http"
    assert raised.value.status == 404
    assert "no_such_image" in raised.value.message
    assert "not found" in raised.value.message


def test_an_answer_without_heatmap_still_shows_the_prediction(app_server, tmp_path):
    image_id = app_server.study_ids()[0]
    record = MammoXAIClient(app_server.url).infer(app_server.model, image_id, str(tmp_path)).prediction
    info = MammoXAIClient(app_server.url).info()

    def respond(method, path):
        return 200, "application/json", json_body(record if path.startswith("/infer/") else info)

    with StandInServer(respond) as json_only:
        session = session_for(json_only.url, tmp_path)
        session.connect()
        outcome = session.run(image_id)

    assert outcome.heatmap_path is None
    assert outcome.view.predicted_class == record["predicted_class"]
    assert any("no heatmap" in note for note in outcome.notes)


def test_a_label_the_server_refuses_is_kept_with_the_servers_message(app_server, tmp_path):
    session = session_for(app_server.url, tmp_path)
    session.connect()
    label = session.make_label(app_server.class_names[0], lesions=[{"type": "point", "point": [1e6, 1e6]}])

    with pytest.raises(MammoXAIClientError) as raised:
        session.submit(app_server.study_ids()[0], label)

    assert raised.value.status == 422
    assert "outside the image" in raised.value.message
    assert "is kept" in raised.value.message
    [kept] = session.pending.pending()
    assert kept.label == label
    assert "outside the image" in kept.last_error


def test_a_correction_made_while_the_server_is_down_is_sent_when_it_is_back(app_server, tmp_path):
    upstream = urllib.parse.urlsplit(app_server.url)
    image_id = app_server.study_ids()[2]
    with Proxy((upstream.hostname, upstream.port)) as proxy:
        session = session_for(proxy.url, tmp_path)
        session.connect()
        label = session.make_label(app_server.class_names[1], birads="3")
        proxy.down()

        with pytest.raises(MammoXAIClientError) as raised:
            session.submit(image_id, label)

        assert raised.value.kind == "unreachable"
        assert f"kept and will be sent to {proxy.url} when you connect to it again" in raised.value.message
        # the correction survives the panel: a new session on the same folder finds it
        assert [kept.label for kept in PendingCorrections(str(tmp_path / "pending"), proxy.url).pending()] == [label]

        proxy.up()
        later = session_for(proxy.url, tmp_path)
        later.connect()

        assert later.pending.pending() == []
        assert later.read_back(image_id) == label


def fresh_image(app_server):
    """A copy of a study under a new id: an image no test has labelled."""
    image_id = f"copy_{uuid.uuid4().hex[:8]}"
    MammoXAIClient(app_server.url).upload_image(str(app_server.studies / f"{app_server.study_ids()[0]}.dcm"), image_id)
    return image_id


def test_a_kept_correction_goes_out_with_the_next_save_the_server_accepts(app_server, tmp_path):
    upstream = urllib.parse.urlsplit(app_server.url)
    first, second = fresh_image(app_server), fresh_image(app_server)
    with Proxy((upstream.hostname, upstream.port)) as proxy:
        session = session_for(proxy.url, tmp_path)
        session.connect()
        kept = session.make_label(app_server.class_names[1], birads="3")
        proxy.down()
        with pytest.raises(MammoXAIClientError):
            session.submit(first, kept)
        proxy.up()

        session.submit(second, session.make_label(app_server.class_names[0]))  # no new Connect

        assert session.pending.pending() == []
        assert session.read_back(first) == kept


def test_a_correction_kept_for_one_server_waits_for_it_and_never_goes_to_another(app_server, tmp_path):
    """The same image id on another server may be another patient's image: a correction goes to its own server."""
    upstream = urllib.parse.urlsplit(app_server.url)
    image_id = fresh_image(app_server)
    info = MammoXAIClient(app_server.url).info()
    seen = []

    def respond(method, path):
        seen.append((method, path))
        return 200, "application/json", json_body({"image": "other"} if method == "PUT" else info)

    with Proxy((upstream.hostname, upstream.port)) as proxy, StandInServer(respond) as other:
        session = session_for(proxy.url, tmp_path)
        session.connect()
        label = session.make_label(app_server.class_names[1], birads="4")
        proxy.down()
        with pytest.raises(MammoXAIClientError):
            session.submit(image_id, label)

        elsewhere = session_for(other.url, tmp_path)  # the same pending folder: one per Slicer install
        elsewhere.connect()
        elsewhere.submit("case_of_other", elsewhere.make_label(app_server.class_names[0]))
        summary = elsewhere.pending_summary()

        proxy.up()
        back = session_for(proxy.url, tmp_path)
        back.connect()
        assert back.read_back(image_id) == label

    assert [path for method, path in seen if method == "PUT"] == ["/datastore/label?image=case_of_other&tag=final"]
    assert summary == f"1 correction waits for {proxy.url} (connect there to send)"
    assert back.pending.pending() == [] and back.pending.elsewhere() == {}


def test_a_correction_of_an_earlier_panel_naming_no_server_is_sent_only_when_the_user_says_so(app_server, tmp_path):
    image_id = fresh_image(app_server)
    session = session_for(app_server.url, tmp_path)
    label = {"class": app_server.class_names[2], "annotator": "dr.old", "timestamp": "2024-05-01T09:30:12+00:00"}
    old = tmp_path / "pending" / f"{image_id}.final.pending.json"  # as the panel wrote it before records named a server
    old.write_text(json.dumps({"image_id": image_id, "tag": "final", "label": label, "last_error": "Cannot reach"}))

    session.connect()

    assert old.is_file()
    with pytest.raises(MammoXAIClientError) as raised:
        session.read_back(image_id)
    assert raised.value.status == 404  # not sent on connect
    assert "1 correction saved by an earlier version of the panel name no server" in session.pending_summary()
    assert session.send_unassigned() == (1, [image_id])
    assert session.read_back(image_id) == label
    assert not old.exists() and session.pending.unassigned() == [] and session.pending_summary() == ""


def test_a_damaged_correction_file_is_set_aside_and_named_instead_of_failing_every_connect(app_server, tmp_path):
    store = PendingCorrections(str(tmp_path / "pending"), app_server.url)
    store.put("case_good", {"class": app_server.class_names[0]}, last_error="Cannot reach")
    empty = os.path.join(store.server_folder, "case_cut.final.pending.json")
    open(empty, "wb").close()  # a power cut after the rename, before the data reached the disk
    (tmp_path / "pending" / "case_old.final.pending.json").write_text('{"image_id": "case_old", "ta')

    session = session_for(app_server.url, tmp_path)
    session.connect()  # raised json.JSONDecodeError here, on every connect
    summary = session.pending_summary()

    assert [correction.image_id for correction in session.pending.pending()] == ["case_good"]  # kept: refused 404
    assert not os.path.exists(empty) and os.path.getsize(empty + ".damaged") == 0  # moved aside, not deleted
    old = tmp_path / "pending" / "case_old.final.pending.json.damaged"
    assert old.read_text() == '{"image_id": "case_old", "ta'
    assert f"a damaged correction file was set aside, not sent: {empty}.damaged" in summary
    assert f"set aside, not sent: {old}" in summary


def test_a_kept_correction_is_on_the_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    store = PendingCorrections(str(tmp_path / "pending"), "http://127.0.0.1:8000")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size) or real_fsync(fd))

    path = store.put("case1", {"class": "benign"})

    assert synced == [os.path.getsize(path)] and synced[0] > 0
