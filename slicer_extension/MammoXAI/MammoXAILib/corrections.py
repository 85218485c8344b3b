"""Corrections that are saved on disk until the server has accepted them.

A clinician's correction (class, BI-RADS, lesion marks) is work that must not be lost because the server was
down, slow or refused it for a reason the user can fix. :class:`PendingCorrections` writes each one to a folder
*before* it is sent and deletes it only after the server answered with success; anything still there is sent
again by :meth:`PendingCorrections.send_all` (the panel calls it on connect and before each new save). Files
are written atomically (temporary file + rename), so a crash never leaves half a correction.

Example:
    store = PendingCorrections(os.path.join(settings_folder, "pending"))
    store.put("case1", label)
    sent, failures = store.send_all(client)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

from .client import MammoXAIClient
from .errors import MammoXAIClientError

__all__ = ["PendingCorrection", "PendingCorrections"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class PendingCorrection:
    """A correction not yet accepted by the server, and why the last attempt failed (``""`` if never tried)."""

    image_id: str
    tag: str
    label: dict[str, Any]
    last_error: str


class PendingCorrections:
    """A folder of unsent corrections, one JSON file per image and tag; the newest correction of an image wins.

    Args:
        folder: where the files live; created when missing. Keep it outside the temporary download folder.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def put(self, image_id: str, label: dict[str, Any], tag: str = "final", last_error: str = "") -> str:
        """Store (or replace) the correction of ``image_id``; returns its file."""
        path = self._path(image_id, tag)
        record = {"image_id": image_id, "tag": tag, "label": label, "last_error": last_error}
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".writing-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(record, stream, indent=1)
        os.replace(temporary, path)
        return path

    def pending(self) -> list[PendingCorrection]:
        """Every stored correction, oldest file first."""
        paths = [os.path.join(self.folder, name) for name in os.listdir(self.folder) if name.endswith(".pending.json")]
        corrections = []
        for path in sorted(paths, key=os.path.getmtime):
            with open(path, encoding="utf-8") as stream:
                record = json.load(stream)
            corrections.append(
                PendingCorrection(record["image_id"], record["tag"], record["label"], record.get("last_error", ""))
            )
        return corrections

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
        """Send every stored correction; returns the image ids sent and the corrections still pending.

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
        return os.path.join(self.folder, f"{_UNSAFE.sub('_', image_id)}.{_UNSAFE.sub('_', tag)}.pending.json")
