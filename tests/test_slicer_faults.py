"""What the Slicer panel's logic says when something goes wrong, and that no correction is lost on the way.

Faults are real: a port nothing listens on, loopback servers that answer something else or never answer, a
proxy to the real MammoXAI server that goes down and comes back, and the real server's own 4xx answers.
"""

from __future__ import annotations

import copy
import pickle
import sys
import time
import urllib.parse
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
        assert "kept and will be sent when you connect again" in raised.value.message
        # the correction survives the panel: a new session on the same folder finds it
        assert [kept.label for kept in PendingCorrections(str(tmp_path / "pending")).pending()] == [label]

        proxy.up()
        later = session_for(proxy.url, tmp_path)
        later.connect()

        assert later.pending.pending() == []
        assert later.read_back(image_id) == label
