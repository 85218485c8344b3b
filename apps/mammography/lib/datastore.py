"""A local datastore that only ever holds mammograms and valid MammoXAI labels.

MONAI Label's :class:`~monailabel.datastore.local.LocalDatastore` copies whatever a client uploads into the
studies folder. A CT series, a text file or a truncated DICOM would then sit there and fail every later
inference and training run, far from the upload that caused it. :class:`MammogramDatastore` reads each upload
with :func:`mammoxai.io.read_mammogram` and checks each label against :data:`mammoxai.schema.LABEL_SCHEMA`
first; a file that fails is answered with a 4xx naming the problem, and nothing is written.

Ids and label tags become file and folder names, so both must be plain names (no separators, no ``..``): a
request cannot reach outside the studies folder. A label and the datastore index ``datastore_v2.json`` are
written to a temporary file beside their destination and moved over it with :func:`os.replace`, so a save
interrupted midway (a killed server, a full disk) leaves the previous version, never a truncated file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from filelock import FileLock
from lib.http_errors import client_errors, not_found
from monailabel.datastore.local import DataModel, LocalDatastore

from mammoxai.errors import MammoXAIError
from mammoxai.io import Mammogram, read_mammogram
from mammoxai.schema import validate_label

__all__ = ["IMAGE_SUFFIXES", "MammogramDatastore"]

IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".tif", ".tiff", ".pgm")
"""File types :func:`mammoxai.io.read_mammogram` reads; the studies folder is scanned for these."""

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
            _check_name("image id", image_id)
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
            _check_name("label tag", label_tag)
            record = _read_json(label_filename)
            validate_label(record, class_names=self.class_names, image_shape=read_mammogram(image).shape)
        # LocalDatastore.save_label copies into place; a copy cut short would leave a truncated label
        folder = self._datastore.label_path(label_tag)
        name = self._filename(image_id, ".json")
        with FileLock(self._lock_file):
            os.makedirs(folder, exist_ok=True)
            _atomic_write(os.path.join(folder, name), Path(label_filename).read_bytes())
            info = {**(label_info or {}), "ts": int(time.time()), "name": name}
            self._datastore.objects[image_id].labels[label_tag] = DataModel(info=info, ext=".json")
            self._update_datastore_file(lock=False)
        return image_id

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write the index atomically: LocalDatastore truncates it first, and a truncated index stops the server."""
        with FileLock(self._lock_file) if lock else nullcontext():
            index = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            _atomic_write(self._datastore_config_path, index.encode("utf-8"))
            self._config_ts = os.stat(self._datastore_config_path).st_mtime


def _check_name(kind: str, name: str) -> None:
    # ids and tags become file and folder names in the studies folder: no separators, no "..", no hidden files
    if not _PLAIN_NAME.fullmatch(name or ""):
        raise MammoXAIError(
            f"{kind} {name!r}",
            "is not a plain file name",
            "use letters, digits, '.', '-' and '_', starting with a letter or digit",
        )


def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or the new one, never a part."""
    folder, name = os.path.split(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


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
