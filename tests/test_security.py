"""Security and robustness of the app server: authentication and roles, ids that cannot leave the datastore, the
upload limit, concurrent inference, and saves and crashes that never leave a broken datastore.

Authentication is MONAI Label's OpenID Connect mechanism, exercised for real and offline: the test serves a
Keycloak-style realm on loopback (its document with the RSA public key, its OpenID configuration and a token
endpoint for the password grant), signs tokens with the matching private key, and starts the server with
``MONAI_LABEL_AUTH_ENABLE`` pointing at that realm.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import mammoxai.io.atomic as atomic_module
from mammoxai.data.synth import synthesize

pytest_plugins = ["server_fixture"]

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "apps" / "mammography"), str(REPO / "slicer_extension" / "MammoXAI")]
from MammoXAILib import MammoXAIClientError, ReviewSession  # noqa: E402  (the Slicer module's logic)

from lib import datastore as datastore_module  # noqa: E402  (the app's lib/ is not an installed package)

USER, ANNOTATOR, ADMIN = "monailabel-user", "monailabel-annotator", "monailabel-admin"  # MONAI Label's role names
LABEL = {"class": "benign", "annotator": "dr.test", "timestamp": "2024-05-01T09:30:00+00:00"}
UPLOAD_LIMIT_MB = 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Realm:
    """An OpenID Connect realm as MONAI Label reads it (Keycloak's realm document, OpenID configuration and password
    grant), served on loopback.

    Its accounts (:data:`ACCOUNTS`) log in with the password ``secret``; ``dr.brief``'s tokens expire after
    ``brief_seconds``; the others stand for what a provider does wrong: ``dr.disabled`` is refused with Keycloak's
    400, ``dr.broken`` makes it fail with 500, ``dr.html`` answers with a web page, ``dr.gone`` hangs up.
    """

    ACCOUNTS = {"dr.test": (USER, ANNOTATOR), "dr.brief": (USER,)}
    FAULTS = {
        "dr.disabled": (400, {"error": "invalid_grant", "error_description": "Account disabled"}),
        "dr.broken": (500, {"error": "unknown_error"}),
        "dr.html": (200, "<html><body>Sign in</body></html>"),
        "dr.gone": (None, None),
    }
    PASSWORD = "secret"

    def __init__(self, brief_seconds: float = 3.0) -> None:
        self.brief_seconds = brief_seconds
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        document = {"realm": "mammoxai", "public_key": base64.b64encode(public).decode()}
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.endswith("/.well-known/openid-configuration"):
                    self.answer(200, {"token_endpoint": f"{realm.uri}/protocol/openid-connect/token"})
                else:
                    self.answer(200, document)

            def do_POST(self) -> None:  # noqa: N802
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                user, roles = form.get("username"), realm.ACCOUNTS.get(form.get("username"))
                if user in realm.FAULTS:
                    status, body = realm.FAULTS[user]
                    if status is None:
                        self.close_connection = True  # no answer at all
                    else:
                        self.answer(status, body)
                elif form.get("grant_type") != "password" or roles is None or form.get("password") != realm.PASSWORD:
                    self.answer(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                else:
                    expires_in = brief_seconds if user == "dr.brief" else 600
                    token = realm.token(*roles, expires_in=expires_in, username=user)
                    refresh = realm.token(*roles, expires_in=1800, username=user)
                    self.answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": expires_in,
                                      "refresh_token": refresh, "session_state": "s1"})  # fmt: skip

            def answer(self, status: int, body: dict | str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
                self.end_headers()
                self.wfile.write((body if isinstance(body, str) else json.dumps(body)).encode())

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.http.server_address[1]}/realms/mammoxai"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def token(self, *roles: str, expires_in: float = 600, key=None, username: str = "dr.test") -> str:
        claims = {
            "preferred_username": username,
            "realm_access": {"roles": list(roles)},
            "exp": time.time() + expires_in,
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256")

    def headers(self, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(*roles)}"}


class _BearerToken(urllib.request.BaseHandler):
    """Adds a bearer token to urllib requests: the launcher polls ``/info/``, which needs one when auth is on."""

    def __init__(self, token: str) -> None:
        self.token = token

    def http_request(self, request):
        request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        return request


def _start(app_server, realm: Realm, studies: Path, root: Path):
    env = {
        **os.environ,
        "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
        "MONAI_LABEL_AUTH_ENABLE": "true",
        "MONAI_LABEL_AUTH_REALM_URI": realm.uri,
    }
    conf = {"bundle": str(app_server.bundle), "max_upload_mb": str(UPLOAD_LIMIT_MB)}
    server = type(app_server.server)(studies, port=_free_port(), conf=conf, log=root / "server.log", env=env)
    urllib.request.install_opener(urllib.request.build_opener(_BearerToken(realm.token(USER))))
    try:
        return server.start(timeout=120)
    finally:
        urllib.request.install_opener(urllib.request.build_opener())


@pytest.fixture(scope="module")
def realm():
    realm = Realm()
    yield realm
    realm.http.shutdown()


@pytest.fixture(scope="module")
def secured(app_server, realm, tmp_path_factory):
    """A server with authentication on and a 1 MiB upload limit, over its own small synthetic studies folder."""
    root = tmp_path_factory.mktemp("secured")
    synthesize(root / "studies", patients=1, seed=1, size=256)
    server = _start(app_server, realm, root / "studies", root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def image_id(secured):
    return sorted(path.stem for path in secured.studies.glob("P*.dcm"))[0]


def infer(server, image, headers):
    return requests.post(
        f"{server.url}/infer/mammoxai", params={"image": image, "output": "json"}, headers=headers, timeout=300
    )


def save_label(server, image, headers, tag="final", label=LABEL):
    files = {"label": ("label.json", json.dumps(label).encode())}
    return requests.put(
        f"{server.url}/datastore/label", params={"image": image, "tag": tag}, files=files, headers=headers, timeout=60
    )


def train(server, headers):
    return requests.post(f"{server.url}/train/mammoxai", json={}, headers=headers, timeout=60)


def studies_tree(studies: Path) -> set[str]:
    return {str(path.relative_to(studies.parent)) for path in studies.parent.rglob("*") if path.name != ".lock"}


# --- authentication and roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [infer, save_label, lambda server, image, headers: train(server, headers)])
def test_request_without_a_token_is_refused_with_401(secured, image_id, call):
    response = call(secured, image_id, {})

    assert response.status_code == 401, response.text


def test_token_signed_by_another_key_or_expired_is_refused_with_401(secured, realm, image_id):
    forged = realm.token(USER, ADMIN, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    expired = realm.token(USER, ADMIN, expires_in=-60)

    for token in (forged, expired, "not-a-jwt"):
        assert infer(secured, image_id, {"Authorization": f"Bearer {token}"}).status_code == 401


def test_reviewer_may_infer_but_not_save_labels_or_train(secured, realm, image_id):
    reviewer = realm.headers(USER)

    assert infer(secured, image_id, reviewer).status_code == 200
    assert save_label(secured, image_id, reviewer).status_code == 403
    assert train(secured, reviewer).status_code == 403
    assert not (secured.studies / "labels" / "final" / f"{image_id}.json").exists()


def test_annotator_may_save_labels_but_not_train(secured, realm, image_id):
    annotator = realm.headers(USER, ANNOTATOR)

    assert save_label(secured, image_id, annotator).status_code == 200
    assert train(secured, annotator).status_code == 403
    assert requests.delete(f"{secured.url}/train/", headers=annotator, timeout=60).status_code == 403  # stop a run
    assert json.loads((secured.studies / "labels" / "final" / f"{image_id}.json").read_text()) == LABEL


# --- ids cannot leave the datastore -------------------------------------------------------------------------------


TRAVERSALS = ["../escaped", "..%2Fescaped", "%2e%2e%2fescaped", "/tmp/escaped", "labels/../../escaped", "..\\escaped"]


def login(server, username: str, password: str = Realm.PASSWORD) -> requests.Response:
    return requests.post(f"{server.url}/auth/token", data={"username": username, "password": password}, timeout=60)


def test_login_through_the_server_gives_an_access_token_the_server_accepts_and_nothing_more(secured):
    response = login(secured, "dr.test")

    assert response.status_code == 200, response.text
    assert sorted(response.json()) == ["access_token", "token_type"]  # the realm's refresh token stays with the server
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert requests.get(f"{secured.url}/info/", headers=headers, timeout=60).status_code == 200


@pytest.mark.parametrize(
    "username, password, status, words",
    [
        (
            "dr.test",
            "wrong",
            401,
            [
                "refused the login of 'dr.test' (invalid_grant: Invalid user credentials)",
                "check the user name and password",
            ],
        ),
        ("dr.nobody", Realm.PASSWORD, 401, ["refused the login of 'dr.nobody'"]),
        ("dr.disabled", Realm.PASSWORD, 401, ["refused the login of 'dr.disabled' (invalid_grant: Account disabled)"]),
        ("dr.broken", Realm.PASSWORD, 502, ["answered the login with HTTP 500 (unknown_error)", "provider's log"]),
        ("dr.html", Realm.PASSWORD, 502, ["answered with something that is not JSON", "OpenID Connect realm"]),
        ("dr.gone", Realm.PASSWORD, 503, ["cannot be reached (ConnectionError)", "start it"]),
    ],
    ids=["wrong_password", "unknown_user", "disabled_account", "provider_failing", "not_a_realm", "provider_gone"],
)
def test_a_login_that_fails_says_why_instead_of_500(secured, username, password, status, words):
    response = login(secured, username, password)

    assert response.status_code == status, response.text
    assert all(word in response.json()["detail"] for word in words), response.json()["detail"]


def review(server, tmp_path: Path) -> ReviewSession:
    return ReviewSession(server.url, str(tmp_path / "work"), str(tmp_path / "pending"))


def test_slicer_logs_in_with_user_name_and_password_and_labels_under_that_name(secured, tmp_path):
    session = review(secured, tmp_path)

    info = session.connect("dr.test", Realm.PASSWORD)

    assert info.model == "mammoxai" and session.annotator == "dr.test"
    assert jwt.decode(session.client.token, options={"verify_signature": False})["preferred_username"] == "dr.test"


def test_slicer_without_a_login_or_with_a_wrong_password_says_what_to_do(secured, tmp_path):
    with pytest.raises(MammoXAIClientError, match="asks for a login: enter your user name and password"):
        review(secured, tmp_path).connect()
    with pytest.raises(MammoXAIClientError, match=r"^The login failed: .*refused the login of 'dr.test'"):
        review(secured, tmp_path).connect("dr.test", "wrong")


def test_slicer_renews_a_token_that_expires_during_the_reading_session(secured, realm, tmp_path):
    session = review(secured, tmp_path)
    session.connect("dr.brief", Realm.PASSWORD)
    first = session.client.token
    time.sleep(realm.brief_seconds + 0.5)  # the server now answers 401 to that token

    assert session.client.info()["name"] == "MammoXAI"  # logged in again and sent once more
    assert session.client.token != first


def test_two_calls_that_find_the_token_expired_log_in_once(secured, realm, tmp_path):
    """The panel's inference thread and its training poll can both be answered 401 at once."""
    session = review(secured, tmp_path)
    session.connect("dr.brief", Realm.PASSWORD)
    logins, login = [], session.client.login
    session.client.login = lambda *credentials: logins.append(credentials[0]) or login(*credentials)
    time.sleep(realm.brief_seconds + 0.5)

    with ThreadPoolExecutor(2) as pool:
        names = list(pool.map(lambda _: session.client.info()["name"], range(2)))

    assert names == ["MammoXAI", "MammoXAI"] and logins == ["dr.brief"]


@pytest.mark.parametrize("image", TRAVERSALS)
def test_upload_with_a_traversing_image_id_is_refused_and_writes_nothing_outside(secured, realm, image, tmp_path):
    before = studies_tree(secured.studies)
    dicom = next(secured.studies.glob("P*.dcm")).read_bytes()

    response = requests.put(
        f"{secured.url}/datastore/image?image={image}",  # sent as written: the URL-encoded forms stay encoded
        files={"file": ("upload.dcm", dicom)},
        headers=realm.headers(ANNOTATOR),
        timeout=60,
    )

    assert response.status_code == 422, response.text
    assert "plain file name" in response.json()["detail"]
    assert studies_tree(secured.studies) == before
    assert not Path("/tmp/escaped.dcm").exists()


@pytest.mark.parametrize("tag", ["../escaped", "..%2F..%2Fescaped", "/tmp/escaped"])
def test_label_with_a_traversing_tag_is_refused(secured, realm, image_id, tag):
    before = studies_tree(secured.studies)

    response = requests.put(
        f"{secured.url}/datastore/label?image={image_id}&tag={tag}",
        files={"label": ("label.json", json.dumps(LABEL).encode())},
        headers=realm.headers(USER, ANNOTATOR),
        timeout=60,
    )

    assert response.status_code == 422, response.text
    assert "label tag" in response.json()["detail"]
    assert studies_tree(secured.studies) == before


def test_infer_reads_no_file_outside_the_datastore(secured, realm, image_id, tmp_path):
    outside = tmp_path / "outside.dcm"
    shutil.copy(secured.studies / f"{image_id}.dcm", outside)  # a readable mammogram, but not a datastore image
    relative = os.path.relpath(outside, secured.log.parent)  # the server's working folder
    handle, in_flight = tempfile.mkstemp(suffix=".dcm")  # named like the copy of another user's image being inferred
    os.close(handle)
    shutil.copy(outside, in_flight)

    try:
        for image in (
            str(outside),
            relative,
            f"../{secured.studies.name}/{image_id}.dcm",
            "/etc/passwd",
            "%2Fetc%2Fpasswd",
            in_flight,
        ):
            response = infer(secured, image, realm.headers(USER))
            assert response.status_code == 404, (image, response.text)
        sending_one = requests.post(  # an image sent with the request, and the other named in its params
            f"{secured.url}/infer/mammoxai",
            params={"output": "json"},
            files={"file": ("sent.dcm", outside.read_bytes())},
            data={"params": json.dumps({"image": in_flight})},
            headers=realm.headers(USER),
            timeout=300,
        )
        assert sending_one.status_code == 404, sending_one.text
    finally:
        os.remove(in_flight)


@pytest.mark.parametrize("label", ["../studies/labels/final/x", "/etc/passwd", "..%2F..%2Fserver.log"])
def test_label_download_by_a_traversing_id_finds_nothing(secured, realm, label):
    response = requests.get(
        f"{secured.url}/datastore/label?label={label}&tag=final", headers=realm.headers(USER), timeout=30
    )

    assert response.status_code == 404


# --- upload limit -------------------------------------------------------------------------------------------------


def test_upload_larger_than_the_limit_is_refused_with_413(secured, realm):
    before = studies_tree(secured.studies)
    body = b"\0" * (UPLOAD_LIMIT_MB * 2**20 + 1)

    response = requests.put(
        f"{secured.url}/datastore/image?image=too_large",
        files={"file": ("large.dcm", body)},
        headers=realm.headers(ANNOTATOR),
        timeout=60,
    )

    assert response.status_code == 413
    assert "max_upload_mb" in response.json()["detail"]
    assert studies_tree(secured.studies) == before


def test_chunked_upload_without_length_is_cut_at_the_limit_with_413(secured, realm):
    before = studies_tree(secured.studies)

    def multipart_chunks():  # the form the endpoint reads, with a file part twice the limit
        yield b'--limit\r\nContent-Disposition: form-data; name="file"; filename="large.dcm"\r\n\r\n'
        for _ in range(2 * UPLOAD_LIMIT_MB * 16):
            yield b"\0" * 2**16
        yield b"\r\n--limit--\r\n"

    response = requests.put(
        f"{secured.url}/datastore/image?image=too_large",
        data=multipart_chunks(),  # a generator: sent chunked, with no Content-Length
        headers={**realm.headers(ANNOTATOR), "Content-Type": "multipart/form-data; boundary=limit"},
        timeout=60,
    )

    assert response.status_code == 413
    assert studies_tree(secured.studies) == before


# --- concurrency --------------------------------------------------------------------------------------------------


def test_eight_concurrent_infer_requests_all_answer_the_same_prediction(secured, realm, image_id):
    reference = infer(secured, image_id, realm.headers(USER)).json()["probabilities"]
    start = time.monotonic()

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: infer(secured, image_id, realm.headers(USER)), range(8)))

    assert time.monotonic() - start < 240
    assert [response.status_code for response in responses] == [200] * 8
    for response in responses:
        assert response.json()["probabilities"] == pytest.approx(reference, abs=1e-5)


# --- interrupted saves and crashes --------------------------------------------------------------------------------


@pytest.fixture
def local_datastore(tmp_path):
    synthesize(tmp_path / "studies", patients=1, seed=2, size=256)
    store = datastore_module.MammogramDatastore(
        str(tmp_path / "studies"), class_names=["normal", "benign", "malignant"], auto_reload=False
    )
    return store, sorted(path.stem for path in (tmp_path / "studies").glob("P*.dcm"))[0]


def test_label_save_interrupted_midway_leaves_the_previous_label_and_a_readable_index(
    local_datastore, tmp_path, monkeypatch
):
    store, image = local_datastore
    first = tmp_path / "first.json"
    first.write_text(json.dumps(LABEL))
    store.save_label(image, str(first), "final", {})
    second = tmp_path / "second.json"
    second.write_text(json.dumps({**LABEL, "class": "malignant"}))

    def crash(*args):
        raise OSError("simulated crash: power lost before the file was moved into place")

    monkeypatch.setattr(atomic_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.save_label(image, str(second), "final", {})
    monkeypatch.undo()

    label_path = Path(store.get_label_uri(image, "final"))
    assert json.loads(label_path.read_text()) == LABEL
    assert not [path for path in label_path.parent.iterdir() if path.suffix == ".tmp"]
    reopened = datastore_module.MammogramDatastore(
        store._datastore_path, class_names=store.class_names, auto_reload=False
    )
    assert reopened.get_labeled_images() == [image]


def test_index_write_interrupted_midway_keeps_the_previous_index(local_datastore, monkeypatch):
    store, image = local_datastore
    index = Path(store._datastore_path) / "datastore_v2.json"
    before = index.read_text()

    def crash(*args):
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(atomic_module.os, "fsync", crash)
    with pytest.raises(OSError):
        store.update_image_info(image, {"note": "never written"})
    monkeypatch.undo()

    assert index.read_text() == before
    json.loads(index.read_text())


def test_server_killed_during_training_loses_no_label_and_no_model(app_server, realm, tmp_path):
    synthesize(tmp_path / "studies", patients=1, seed=4, size=256)
    image = sorted(path.stem for path in (tmp_path / "studies").glob("P*.dcm"))[0]
    model = app_server.checkpoint.read_bytes()
    server = _start(app_server, realm, tmp_path / "studies", tmp_path)
    try:
        assert save_label(server, image, realm.headers(USER, ANNOTATOR)).status_code == 200
        train(server, realm.headers(ADMIN))  # whatever it answers, the server is killed while it may be training
        os.killpg(server.process.pid, signal.SIGKILL)  # no shutdown handler runs: a power cut
        server.process.wait(30)

        assert app_server.checkpoint.read_bytes() == model
        assert json.loads((tmp_path / "studies" / "labels" / "final" / f"{image}.json").read_text()) == LABEL

        server = _start(app_server, realm, tmp_path / "studies", tmp_path)
        labels = requests.get(
            f"{server.url}/datastore/", params={"output": "all"}, headers=realm.headers(USER), timeout=30
        )
        assert "final" in labels.json()["objects"][image]["labels"]
        assert infer(server, image, realm.headers(USER)).status_code == 200
    finally:
        server.stop()
