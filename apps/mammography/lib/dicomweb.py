"""A PACS as the datastore: the mammograms of a DICOMweb server (e.g. Orthanc), one image per SOP instance.

MONAI Label's :class:`~monailabel.datastore.dicom.DICOMWebDatastore` treats a *series* as one image: it stacks
the series' instances into a NIfTI volume and stores labels as DICOM SEG. That is right for CT and wrong for
mammography, where vendors put several views (L CC, L MLO, ...) into one series and each view is a 2D image with
its own laterality, view and geometry. :class:`DICOMwebMammogramDatastore` lists the PACS's instances of
modality MG with QIDO-RS, fetches each one unchanged with WADO-RS into a local cache (one ``<SOP Instance
UID>.dcm`` file per image) and serves that cache as a :class:`~lib.datastore.MammogramDatastore`: every image is
read and validated as a mammogram, and its DICOM header is kept in the image info.

Labels are MammoXAI label JSON (class, BI-RADS, lesion boxes), which has no DICOM object a PACS would store
without a Structured Report encoding; they are kept in the label store of the cache folder
(``<cache>/labels/<tag>/<SOP Instance UID>.json``), written atomically, and read back from there by the app and
the trainer. The cache folder therefore holds the clinicians' work: put it on backed-up storage
(``--conf dicomweb_cache <folder>``). Cached images of instances deleted on the PACS stay in the cache.

Example:
    client = DICOMwebClient("http://127.0.0.1:8042/dicom-web")
    datastore = DICOMwebMammogramDatastore(client, class_names=["normal", "benign", "malignant"], cache_path="cache")
    datastore.list_images()  # SOP Instance UIDs of the MG instances on the PACS
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import requests
from dicomweb_client import DICOMwebClient
from monailabel.utils.others.generic import md5_digest
from pydicom.dataset import Dataset

from lib.datastore import MammogramDatastore, read_storable
from lib.http_errors import client_errors
from mammoxai.errors import MammoXAIError

__all__ = ["DICOMwebMammogramDatastore"]

logger = logging.getLogger(__name__)

MODALITY = "MG"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_UID_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018"}


class DICOMwebMammogramDatastore(MammogramDatastore):
    """The MG instances of a DICOMweb server, cached locally, one image per SOP Instance UID.

    The image id is the SOP Instance UID. The PACS is queried again at most every ``refresh_seconds`` when the
    images are listed, and at once for an id the cache does not hold yet (a study that just arrived can be
    inferred before the next listing). Instances that :func:`~lib.datastore.read_storable` refuses, as it refuses
    uploads (unreadable, or no breast in view), are logged and left out, so one broken object on the PACS does not
    stop the others being served; an instance whose retrieval failed on the network is tried again at the next
    listing, or at the next request naming it.

    Args:
        client: a ``dicomweb_client.DICOMwebClient`` for the server's DICOMweb root (QIDO-RS and WADO-RS).
        class_names: the served model's classes; a label's ``class`` must be one of them.
        cache_path: folder under which the cache of this server lives (a sub-folder named by a hash of its URL).
        search_filter: extra QIDO-RS filters, e.g. ``{"StudyDate": "20240101-"}``; ``Modality`` is always MG.
        refresh_seconds: how long a listing of the PACS is reused.
    """

    def __init__(
        self,
        client: DICOMwebClient,
        class_names: Sequence[str],
        cache_path: str,
        search_filter: dict[str, Any] | None = None,
        refresh_seconds: float = 60.0,
    ) -> None:
        self.client = client
        self.search_filter = {**(search_filter or {}), "Modality": MODALITY}
        self.refresh_seconds = refresh_seconds
        self._synced_at = float("-inf")
        self._sync_lock = threading.RLock()
        self._unreadable: set[str] = set()  # instances that are no storable mammogram, not asked for again
        folder = os.path.join(cache_path, md5_digest(client.base_url))
        logger.info(f"DICOMweb datastore {client.base_url}: cache {folder}")
        super().__init__(folder, class_names=class_names, auto_reload=False)
        self.sync(force=True)

    def name(self) -> str:
        return self.client.base_url

    def sync(self, force: bool = False) -> int:
        """Fetch the MG instances the cache lacks; return how many were added. Reuses a recent listing unless forced."""
        with self._sync_lock:
            if not force and time.monotonic() - self._synced_at < self.refresh_seconds:
                return 0
            added = self._fetch(self._query(self.search_filter))
            self._synced_at = time.monotonic()
            return added

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        with client_errors():
            raise MammoXAIError(
                f"upload for image {image_id!r}",
                "cannot be stored: this server's datastore is a PACS (DICOMweb) and images come from it",
                "send the image to the PACS (C-STORE or STOW-RS); it is listed here at the next refresh",
            )

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        if not uri and isinstance(image_id, str) and _UID.fullmatch(image_id) and image_id not in self._unreadable:
            with self._sync_lock:
                self._fetch(self._query({**self.search_filter, "SOPInstanceUID": image_id}))
            uri = super().get_image_uri(image_id)
        return uri

    def list_images(self) -> list[str]:
        self.sync()
        return super().list_images()

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        self.sync()
        return super().datalist(full_path)

    def status(self) -> dict[str, Any]:
        self.sync()
        return super().status()

    def json(self) -> dict[str, Any]:
        self.sync()
        return super().json()

    def _query(self, search_filters: dict[str, Any]) -> list[dict[str, str]]:
        """The UIDs of the instances matching ``search_filters`` (QIDO-RS, all pages)."""
        try:
            found = self.client.search_for_instances(search_filters=search_filters, get_remaining=True)
        except requests.RequestException as error:
            logger.error(f"DICOMweb query {search_filters} on {self.client.base_url} failed: {error}")
            return []
        return [{key: Dataset.from_json(item)[tag].value for key, tag in _UID_TAGS.items()} for item in found]

    def _fetch(self, instances: list[dict[str, str]]) -> int:
        """Retrieve the ``instances`` the cache lacks; return how many were added.

        The index is reloaded first: another process sharing the cache (a training run, a second server) may have
        cached an instance since this one loaded it. An instance that is no storable mammogram is left out for good
        (until the server restarts); one the network failed to bring is tried again at the next listing.
        """
        self._init_from_datastore_file()
        added = 0
        for uids in instances:
            sop = str(uids["SOPInstanceUID"])
            if sop in self._unreadable or super().get_image_uri(sop):
                continue
            try:
                added += self._fetch_one(uids)
            except requests.RequestException as error:
                logger.warning(f"DICOMweb instance {sop} on {self.client.base_url} not retrieved, tried again: {error}")
            except MammoXAIError as error:
                logger.warning(f"DICOMweb instance {sop} on {self.client.base_url} is left out: {error}")
                self._unreadable.add(sop)
        return added

    def _fetch_one(self, uids: dict[str, str]) -> bool:
        """Retrieve one instance (WADO-RS) into the cache; whether it was added, not found cached by then.

        Raises:
            requests.RequestException: the PACS could not be reached, or failed to send it.
            MammoXAIError: it is not a readable mammogram, or shows no breast (:func:`~lib.datastore.read_storable`).
        """
        sop = str(uids["SOPInstanceUID"])
        with tempfile.TemporaryDirectory(prefix="mammoxai-dicomweb-") as folder:
            path = os.path.join(folder, f"{sop}.dcm")
            dataset = self.client.retrieve_instance(str(uids["StudyInstanceUID"]), str(uids["SeriesInstanceUID"]), sop)
            dataset.save_as(path, write_like_original=False)
            header = read_storable(path).header
            info = {"source": self.client.base_url, "header": header, **{key: str(uid) for key, uid in uids.items()}}
            with self._latest_index():  # cached by another process during the download: the same instance, kept
                if sop in self._datastore.objects:
                    return False
                super().add_image(sop, path, info)
        return True
