"""A local datastore that only ever holds mammograms and valid MammoXAI labels.

MONAI Label's :class:`~monailabel.datastore.local.LocalDatastore` copies whatever a client uploads into the
studies folder. A CT series, a text file or a truncated DICOM would then sit there and fail every later
inference and training run, far from the upload that caused it. :class:`MammogramDatastore` reads each upload
with :func:`mammoxai.io.read_mammogram` and checks each label against :data:`mammoxai.schema.LABEL_SCHEMA`
first; a file that fails is answered with a 4xx naming the problem, and nothing is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lib.http_errors import client_errors, not_found
from monailabel.datastore.local import LocalDatastore

from mammoxai.errors import MammoXAIError
from mammoxai.io import Mammogram, read_mammogram
from mammoxai.schema import validate_label

__all__ = ["IMAGE_SUFFIXES", "MammogramDatastore"]

IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".tif", ".tiff", ".pgm")
"""File types :func:`mammoxai.io.read_mammogram` reads; the studies folder is scanned for these."""

_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class MammogramDatastore(LocalDatastore):
    """:class:`LocalDatastore` over a folder of mammograms that validates what it stores.

    An upload is stored under its own suffix, or as ``.dcm`` when it is DICOM without one (PACS exports often
    are); its image info records the shape, laterality and view read from it. A label must be MammoXAI label
    JSON whose class is one of the model's classes and whose lesions lie inside the image; it is stored as
    ``labels/<tag>/<image id>.json``.

    Args:
        datastore_path: the studies folder; images are the files in it with one of ``IMAGE_SUFFIXES``.
        class_names: the served model's classes; a label's ``class`` must be one of them.
        auto_reload: watch the folder for images added or removed outside the server.
        read_only: do not reconcile ``datastore_v2.json`` with the folder at start-up.

    Example:
        datastore = MammogramDatastore("studies", class_names=["normal", "benign", "malignant"])
        datastore.add_image("case1", "upload.tmp", {})
    """

    def __init__(
        self,
        datastore_path: str,
        class_names: Sequence[str],
        auto_reload: bool = True,
        read_only: bool = False,
    ) -> None:
        super().__init__(
            datastore_path,
            extensions=[f"*{suffix}" for suffix in IMAGE_SUFFIXES],
            auto_reload=auto_reload,
            read_only=read_only,
        )
        self.class_names = list(class_names)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        with client_errors():
            _check_image_id(image_id)
            try:
                mammogram = read_mammogram(image_filename)
            except MammoXAIError as error:
                # the file is a server-side temporary copy: name the upload by the id the client chose
                raise MammoXAIError(f"upload for image {image_id!r}", error.problem, error.fix) from error
            suffix = _storage_suffix(image_id, image_filename, mammogram)
        info = {**(image_info or {}), "shape": list(mammogram.shape)}
        info.update(laterality=mammogram.laterality, view=mammogram.view)
        with _staged(image_filename, suffix) as staged:
            return super().add_image(image_id, staged, info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self.get_image_uri(image_id)
        if not image:
            raise not_found(
                f"image {image_id!r}", "save labels only for images in the datastore (GET /datastore/?output=all)"
            )
        with client_errors():
            record = _read_json(label_filename)
            validate_label(record, class_names=self.class_names, image_shape=read_mammogram(image).shape)
        with _staged(label_filename, ".json") as staged:
            return super().save_label(image_id, staged, label_tag, label_info)


def _check_image_id(image_id: str) -> None:
    # the id becomes a file name in the studies folder: no separators, no "..", no hidden files
    if not _IMAGE_ID.fullmatch(image_id or ""):
        raise MammoXAIError(
            f"image id {image_id!r}",
            "is not a plain file name",
            "use letters, digits, '.', '-' and '_', starting with a letter or digit",
        )


def _storage_suffix(image_id: str, path: str, mammogram: Mammogram) -> str:
    """The suffix to store an upload under: its own when supported, ``.dcm`` for DICOM content without one."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return suffix
    if mammogram.header:  # only DICOM carries a header; PACS exports often have no suffix
        return ".dcm"
    raise MammoXAIError(
        f"upload for image {image_id!r}",
        f"is an image without a known suffix ({suffix or 'none'})",
        f"send the file name with one of {', '.join(IMAGE_SUFFIXES)}",
    )


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MammoXAIError("label", f"is not JSON ({error})", "upload a MammoXAI label JSON file") from error


@contextmanager
def _staged(path: str, suffix: str) -> Iterator[str]:
    """A private copy of ``path`` named with ``suffix``: LocalDatastore stores a file under the suffix it has."""
    with tempfile.TemporaryDirectory(prefix="mammoxai-upload-") as folder:
        staged = os.path.join(folder, f"upload{suffix}")
        shutil.copyfile(path, staged)
        yield staged
