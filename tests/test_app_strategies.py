"""The app's ``random`` and ``first`` strategies over a studies folder that holds files which are not mammograms, and
the unlabeled images they pick from: in a PACS datastore, after a correction is deleted, and images renamed into the
studies folder while the server runs."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import requests
from clinician import save_final, simulator
from dicom_factory import write_ct_dicom
from dicomweb_client import DICOMwebClient
from loopback_servers import StandInServer, json_body
from monailabel.utils.others.generic import md5_digest

from mammoxai.data.synth import synthesize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "mammography"))
from lib.dicomweb import DICOMwebMammogramDatastore  # noqa: E402


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory):
    """A server over one patient's four images, a CT and a damaged PNG; the last two sort first."""
    root = tmp_path_factory.mktemp("mixed_server")
    synthesize(root / "synth", patients=1, seed=4, size=128, prior_fraction=0.0)
    studies = root / "studies"
    studies.mkdir()
    for path in (root / "synth").glob("*.dcm"):
        shutil.copyfile(path, studies / path.name)
    write_ct_dicom(studies / "0_chest_ct.dcm")
    (studies / "0_damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n not the rest of a PNG")
    bundle = simulator.make_bundle(root / "bundle", (64, 64), seed=0)
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    conf = {"bundle": str(bundle), "device": "cpu"}
    server = simulator.demo.ServerProcess(
        studies, port=simulator._free_port(), conf=conf, log=root / "server.log", env=env
    )
    with server:
        yield server.url, studies


def image_info(url: str, image_id: str) -> dict:
    return requests.get(f"{url}/datastore/image/info", params={"image": image_id}, timeout=30).json()


def test_first_and_random_propose_only_images_that_read_as_mammograms(mixed_server):
    url, studies = mixed_server
    mammograms = {path.stem for path in studies.glob("P*.dcm")}

    first = requests.post(f"{url}/activelearning/first", json={}, timeout=60)
    randoms = [requests.post(f"{url}/activelearning/random", json={}, timeout=60) for _ in range(8)]

    assert first.status_code == 200, first.text
    assert first.json()["id"] == min(mammograms)
    assert all(response.status_code == 200 for response in randoms), [response.text for response in randoms]
    assert {response.json()["id"] for response in randoms} <= mammograms
    assert "Modality CT" in image_info(url, "0_chest_ct")["unreadable"]["problem"]
    assert "0_damaged" in requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]


def test_random_answers_when_every_image_was_proposed_this_second_or_later(mixed_server):
    url, studies = mixed_server
    mammograms = sorted(path.stem for path in studies.glob("P*.dcm"))
    later = {"strategy": {"random": {"ts": int(time.time()) + 60}}}  # as if the clock was set back since
    for image_id in mammograms:
        info = {"info": json.dumps(later)}
        requests.put(f"{url}/datastore/image/info", params={"image": image_id}, data=info, timeout=30)

    proposed = requests.post(f"{url}/activelearning/random", json={}, timeout=60)

    assert proposed.status_code == 200, proposed.text
    assert proposed.json()["id"] in mammograms and proposed.json()["weight"] == 1


def test_an_unreadable_file_replaced_by_a_mammogram_is_proposed_again(mixed_server):
    url, studies = mixed_server
    requests.post(f"{url}/activelearning/first", json={}, timeout=60)  # marks the CT and the damaged PNG
    shutil.copyfile(sorted(studies.glob("P*.dcm"))[0], studies / "0_chest_ct.dcm")

    proposed = requests.post(f"{url}/activelearning/first", json={}, timeout=60)

    assert proposed.status_code == 200, proposed.text
    assert proposed.json()["id"] == "0_chest_ct"


def test_a_dicomweb_datastore_lists_its_cached_unlabeled_images(tmp_path):
    """The PACS datastore keeps its own set of unreadable instances; the strategies' listing must work beside it."""
    with StandInServer(lambda method, path: (200, "application/dicom+json", json_body([]))) as pacs:
        client = DICOMwebClient(url=pacs.url)
        cache = tmp_path / "cache" / md5_digest(client.base_url)
        synthesize(tmp_path / "synth", patients=1, seed=4, size=128, prior_fraction=0.0)
        cached = sorted((tmp_path / "synth").glob("*.dcm"))[0]
        cache.mkdir(parents=True)
        shutil.copyfile(cached, cache / cached.name)  # fetched from the PACS on an earlier day

        classes = ["normal", "benign", "malignant"]
        datastore = DICOMwebMammogramDatastore(client, class_names=classes, cache_path=str(tmp_path / "cache"))

        assert datastore.get_unlabeled_images() == [cached.stem]


def test_a_deleted_correction_is_no_longer_listed_and_its_image_is_offered_again(mixed_server):
    url, _ = mixed_server
    image_id = requests.post(f"{url}/activelearning/first", json={}, timeout=60).json()["id"]
    assert save_final(url, image_id, "benign").status_code == 200
    assert requests.post(f"{url}/activelearning/first", json={}, timeout=60).json()["id"] != image_id

    deleted = requests.delete(f"{url}/datastore/label", params={"id": image_id, "tag": "final"}, timeout=60)

    assert deleted.status_code == 200, deleted.text
    index = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()
    assert "final" not in index["objects"][image_id]["labels"]
    assert requests.post(f"{url}/activelearning/first", json={}, timeout=60).json()["id"] == image_id


def test_an_image_renamed_into_the_studies_folder_is_listed(mixed_server):
    url, studies = mixed_server
    incoming = studies / ".incoming.dcm.part"  # rsync and many copy tools write under a temporary name, then rename
    shutil.copyfile(sorted(studies.glob("P*.dcm"))[0], incoming)
    incoming.rename(studies / "arrived.dcm")

    deadline = time.monotonic() + 30
    while "arrived" not in requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]:
        assert time.monotonic() < deadline, "the renamed image was never listed"
        time.sleep(0.5)
