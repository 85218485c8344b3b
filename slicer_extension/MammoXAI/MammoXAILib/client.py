"""HTTP client for the MammoXAI MONAI Label app, written with the standard library only.

3D Slicer ships its own Python without ``requests`` or ``monailabel``, so this client speaks to the server with
:mod:`urllib.request`, builds multipart uploads by hand and reads the multipart ``/infer`` answer (the
prediction record as ``params`` plus the heatmap NRRD) with :mod:`email`'s MIME parser. Every failure is raised
as :class:`~MammoXAILib.errors.MammoXAIClientError` with a message for the user: the server's own ``detail`` for
a 4xx, "cannot reach" for a refused connection or a wrong URL, "timed out" after ``timeout`` seconds, and "not a
MammoXAI server" when the URL answers something else.

Example:
    client = MammoXAIClient("http://127.0.0.1:8000", token=None, timeout=30)
    model = client.mammoxai_model(client.info())
    case = client.next_sample("random")
    result = client.infer(model, case["id"], folder="/tmp/mammoxai")
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import MammoXAIClientError

__all__ = ["InferResult", "MammoXAIClient"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class InferResult:
    """What ``POST /infer`` returned: the prediction record and the heatmap file saved locally (or ``None``)."""

    prediction: dict[str, Any]
    heatmap_path: str | None


class MammoXAIClient:
    """Client for the MammoXAI MONAI Label server (``apps/mammography``).

    Args:
        url: server address, e.g. ``http://127.0.0.1:8000``; a missing scheme means ``http://``.
        token: bearer token sent as ``Authorization`` (``None``: no authentication), e.g. from :meth:`login`.
        timeout: seconds to wait for short calls (info, datastore, labels, training control).
        infer_timeout: seconds to wait for inference, which runs the model and the saliency method.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, infer_timeout: float = 300.0) -> None:
        url = (url or "").strip()
        if not url:
            raise MammoXAIClientError(
                "No server URL: enter the MammoXAI server address, e.g. http://127.0.0.1:8000", "input"
            )
        if "://" not in url:
            url = f"http://{url}"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MammoXAIClientError(f"{url!r} is not a server URL: use e.g. http://127.0.0.1:8000", "input")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.infer_timeout = infer_timeout
        self._credentials: tuple[str, str] | None = None
        self._renewal = threading.Lock()  # the inference thread and the GUI thread may both find the token expired

    # ---------------------------------------------------------------- server
    def info(self) -> dict[str, Any]:
        """``GET /info/``; raises ``not_mammoxai`` unless the answer is MONAI Label info with a classification model."""
        info = self._json("GET", "/info/", what="server info")
        if not isinstance(info, dict) or not isinstance(info.get("models"), dict) or "labels" not in info:
            raise self._not_mammoxai("its /info/ is not MONAI Label server info")
        self.mammoxai_model(info)
        return info

    def mammoxai_model(self, info: dict[str, Any]) -> str:
        """The name of the served classification model (``mammoxai`` when there are several)."""
        models = {
            name: model
            for name, model in info.get("models", {}).items()
            if isinstance(model, dict) and model.get("type") == "classification" and model.get("labels")
        }
        if not models:
            raise self._not_mammoxai("it serves no classification model")
        return "mammoxai" if "mammoxai" in models else sorted(models)[0]

    def login(self, username: str, password: str) -> str | None:
        """Fetch a token from MONAI Label's ``POST /auth/token`` and use it for every later call.

        The user name and password are kept in memory so that a token that expires during a reading session (the
        identity provider's tokens last minutes) is renewed by logging in again, once, when the server answers 401.

        Returns:
            the token, or ``None`` for a server without authentication (it answers ``{"access_token": null}``):
            every call works without one.
        """
        body = urllib.parse.urlencode({"username": username, "password": password}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = self._json("POST", "/auth/token", body=body, headers=headers, what="login", renew=False)
        if not isinstance(answer, dict) or "access_token" not in answer:
            raise self._not_mammoxai("its answer to the login is not a token")
        self.token = answer["access_token"] or None
        self._credentials = (username, password) if self.token else None
        return self.token

    # ---------------------------------------------------------------- datastore
    def datastore(self) -> dict[str, Any]:
        """``GET /datastore/?output=all``: every image and its labels."""
        return self._json("GET", "/datastore/", query={"output": "all"}, what="datastore listing")

    def next_sample(self, strategy: str) -> dict[str, Any]:
        """``POST /activelearning/<strategy>``: the next image to review, ``{}`` when every image is labelled."""
        return self._json("POST", f"/activelearning/{_quote(strategy)}", body=b"{}", what=f"next case ({strategy})")

    def download_image(self, image_id: str, folder: str) -> str:
        """``GET /datastore/image``: save the image into ``folder`` under the server's file name; return its path."""
        response = self._request("GET", "/datastore/image", query={"image": image_id}, what=f"image {image_id!r}")
        with response:
            disposition = response.headers.get("Content-Disposition", "")
            data = response.read()
        name = _filename(disposition) or image_id
        return _write(folder, _safe_name(name), data)

    def upload_image(self, path: str, image_id: str) -> dict[str, Any]:
        """``PUT /datastore/image?image=<id>`` with the file as form field ``file``."""
        try:
            with open(path, "rb") as stream:
                files = {"file": (os.path.basename(path), stream.read(), "application/octet-stream")}
        except OSError as error:  # a moved file, a folder, no permission: the user's input, not the server's
            raise MammoXAIClientError(
                f"Cannot read {path} ({error.strerror}): choose an image file", "input"
            ) from error
        body, content_type = _multipart({"params": "{}"}, files)
        headers = {"Content-Type": content_type}
        query = {"image": image_id}
        return self._json("PUT", "/datastore/image", query=query, body=body, headers=headers, what=f"upload of {path}")

    def save_label(self, image_id: str, label: dict[str, Any], tag: str = "final") -> dict[str, Any]:
        """``PUT /datastore/label?image=<id>&tag=<tag>`` with the label JSON as form field ``label``."""
        files = {"label": (f"{_safe_name(image_id)}.json", json.dumps(label).encode("utf-8"), "application/json")}
        body, content_type = _multipart({"params": "{}"}, files)
        query = {"image": image_id, "tag": tag}
        headers = {"Content-Type": content_type}
        return self._json(
            "PUT", "/datastore/label", query=query, body=body, headers=headers, what=f"label of {image_id!r}"
        )

    def get_label(self, image_id: str, tag: str = "final") -> dict[str, Any]:
        """``GET /datastore/label``: a stored label, decoded."""
        return self._json(
            "GET", "/datastore/label", query={"label": image_id, "tag": tag}, what=f"label of {image_id!r}"
        )

    # ---------------------------------------------------------------- inference
    def infer(self, model: str, image_id: str, folder: str, params: dict[str, Any] | None = None) -> InferResult:
        """``POST /infer/<model>?image=<id>``: the prediction record and the heatmap saved into ``folder``.

        The server answers multipart (``params`` JSON + the heatmap file) or, when it has no heatmap, the
        JSON alone; both are accepted and ``heatmap_path`` is ``None`` in the second case.
        """
        body, content_type = _multipart({"params": json.dumps(params or {})}, {})
        response = self._request(
            "POST",
            f"/infer/{_quote(model)}",
            query={"image": image_id},
            body=body,
            headers={"Content-Type": content_type},
            timeout=self.infer_timeout,
            what=f"inference on {image_id!r}",
        )
        with response:
            content_type = response.headers.get("Content-Type", "")
            data = self._read(response, f"inference on {image_id!r}", self.infer_timeout)
        if content_type.startswith("application/json"):
            return InferResult(self._decode(data, "inference"), None)
        if not content_type.startswith("multipart/"):
            raise self._not_mammoxai(f"its /infer answered {content_type or 'no content type'}, not a prediction")
        prediction, heatmap_path = None, None
        for name, filename, payload in _parse_multipart(content_type, data):
            if name == "params":
                prediction = self._decode(payload, "inference")
            elif filename:
                heatmap_path = _write(folder, f"{_safe_name(image_id)}_heatmap{_suffix(filename)}", payload)
        if not isinstance(prediction, dict):
            raise MammoXAIClientError(
                f"{self.url} answered inference on {image_id!r} without a prediction", "bad_response"
            )
        return InferResult(prediction, heatmap_path)

    # ---------------------------------------------------------------- training
    def train_start(self, model: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /train/<model>``: start training on the final labels."""
        body = json.dumps(params or {}).encode("utf-8")
        return self._json("POST", f"/train/{_quote(model)}", body=body, what="start of training")

    def train_status(self) -> dict[str, Any]:
        """``GET /train/``: the latest training task (``{}`` when none has run)."""
        try:
            return self._json("GET", "/train/", what="training status")
        except MammoXAIClientError as error:
            if error.status == 404:  # MONAI Label answers 404 until a first training task exists
                return {}
            raise

    def train_stop(self) -> dict[str, Any]:
        """``DELETE /train/``: stop the running training task."""
        return self._json("DELETE", "/train/", what="stop of training")

    # ---------------------------------------------------------------- transport
    def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        response = self._request(method, path, what=what, **kwargs)
        with response:
            data = self._read(response, what, kwargs.get("timeout") or self.timeout)
        return self._decode(data, what)

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        query: dict[str, str] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        renew: bool = True,
    ) -> Any:
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        given, headers = headers, {"Accept": "application/json", **(headers or {})}
        if body is not None and "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
        sent_token = self.token
        if sent_token:
            headers["Authorization"] = f"Bearer {sent_token}"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        timeout = timeout or self.timeout
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            if error.code == 401 and renew and self._credentials:
                error.close()
                with self._renewal:  # the token expired: renew it, unless another call just did, and send once more
                    if self.token == sent_token:
                        self.login(*self._credentials)
                return self._request(method, path, what, query, body, given, timeout, renew=False)
            raise self._http_error(error, what) from error
        except (TimeoutError, socket.timeout) as error:
            raise self._timeout(what, timeout) from error
        except OSError as error:  # URLError and ConnectionError among them
            reason = getattr(error, "reason", error)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise self._timeout(what, timeout) from error
            message = f"Cannot reach the server at {self.url} ({reason}): start the server or check the URL"
            raise MammoXAIClientError(message, "unreachable") from error

    def _read(self, response: Any, what: str, timeout: float) -> bytes:
        try:
            return response.read()
        except (TimeoutError, socket.timeout) as error:
            raise self._timeout(what, timeout) from error
        except OSError as error:  # ConnectionError among them
            raise MammoXAIClientError(f"{self.url} broke off the {what} ({error}): try again", "unreachable") from error

    def _decode(self, data: bytes, what: str) -> Any:
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise self._not_mammoxai(f"its answer to the {what} is not JSON") from error

    def _http_error(self, error: urllib.error.HTTPError, what: str) -> MammoXAIClientError:
        detail = ""
        try:
            body = json.loads(error.read().decode("utf-8"))
            detail = body.get("detail", "") if isinstance(body, dict) else ""
            detail = detail if isinstance(detail, str) else json.dumps(detail)
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            pass
        if error.code == 401 and what == "login":
            detail = detail or "the user name or password was refused"
            return MammoXAIClientError(f"The login failed: {detail}", "http", 401)
        if error.code in (401, 403):
            fix = "log in with your user name and password" if error.code == 401 else "ask the server's administrator"
            detail = detail or ("not logged in" if error.code == 401 else "your account lacks the role for it")
            return MammoXAIClientError(f"The server refused the {what}: {detail} ({fix})", "http", error.code)
        if error.code == 404 and not detail:
            return self._not_mammoxai(f"it has no {error.url.split('?')[0][len(self.url):]} endpoint", status=404)
        detail = detail or error.reason or "no explanation"
        return MammoXAIClientError(f"The server refused the {what} (HTTP {error.code}): {detail}", "http", error.code)

    def _timeout(self, what: str, timeout: float) -> MammoXAIClientError:
        message = f"The {what} timed out after {timeout:g} s: the server at {self.url} is busy or stuck; try again"
        return MammoXAIClientError(message, "timeout")

    def _not_mammoxai(self, why: str, status: int | None = None) -> MammoXAIClientError:
        message = f"{self.url} is not a MammoXAI server ({why}): check the URL and port"
        return MammoXAIClientError(message, "not_mammoxai", status)


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _safe_name(name: str) -> str:
    """A file name that stays inside its folder whatever the server sent."""
    return _SAFE_NAME.sub("_", os.path.basename(name)).lstrip(".") or "file"


def _suffix(filename: str) -> str:
    return ".nii.gz" if filename.endswith(".nii.gz") else os.path.splitext(filename)[1] or ".nrrd"


def _filename(disposition: str) -> str | None:
    if not disposition:
        return None
    message = email.message.Message()
    message["Content-Disposition"] = disposition
    return message.get_filename()


def _write(folder: str, name: str, data: bytes) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as stream:
        stream.write(data)
    return path


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """Encode form ``fields`` and ``files`` (name -> (file name, bytes, type)) as multipart/form-data."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    # name="..." and filename="..." are HTTP's quoted strings, not Python's repr (B907)
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())  # noqa: B907
        chunks.append(value.encode("utf-8") + b"\r\n")
    for name, (filename, data, mime) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'  # noqa: B907
        chunks.append(f"{head}Content-Type: {mime}\r\n\r\n".encode())
        chunks.append(data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _parse_multipart(content_type: str, data: bytes) -> list[tuple[str | None, str | None, bytes]]:
    """(form name, file name, payload) of each part of a multipart body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data
    )
    if not message.is_multipart():
        return []
    return [
        (
            part.get_param("name", header="content-disposition"),
            part.get_filename(),
            part.get_payload(decode=True) or b"",
        )
        for part in message.iter_parts()
    ]
