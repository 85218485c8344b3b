"""A local datastore that only ever holds mammograms and valid MammoXAI labels.

MONAI Label's :class:`~monailabel.datastore.local.LocalDatastore` copies whatever a client uploads into the
studies folder. A CT series, a text file or a truncated DICOM would then sit there and fail every later
inference and training run, far from the upload that caused it. :class:`MammogramDatastore` reads each upload
with :func:`read_storable` (readable, with a breast in view) and checks each label against
:data:`mammoxai.schema.LABEL_SCHEMA` first; a file that fails is answered with a 4xx naming the problem, and
nothing is written.

Ids and label tags become file and folder names, so both must be plain names (no separators, no ``..``): a
request cannot reach outside the studies folder. An image, a label and the datastore index ``datastore_v2.json``
are written to a temporary file beside their destination and moved over it with :func:`os.replace`, so a save
interrupted midway (a killed server, a training run stopped with ``DELETE /train/``, a full disk) leaves the
previous version, never a truncated file.

More than one process changes the index: MONAI Label runs each training task in a subprocess that builds the app,
and so this datastore, again; building it reconciles the index with the folder and writes it back. LocalDatastore
changes its in-memory copy of the index and writes the whole copy over the file, and reloads the file only when its
modification time differs from the one it last wrote, at the kernel clock's resolution (a few milliseconds): a
process whose copy was loaded before another process's write overwrites that write, and a write within the same
clock tick is not noticed at all. Here every change is one step under the datastore's lock file instead: reload
the index if its bytes differ from those last loaded or written, change it, write it atomically. A change made by
any process is then made to the latest index and seen by the next.

Within the server, request threads read the index without the lock (``GET /datastore``, the train guard counting
final labels, the strategies) while the folder watcher's refresh changes it. LocalDatastore changes it in place: a
refresh empties it and fills it again, and empties each image's labels and fills them again, so a read landing in
between saw no final label (the train guard refused training: "0 final label(s)") or failed with "dictionary changed
size during iteration". Here a step changes a draft instead, seen only by the thread making the step, and the
finished draft replaces the index in one assignment before the lock is released: a reader sees the index as it was
before a step or as it is after it, never in between. The index readers see is never changed: a draft has its own
dict of images, and an image's entry is copied before it is changed (:meth:`MammogramDatastore._changeable_entry`);
entries left alone are shared, so a step copies one dict, not the whole index.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag
from watchdog.events import FileSystemMovedEvent

from lib.http_errors import client_errors, conflict, not_found
from mammoxai.errors import MammoXAIError
from mammoxai.io import Mammogram, read_mammogram, segment_breast
from mammoxai.io.atomic import atomic_write_bytes
from mammoxai.io.preprocess import check_intensity_scaling, check_scalable
from mammoxai.schema import validate_label

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "UNREADABLE_KEY", "MammogramDatastore", "read_storable"]

IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".tif", ".tiff", ".pgm")
"""File types :func:`mammoxai.io.read_mammogram` reads; the studies folder is scanned for these."""

UNREADABLE_KEY = "unreadable"
"""Image-info key of an image found not to be a readable mammogram, or one without a breast in view
(:func:`read_storable`): ``{"problem": <message>, "file": <stamp>}``."""

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class MammogramDatastore(LocalDatastore):
    """:class:`LocalDatastore` over a folder of mammograms that validates what it stores.

    An upload is stored under its own suffix, or as ``.dcm`` when it is DICOM without one (PACS exports often
    are); its image info records the shape, laterality and view read from it. An image in which no breast is found
    is refused (422), as inference would refuse it (:func:`read_storable`). An id in use is refused (409):
    replacing the image would leave its labels describing another image. A label must be MammoXAI label
    JSON whose class is one of the model's classes and whose lesions lie inside the image, and its image one that
    :func:`read_storable` accepts (an image copied into the studies folder by hand is not checked on arrival); it is
    stored as ``labels/<tag>/<image id>.json``.

    Args:
        datastore_path: the studies folder; images are the files in it with one of ``IMAGE_SUFFIXES``.
        class_names: the served model's classes; a label's ``class`` must be one of them.
        auto_reload: watch the folder for images added or removed outside the server.
        read_only: do not reconcile ``datastore_v2.json`` with the folder at start-up.
        intensity_scaling: the served model's (:func:`read_storable`); uploads it cannot scale are refused.

    Example:
        datastore = MammogramDatastore("studies", class_names=["normal", "benign", "malignant"])
        datastore.add_image("case1", "upload.tmp", {})
    """

    # set on first use, which is inside LocalDatastore.__init__: it loads and reconciles the index
    _index_bytes: bytes | None = None  # the index file's content as last loaded or written
    _index_lock: FileLock | None = None
    _published: LocalDatastoreModel | None = None  # the index as every thread but the one making a step sees it
    _draft: LocalDatastoreModel | None = None  # the index being changed by the step of thread _draft_thread
    _draft_thread: int | None = None

    @property
    def _datastore(self) -> LocalDatastoreModel:
        """The index (LocalDatastore's attribute): the draft to the thread making a step (:meth:`_latest_index`), the
        last finished index to every other thread."""
        if self._draft_thread == threading.get_ident():
            return self._draft
        return self._published

    @_datastore.setter
    def _datastore(self, index: LocalDatastoreModel) -> None:
        # outside a step: LocalDatastore.__init__, or an index loaded whole from the file (under the lock)
        if self._draft_thread == threading.get_ident():
            self._draft = index
        else:
            self._published = index

    def __init__(
        self,
        datastore_path: str,
        class_names: Sequence[str],
        auto_reload: bool = True,
        read_only: bool = False,
        intensity_scaling: str = "breast_percentiles",
    ) -> None:
        self.intensity_scaling = check_intensity_scaling(intensity_scaling)
        super().__init__(
            datastore_path,
            extensions=[f"*{suffix}" for suffix in IMAGE_SUFFIXES],
            auto_reload=auto_reload,
            read_only=read_only,
        )
        self.class_names = list(class_names)
        if auto_reload:  # LocalDatastore's watcher handles files created, deleted and modified, not moved into place
            self._handler.on_moved = self._on_moved_event

    def _to_id(self, file: str) -> tuple[str, str]:
        """``(image id, suffix)`` of a file name in the studies folder: the name less its suffix at the end.
        LocalDatastore removes the suffix wherever it occurs in the name, so an image uploaded under the id
        ``case1.dcm`` (stored as ``case1.dcm.dcm``) became ``case1`` when the index was rebuilt, and its labels were
        lost with its id."""
        _, suffix = super()._to_id(file)
        return (file[: -len(suffix)] if suffix and file.endswith(suffix) else file), suffix

    def _on_moved_event(self, event: FileSystemMovedEvent) -> None:
        """A file moved into place: the index, replaced by another process's atomic write (a training or scoring run),
        is reloaded; an image renamed into the folder (rsync, a copy finished under a temporary name) is indexed."""
        if event.dest_path == self._datastore_config_path:
            self._init_from_datastore_file()
        else:
            self.refresh()

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        # the file is a server-side temporary copy: the upload is named by the id the client chose
        with client_errors(files={image_filename: f"upload for image {image_id!r}"}):
            _check_name("image id", image_id)
            mammogram = read_storable(image_filename, self.intensity_scaling)
            suffix = _storage_suffix(image_id, image_filename, mammogram)
        name = self._filename(image_id, suffix)
        info = {
            **(image_info or {}),
            "shape": list(mammogram.shape),
            "laterality": mammogram.laterality,
            "view": mammogram.view,
            "ts": int(time.time()),
            "name": name,
        }
        with self._latest_index():
            if image_id in self._datastore.objects:  # replacing it would orphan its labels, a clinician's work
                raise conflict(
                    f"image id {image_id!r}",
                    "is in the datastore already",
                    f"upload under another id, or delete it first (DELETE /datastore/image?id={image_id})",
                )
            atomic_write_bytes(os.path.join(self._datastore.image_path(), name), Path(image_filename).read_bytes())
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=suffix))
            self._update_datastore_file()
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self.get_image_uri(image_id)
        if not image:
            raise _image_not_found(image_id)
        with client_errors(files={image: f"image {image_id!r}"}):
            _check_name("label tag", label_tag)
            record = _read_json(label_filename)
            # an image without a breast would fail every training run its label joins, as it fails inference
            validate_label(record, class_names=self.class_names, image_shape=read_storable(image).shape)
        return self._store_label(image_id, label_filename, label_tag, label_info, ".json")

    def save_model_output(self, image_id: str, filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a file the server made (e.g. a batch-inference heatmap) as the ``label_tag`` label of ``image_id``,
        unchecked, under its own suffix; uploads go through :meth:`save_label`. Written like a label: atomically,
        in one step with the index."""
        _check_name("label tag", label_tag)
        _, suffix = self._to_id(os.path.basename(filename))
        return self._store_label(image_id, filename, label_tag, label_info, suffix)

    def _store_label(self, image_id: str, filename: str, tag: str, label_info: dict[str, Any], suffix: str) -> str:
        folder = self._datastore.label_path(tag)
        name = self._filename(image_id, suffix)
        with self._latest_index():
            image_entry = self._changeable_entry(image_id)
            if image_entry is None:  # unknown, or removed by another process since the caller checked
                raise _image_not_found(image_id)
            os.makedirs(folder, exist_ok=True)
            atomic_write_bytes(os.path.join(folder, name), Path(filename).read_bytes())
            info = {**(label_info or {}), "ts": int(time.time()), "name": name}
            image_entry.labels[tag] = DataModel(info=info, ext=suffix)
            self._update_datastore_file()
        return image_id

    def mark_unreadable(self, image_id: str, problem: str) -> None:
        """Record that ``image_id`` is not a readable mammogram (a CT, a damaged file dropped into the studies folder)
        or has no breast in view (:func:`read_storable`): :meth:`get_unlabeled_images` leaves it out from now on,
        until its file changes. ``problem`` is kept in the image info, which clients read: name the image by its id."""
        self.update_image_info(image_id, {UNREADABLE_KEY: {"problem": problem, "file": self._file_stamp(image_id)}})

    def get_unlabeled_images(self, label_tag: str | None = None, labels: Sequence[str] | None = None) -> list[str]:
        """Images without a ``final`` label, but those marked unreadable (:meth:`mark_unreadable`): a strategy would
        propose a case that can be neither explained nor labelled, again and again."""
        objects = self._datastore.objects  # one index throughout: a refresh may replace it meanwhile
        return [
            image_id
            for image_id, entry in objects.items()
            if not entry.labels.get(DefaultLabelTag.FINAL) and not self._marked_unreadable(image_id, entry)
        ]

    def _marked_unreadable(self, image_id: str, entry: ImageLabelModel) -> bool:
        mark = entry.image.info.get(UNREADABLE_KEY)
        return bool(mark) and mark.get("file") == self._file_stamp(image_id)

    def _file_stamp(self, image_id: str) -> str:
        """``"<mtime_ns>-<size>"`` of the image's file (``""`` when it is gone): a replaced file is read anew."""
        try:
            stat = os.stat(self.get_image_uri(image_id))
        except OSError:
            return ""
        return f"{stat.st_mtime_ns}-{stat.st_size}"

    def remove_image(self, image_id: str) -> None:
        """Delete the image's file, its labels and its index entry in one step. LocalDatastore deletes the files and,
        when it watches the folder, leaves the entry to the watcher: the deleted image stayed listed until the
        watcher's refresh, and uploading it again straight after the delete was refused with 409."""
        with self._latest_index():
            if image_id not in self._datastore.objects:
                raise _image_not_found(image_id)
            super().remove_image(image_id)
            self._datastore.objects.pop(image_id, None)
            self._update_datastore_file()

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Delete the label's file and its index entry in one step. LocalDatastore deletes the file and, when it
        watches the folder, leaves the entry to the watcher, which looks for image suffixes only: a deleted ``.json``
        correction stayed listed, its image never offered again and every training request refused for it."""
        with self._latest_index():
            if self._datastore.label(label_id, label_tag) is None:
                raise _label_not_found(label_id, label_tag)
            super().remove_label(label_id, label_tag)
            entry = self._changeable_entry(label_id)
            if entry is not None:
                entry.labels.pop(label_tag, None)
            self._update_datastore_file()

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        # LocalDatastore updates the entry readers see in place
        with self._latest_index():
            entry = self._changeable_entry(image_id)
            if entry is None:
                raise _image_not_found(image_id)
            entry.image.info.update(info)
            self._update_datastore_file()

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        with self._latest_index():
            if self._datastore.label(label_id, label_tag) is None:
                raise _label_not_found(label_id, label_tag)
            self._changeable_entry(label_id).labels[label_tag].info.update(info)
            self._update_datastore_file()

    def set_name(self, name: str) -> None:
        with self._latest_index():
            super().set_name(name)

    def set_description(self, description: str) -> None:
        with self._latest_index():
            super().set_description(description)

    def status(self) -> dict[str, Any]:
        """LocalDatastore's counts, all taken from one index (LocalDatastore reads it three times)."""
        objects = self._datastore.objects
        tags: dict[str, int] = {}
        for entry in objects.values():
            for tag in entry.labels:
                tags[tag] = tags.get(tag, 0) + 1
        completed = sum(1 for entry in objects.values() if entry.labels.get(DefaultLabelTag.FINAL))
        return {"total": len(objects), "completed": completed, "label_tags": tags}

    def _reconcile_datastore(self) -> None:
        # compares the index with the folder and writes the differences: one step, or a save in between is lost
        with self._latest_index():
            super()._reconcile_datastore()

    def _remove_non_existing(self) -> int:
        """Drop the images, and the labels, whose files are gone; return how many. LocalDatastore empties the index
        and fills it again, emptying and refilling each image's labels: here the draft gets a new dict, and an image
        that loses a label a new entry."""
        self._init_from_datastore_file()
        index = self._datastore
        objects: dict[str, ImageLabelModel] = {}
        removed = 0
        for image_id, entry in index.objects.items():
            if not os.path.exists(os.path.join(index.image_path(), self._filename(image_id, entry.image.ext))):
                logger.info(f"Removing non existing Image Id: {image_id}")
                removed += 1
                continue
            labels = {
                tag: label
                for tag, label in entry.labels.items()
                if os.path.exists(os.path.join(index.label_path(tag), self._filename(image_id, label.ext)))
            }
            if len(labels) < len(entry.labels):
                logger.info(f"Removing non existing labels of {image_id!r}: {sorted(set(entry.labels) - set(labels))}")
                removed += len(entry.labels) - len(labels)
                entry = entry.model_copy(update={"labels": labels})
            objects[image_id] = entry
        index.objects = objects
        return removed

    def _add_non_existing_labels(self, tag: str) -> int:
        """Index the files of ``labels/<tag>/`` that name an image but are missing from its entry.

        LocalDatastore looks there only for files with an image suffix, and labels here are ``.json`` (model output
        keeps its own suffix): a correction whose index entry was lost (the index deleted or restored from a backup,
        its image moved away and back) would stay on disk unseen, its image offered again as unlabeled and left out
        of training. Temporary files of an interrupted save (``.<name>.<random>.tmp``) name no image id.
        """
        added = 0
        for path in sorted(Path(self._datastore.label_path(tag)).iterdir()):
            image_id = path.name[: -len(path.suffix)] if path.suffix else ""
            entry = self._datastore.objects.get(image_id)
            if entry is None or tag in entry.labels or not path.is_file():
                continue
            logger.info(f"indexing label {tag!r} of image {image_id!r} found on disk: {path.name}")
            entry = self._changeable_entry(image_id)
            entry.labels[tag] = DataModel(info={"ts": int(path.stat().st_mtime), "name": path.name}, ext=path.suffix)
            added += 1
        return added

    @contextmanager
    def _latest_index(self) -> Iterator[None]:
        """Hold the datastore lock with the in-memory index equal to the file; a change made inside and written
        with :meth:`_update_datastore_file` before leaving is made to the latest index of every process.

        Inside, this thread's :attr:`_datastore` is a draft: a copy of the index with its own dict of images, whose
        entries are those of the index until :meth:`_changeable_entry` copies one to change it. Other threads read
        the index meanwhile. Leaving, the draft becomes the index, still under the lock: the next step, of any
        thread, starts from it. A step inside a step changes the same draft."""
        with self._lock():
            if self._draft_thread == threading.get_ident():
                self._init_from_datastore_file()
                yield
                return
            index = self._published
            self._draft = index.model_copy(update={"objects": dict(index.objects)})
            self._draft_thread = threading.get_ident()
            try:
                self._init_from_datastore_file()  # an unreadable index is logged and then replaced by this copy
                yield
            finally:  # also after a failure: the draft may hold an index reloaded from the file, as _index_bytes says
                self._published = self._draft
                self._draft_thread = None
                self._draft = None

    def _changeable_entry(self, image_id: str) -> ImageLabelModel | None:
        """The draft's entry of ``image_id`` (``None`` if none), copied first down to its info dicts: the entry may
        be the index's too, and readers must not see it change. Only inside :meth:`_latest_index`."""
        if self._draft_thread != threading.get_ident():
            raise RuntimeError("the datastore index is changed only inside a step (_latest_index)")
        entry = self._draft.objects.get(image_id)
        if entry is not None:
            entry = ImageLabelModel(
                image=DataModel(ext=entry.image.ext, info=dict(entry.image.info)),
                labels={tag: DataModel(ext=label.ext, info=dict(label.info)) for tag, label in entry.labels.items()},
            )
            self._draft.objects[image_id] = entry
        return entry

    def _lock(self) -> FileLock:
        """One lock object per datastore: re-entered by nested steps of one thread, exclusive between threads (each
        thread locks its own descriptor) and between processes (``flock`` on the studies folder's ``.lock``)."""
        if self._index_lock is None:
            self._index_lock = FileLock(self._lock_file)
        return self._index_lock

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        """Reload the index when its bytes differ from those last loaded or written (not its modification time)."""
        with self._lock():
            try:
                data = Path(self._datastore_config_path).read_bytes()
            except FileNotFoundError:
                return
            if data == self._index_bytes:
                return
            try:
                index = LocalDatastoreModel.model_validate_json(data)
            except ValueError as error:
                logger.error(f"datastore index {self._datastore_config_path} is not valid: {error}")
                if throw_exception:
                    raise
                return
            index.base_path = self._datastore_path
            self._datastore = index
            self._index_bytes = data

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write the index atomically (LocalDatastore truncates it first); ``lock=False``: the caller holds the lock."""
        with self._lock() if lock else nullcontext():
            data = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str).encode("utf-8")
            atomic_write_bytes(self._datastore_config_path, data)
            self._index_bytes = data


def read_storable(path: str, intensity_scaling: str = "breast_percentiles") -> Mammogram:
    """The mammogram in ``path``, refused unless inference and training can use it: readable, with a breast in view,
    and scalable by the served model's ``intensity_scaling`` (:func:`mammoxai.io.preprocess.check_scalable`).

    Inference and training crop every image to its breast (:func:`mammoxai.io.segment_breast`), so an image in which
    none is found (a blank exposure, a tiny image, a test pattern) was stored, then refused by every inference of it
    and left out of training. The segmentation needs no model and runs on a copy of about 512 pixels a side: a
    fraction of a second for a full-field image, little beside reading and sending it.

    Raises:
        MammoXAIError: the file is not a readable mammogram, no breast is found in it, or the served model's
            intensity scaling cannot scale it.
    """
    mammogram = read_mammogram(path)
    check_scalable(mammogram, intensity_scaling)
    segment_breast(mammogram.pixels, source=mammogram.source)
    return mammogram


def _image_not_found(image_id: str) -> Exception:
    return not_found(f"image {image_id!r}", "save labels only for images in the datastore (GET /datastore/?output=all)")


def _label_not_found(image_id: str, tag: str) -> Exception:
    return not_found(f"label {tag!r} of image {image_id!r}", "list the labels with GET /datastore/?output=all")


def _check_name(kind: str, name: str) -> None:
    # ids and tags become file and folder names in the studies folder: no separators, no "..", no hidden files
    if not _PLAIN_NAME.fullmatch(name or ""):
        raise MammoXAIError(
            f"{kind} {name!r}",
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
