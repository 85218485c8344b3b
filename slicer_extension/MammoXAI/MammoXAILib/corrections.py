"""Corrections that are saved on disk until the server they were made for has accepted them.

A clinician's correction (class, BI-RADS, lesion marks) is work that must not be lost because the server was
down, slow or refused it for a reason the user can fix. :class:`PendingCorrections` writes each one to a folder
*before* it is sent and deletes it only after the server answered with success; anything still there is sent
again by :meth:`PendingCorrections.send_all`, which the panel calls on connect and after each save the server
accepted (so kept corrections go out as soon as the server is back, and a server that is still down costs one
timeout per save, not two).

A correction belongs to the server it was made for: an image id names an image of *that* server's datastore, and
another server may hold a different image under the same id. Each record names its server and lives in a
sub-folder of that server, so a panel connected to another server neither sends nor overwrites it; the panel says
how many wait for another server (:meth:`PendingCorrections.elsewhere`).

Records of an earlier version of the panel name no server (``*.pending.json`` in the folder itself). Which server
they were made for cannot be told: the last server connected is not it when a save failed on one server and the
user then connected to another. They are therefore never sent on their own: they stay where they are, the panel
counts them (:meth:`PendingCorrections.unassigned`), and only the user's explicit choice sends them to the
connected server (:meth:`PendingCorrections.adopt_unassigned`).

Files are written atomically and durably (temporary file, ``fsync``, rename), so neither a crash nor a power cut
leaves half a correction. A record that cannot be read all the same (a disk fault, an edit by hand) is renamed to
``*.damaged`` beside it, never deleted, and listed by :meth:`PendingCorrections.damaged` for the panel to name.

Example:
    store = PendingCorrections(os.path.join(settings_folder, "pending"), "http://127.0.0.1:8000")
    store.put("case1", label)
    sent, failures = store.send_all(client)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .client import MammoXAIClient
from .errors import MammoXAIClientError

__all__ = ["PendingCorrection", "PendingCorrections"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SUFFIX = ".pending.json"
_DAMAGED = ".damaged"


@dataclass(frozen=True)
class PendingCorrection:
    """A correction not yet accepted by its server, and why the last attempt failed (``""`` if never tried)."""

    image_id: str
    tag: str
    label: dict[str, Any]
    last_error: str
    server: str
    """The URL of the server it was made for; ``""`` for a record of an earlier version of the panel."""


class PendingCorrections:
    """The unsent corrections of one server, one JSON file per image and tag; the newest correction of an image wins.

    Args:
        folder: where every server's corrections live, one sub-folder each; created when missing. Keep it outside
            the temporary download folder.
        server: the URL of the connected server (as :class:`MammoXAIClient` normalises it): the one this store
            writes for and sends to.
    """

    def __init__(self, folder: str, server: str) -> None:
        self.folder = folder
        self.server = server
        self.server_folder = os.path.join(folder, _folder_name(server))
        os.makedirs(self.server_folder, exist_ok=True)

    def put(self, image_id: str, label: dict[str, Any], tag: str = "final", last_error: str = "") -> str:
        """Store (or replace) the correction of ``image_id`` for this server; returns its file."""
        path = self._path(image_id, tag)
        record = {"server": self.server, "image_id": image_id, "tag": tag, "label": label, "last_error": last_error}
        handle, temporary = tempfile.mkstemp(dir=self.server_folder, prefix=".writing-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(record, stream, indent=1)
                stream.flush()
                os.fsync(stream.fileno())  # else a power cut after the rename can leave an empty record
            os.replace(temporary, path)
        except BaseException:
            os.remove(temporary)
            raise
        return path

    def pending(self) -> list[PendingCorrection]:
        """This server's stored corrections, oldest file first."""
        return _read_all(self.server_folder)

    def elsewhere(self) -> dict[str, int]:
        """How many corrections wait for each other server, by its URL."""
        counts: Counter[str] = Counter()
        for name in sorted(os.listdir(self.folder)):
            folder = os.path.join(self.folder, name)
            if folder != self.server_folder and os.path.isdir(folder):
                counts.update(correction.server for correction in _read_all(folder))
        return dict(counts)

    def unassigned(self) -> list[PendingCorrection]:
        """Corrections of an earlier version of the panel, which name no server; never sent without the user."""
        return _read_all(self.folder)

    def adopt_unassigned(self) -> int:
        """Make the corrections that name no server this server's (the user said they were made for it).

        A correction this server already holds for the same image and tag is newer, and wins. Returns how many
        were adopted.
        """
        adopted = 0
        for correction in self.unassigned():
            if not os.path.exists(self._path(correction.image_id, correction.tag)):
                self.put(correction.image_id, correction.label, correction.tag, correction.last_error)
                adopted += 1
            os.remove(_record_path(self.folder, correction.image_id, correction.tag))
        return adopted

    def damaged(self) -> list[str]:
        """Record files that could not be read and were set aside (``*.damaged``), in every server's folder."""
        found = []
        for root, _, names in os.walk(self.folder):
            found.extend(os.path.join(root, name) for name in sorted(names) if name.endswith(_DAMAGED))
        return found

    def discard(self, image_id: str, tag: str = "final") -> None:
        """Forget the correction of ``image_id`` (after the server accepted it)."""
        path = self._path(image_id, tag)
        if os.path.exists(path):
            os.remove(path)

    def send(self, client: MammoXAIClient, image_id: str, label: dict[str, Any], tag: str = "final") -> dict[str, Any]:
        """Keep the correction on disk, send it, and forget it once the server accepted it.

        Raises:
            MammoXAIClientError: from the client; the correction stays stored with the error for a later retry.
        """
        self.put(image_id, label, tag)
        try:
            answer = client.save_label(image_id, label, tag=tag)
        except MammoXAIClientError as error:
            self.put(image_id, label, tag, last_error=error.message)
            raise
        self.discard(image_id, tag)
        return answer

    def send_all(self, client: MammoXAIClient) -> tuple[list[str], list[PendingCorrection]]:
        """Send this server's stored corrections; returns the image ids sent and the corrections still pending.

        Stops at the first unreachable or timed-out server (the rest would fail the same way); a correction
        the server refuses (e.g. an image since removed) stays pending with the server's message.
        """
        sent = []
        for correction in self.pending():
            try:
                self.send(client, correction.image_id, correction.label, correction.tag)
            except MammoXAIClientError as error:
                if error.kind in MammoXAIClientError.TRANSIENT_KINDS:
                    break
                continue
            sent.append(correction.image_id)
        return sent, self.pending()

    def _path(self, image_id: str, tag: str) -> str:
        return _record_path(self.server_folder, image_id, tag)


def _folder_name(server: str) -> str:
    """A folder name of its own for each server URL: readable, and told apart by a hash where the URLs differ only
    in characters a file name cannot hold."""
    readable = _UNSAFE.sub("_", server.split("://", 1)[-1])
    return f"{readable}-{hashlib.sha1(server.encode('utf-8')).hexdigest()[:10]}"


def _record_path(folder: str, image_id: str, tag: str) -> str:
    return os.path.join(folder, f"{_UNSAFE.sub('_', image_id)}.{_UNSAFE.sub('_', tag)}{_SUFFIX}")


def _read_all(folder: str) -> list[PendingCorrection]:
    """The readable records of ``folder``, oldest file first; a damaged one is set aside (see the module)."""
    paths = [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(_SUFFIX)]
    corrections = []
    for path in sorted(paths, key=os.path.getmtime):
        try:
            with open(path, encoding="utf-8") as stream:
                record = json.load(stream)
            corrections.append(
                PendingCorrection(
                    str(record["image_id"]),
                    str(record["tag"]),
                    dict(record["label"]),
                    str(record.get("last_error", "")),
                    str(record.get("server", "")),
                )
            )
        except (ValueError, KeyError, TypeError):  # not JSON, not text, or not a record
            _set_aside(path)
    return corrections


def _set_aside(path: str) -> None:
    """Rename a damaged record to a free ``*.damaged`` name beside it: it is no longer read, and nothing is lost."""
    aside, number = path + _DAMAGED, 1
    while os.path.exists(aside):
        aside, number = f"{path}.{number}{_DAMAGED}", number + 1
    os.rename(path, aside)
