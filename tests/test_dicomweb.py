"""The app on a real PACS: Orthanc with its DICOMweb plugin on 127.0.0.1, fed over STOW-RS, served over QIDO/WADO-RS.

Orthanc must run before these tests: ``scripts/orthanc.sh start`` installs and starts it and prints its DICOMweb
URL, which the tests read from ``MAMMOXAI_ORTHANC_URL`` (default http://127.0.0.1:8042/dicom-web). Each run uploads
its own two synthetic patients under fresh PatientIDs, with a StudyDescription of its own, and starts the server with
that StudyDescription as a QIDO-RS filter, so whatever else the PACS holds does not change what the tests see.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from clinician import save_final, served_checkpoint, simulator
from dicom_factory import write_mammo_dicom
from dicomweb_client import DICOMwebClient
from monailabel.client import MONAILabelClient
from pydicom.uid import CTImageStorage, generate_uid

from mammoxai.data.synth import synthesize
from mammoxai.io import read_mammogram
from mammoxai.io.heatmap import read_heatmap_nrrd
from mammoxai.schema import validate_prediction

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "mammography"))
from lib.dicomweb import DICOMwebMammogramDatastore  # noqa: E402

pytest_plugins = ["server_fixture"]

ORTHANC_URL = os.environ.get("MAMMOXAI_ORTHANC_URL", "http://127.0.0.1:8042/dicom-web")
STUDY_ROWS = 320  # as server_fixture: keeps the synthetic detector's pixel spacing
CLASSES = ["normal", "benign", "malignant"]


@pytest.fixture(scope="module")
def pacs() -> DICOMwebClient:
    try:
        requests.get(f"{ORTHANC_URL}/studies", params={"limit": 1}, timeout=5).raise_for_status()
    except requests.RequestException as error:
        pytest.fail(
            f"no DICOMweb server answers at {ORTHANC_URL} ({error}): run `scripts/orthanc.sh start` (installs and "
            "starts Orthanc on 127.0.0.1) or set MAMMOXAI_ORTHANC_URL to a test PACS's DICOMweb root",
            pytrace=False,
        )
    return DICOMwebClient(ORTHANC_URL)


@pytest.fixture(scope="module")
def uploaded(pacs, tmp_path_factory):
    """Two synthetic patients (4 MG views each, the left CC and MLO in ONE series as vendors do) and a CT of the
    first, sent by STOW-RS. Two patients are the fewest a training run accepts."""
    folder = tmp_path_factory.mktemp("pacs_upload")
    synthesize(folder, patients=2, seed=7, size=STUDY_ROWS, prior_fraction=0.0)
    prefix = f"MXT{uuid.uuid4().hex[:12]}"
    mammograms = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    original_ids = sorted({dataset.PatientID for dataset in mammograms})
    studies = {original: (f"{prefix}-{original}", generate_uid(), generate_uid()) for original in original_ids}
    for dataset in mammograms:  # fresh UIDs: a PACS keeps the first copy of an instance it already holds
        patient, study, shared_series = studies[dataset.PatientID]
        dataset.PatientID = patient
        dataset.StudyInstanceUID = study
        dataset.StudyDescription = prefix  # what the server filters on (dicomweb-client escapes a * wildcard)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = shared_series if dataset.ImageLaterality == "L" else generate_uid()
    patient, study, shared_series = studies[min(studies)]
    ct_path = write_mammo_dicom(
        folder / "ct.dcm",
        np.full((32, 32), 100, np.uint16),
        Modality="CT",
        SOPClassUID=CTImageStorage,
        PatientID=patient,
        StudyInstanceUID=study,
        StudyDescription=prefix,  # passes the server's filter: only its modality may keep it out
        ImageLaterality=None,
        ViewPosition=None,
        PresentationIntentType=None,
    )
    ct = pydicom.dcmread(ct_path)
    ct.file_meta.MediaStorageSOPClassUID = CTImageStorage
    pacs.store_instances([*mammograms, ct])
    originals, patients = {}, {}
    for dataset in mammograms:
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(path)
        originals[str(dataset.SOPInstanceUID)] = path
        patients[str(dataset.SOPInstanceUID)] = dataset.PatientID
    ct_uid = str(ct.SOPInstanceUID)
    return {"prefix": prefix, "patients": patients, "mammograms": originals, "ct": ct_uid, "series": shared_series}


@pytest.fixture(scope="module")
def pacs_server(app_server, uploaded, tmp_path_factory):
    """The app started with ``--studies <DICOMweb URL>`` on a copy of the shared app server's bundle (random weights),
    which its training may replace."""
    root = tmp_path_factory.mktemp("pacs_server")
    bundle = shutil.copytree(app_server.bundle, root / "bundle")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = {
        "bundle": str(bundle),
        "device": "cpu",
        "dicomweb_cache": str(root / "cache"),
        "dicomweb_filter": json.dumps({"StudyDescription": uploaded["prefix"]}),
    }
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    server = type(app_server.server)(ORTHANC_URL, port=port, conf=conf, log=root / "server.log", env=env)
    assert server.studies == ORTHANC_URL  # a URL passes through to --studies unchanged, not folded as a path
    with server:
        yield server, root / "cache", bundle


@pytest.fixture
def client(pacs_server, tmp_path):
    return MONAILabelClient(pacs_server[0].url, tmpdir=str(tmp_path))


def test_datastore_lists_one_image_per_mg_instance_and_leaves_out_the_ct(client, uploaded):
    objects = client.datastore()["objects"]

    assert set(objects) == set(uploaded["mammograms"])  # 8 ids, though two views of each patient share one series
    assert len(objects) == 8 and uploaded["ct"] not in objects
    in_shared_series = [
        info for info in objects.values() if info["image"]["info"]["SeriesInstanceUID"] == uploaded["series"]
    ]
    assert sorted(info["image"]["info"]["view"] for info in in_shared_series) == ["CC", "MLO"]


def test_image_info_keeps_the_dicom_header(client, uploaded):
    sop, path = next(iter(uploaded["mammograms"].items()))
    original = read_mammogram(path)

    info = client.datastore()["objects"][sop]["image"]["info"]

    assert info["header"]["PatientID"] == uploaded["patients"][sop]
    assert info["header"]["SOPInstanceUID"] == sop
    assert info["header"]["Manufacturer"] == original.header["Manufacturer"]
    assert (info["laterality"], info["view"]) == (original.laterality, original.view)
    assert info["shape"] == list(original.shape)


def test_cached_instance_has_the_pixels_sent_to_the_pacs(pacs_server, uploaded):
    sop, path = next(iter(uploaded["mammograms"].items()))
    cached = next(pacs_server[1].rglob(f"{sop}.dcm"))

    assert np.array_equal(read_mammogram(cached).pixels, read_mammogram(path).pixels)


def test_infer_on_a_pacs_image_returns_a_heatmap_in_its_geometry(client, app_server, uploaded):
    sop, path = sorted(uploaded["mammograms"].items())[0]
    mammogram = read_mammogram(path)

    heatmap_file, params = client.infer(app_server.model, sop, {})

    validate_prediction(params, source="server response")
    heatmap, spacing = read_heatmap_nrrd(heatmap_file)
    assert heatmap.shape == mammogram.shape
    assert spacing == pytest.approx(mammogram.spacing)
    assert params["image"]["laterality"] == mammogram.laterality


def test_final_label_on_a_pacs_image_is_stored_and_read_back(client, app_server, uploaded, tmp_path):
    sop = sorted(uploaded["mammograms"])[1]
    label = {"class": app_server.class_names[0], "annotator": "dr.pacs", "timestamp": "2024-05-01T09:30:00+00:00"}
    (tmp_path / "label.json").write_text(json.dumps(label))

    client.save_label(sop, str(tmp_path / "label.json"), tag="final")

    assert "final" in client.datastore()["objects"][sop]["labels"]
    with open(client.download_label(sop, "final")) as stream:
        assert json.load(stream) == label
    training = requests.get(f"{client._server_url}/datastore/", params={"output": "train"}, timeout=30).json()
    assert [os.path.basename(pair["image"]) for pair in training] == [f"{sop}.dcm"]


def test_upload_to_a_pacs_datastore_is_refused_with_the_way_to_add_images(pacs_server, uploaded):
    path = next(iter(uploaded["mammograms"].values()))

    response = requests.put(
        f"{pacs_server[0].url}/datastore/image",
        params={"image": "direct_upload"},
        files={"file": ("upload.dcm", path.read_bytes())},
        timeout=60,
    )

    assert response.status_code == 422, response.text
    assert "STOW-RS" in response.json()["detail"]


def test_the_loop_runs_on_the_pacs_next_case_correct_train_and_serve(client, pacs_server, uploaded):
    server, cache, bundle = pacs_server
    checkpoint = bundle / "models" / "model.pt"
    before = checkpoint.stat().st_mtime_ns

    case = requests.post(f"{server.url}/activelearning/uncertainty", json={}, timeout=300).json()
    assert case["id"] in uploaded["mammograms"]
    served_before = served_checkpoint(server.url, case["id"])
    first_patient = min(set(uploaded["patients"].values()))
    for sop, patient in uploaded["patients"].items():  # the clinician's corrections: one class per patient
        response = save_final(server.url, sop, "normal" if patient == first_patient else "malignant")
        assert response.status_code == 200, response.text
    settings = {"epochs": 1, "accept": "valid", "num_workers": 0}
    started = requests.post(f"{server.url}/train/mammoxai", json=settings, timeout=60)
    assert started.status_code == 200, started.text
    task = simulator.wait_for_training(server.url, timeout=300)

    assert task["status"] == "DONE", list(task.get("details", []))
    assert checkpoint.stat().st_mtime_ns != before  # new weights, served without a restart
    stats = json.loads((bundle / "models" / "train_stats.json").read_text())
    assert stats["accepted"] is True and stats["corrections"] == len(uploaded["mammograms"])
    assert len(list(cache.rglob("labels/final/*.json"))) == len(uploaded["mammograms"])  # kept in the cache's store
    assert served_checkpoint(server.url, case["id"]) != served_before


class FirstRetrieval(DICOMwebClient):
    """A client that calls ``first(sop)`` instead of its first WADO-RS retrieval (``raises``) or before it."""

    def __init__(self, first: Callable[[str], None], raises: bool) -> None:
        super().__init__(ORTHANC_URL)
        self.first, self.raises, self.retrieved = first, raises, []

    def retrieve_instance(self, study: str, series: str, sop: str, **kwargs) -> pydicom.Dataset:
        self.retrieved.append(sop)
        if len(self.retrieved) == 1:
            self.first(sop)
            if self.raises:
                raise requests.ConnectionError("connection reset by peer")
        return super().retrieve_instance(study, series, sop, **kwargs)


def open_cache(client: DICOMwebClient, study_description: str, cache: Path) -> DICOMwebMammogramDatastore:
    """A datastore over the PACS's instances of one test run, as the server opens it, listing the PACS once."""
    search = {"StudyDescription": study_description}
    return DICOMwebMammogramDatastore(client, CLASSES, str(cache), search_filter=search, refresh_seconds=3600)


def test_an_instance_a_network_error_kept_out_is_fetched_when_next_asked_for(uploaded, tmp_path):
    """A failed retrieval marked the instance unreadable until a restart: /infer?image=<its UID> was 404."""
    client = FirstRetrieval(lambda sop: None, raises=True)
    datastore = open_cache(client, uploaded["prefix"], tmp_path)
    dropped = client.retrieved[0]
    assert sorted(datastore.list_images()) == sorted(set(uploaded["mammograms"]) - {dropped})

    cached = datastore.get_image_uri(dropped)

    assert np.array_equal(read_mammogram(cached).pixels, read_mammogram(uploaded["mammograms"][dropped]).pixels)
    assert sorted(datastore.list_images()) == sorted(uploaded["mammograms"])


@pytest.mark.parametrize("when", ["before_it_looks", "during_its_download"])
def test_an_instance_another_process_cached_is_served_not_refused_with_409(pacs, tmp_path, when):
    """The server checked its own index, loaded before the other process cached the instance, and the second copy it
    stored was refused as an id in use."""
    prefix = f"MXT{uuid.uuid4().hex[:12]}"
    server = open_cache(DICOMwebClient(ORTHANC_URL), prefix, tmp_path)  # nothing on the PACS matches yet
    synthesize(tmp_path / "synth", patients=1, seed=8, size=STUDY_ROWS, prior_fraction=0.0)
    arrived = pydicom.dcmread(sorted((tmp_path / "synth").glob("*.dcm"))[0])
    arrived.StudyDescription = prefix
    arrived.StudyInstanceUID, arrived.SeriesInstanceUID = generate_uid(), generate_uid()
    arrived.SOPInstanceUID = arrived.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    pacs.store_instances([arrived])
    sop = str(arrived.SOPInstanceUID)
    other: list[DICOMwebMammogramDatastore] = []  # e.g. a training run building the app

    def cache_in_another_process(_: str) -> None:
        other.append(open_cache(DICOMwebClient(ORTHANC_URL), prefix, tmp_path))

    during = when == "during_its_download"
    if not during:
        cache_in_another_process(sop)
    server.client = FirstRetrieval(cache_in_another_process if during else lambda _: None, raises=False)

    cached = server.get_image_uri(sop)

    assert cached and cached == other[0].get_image_uri(sop)
    assert server.list_images() == [sop]
    assert server.client.retrieved == ([sop] if during else [])  # one cached before it looks is not downloaded again
