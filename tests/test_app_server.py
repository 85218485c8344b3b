"""The MONAI Label app, driven over HTTP by MONAI Label's own client as 3D Slicer or a script would drive it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from PIL import Image

from mammoxai.io import read_mammogram
from mammoxai.io.heatmap import DEFAULT_SPACING_MM, read_heatmap_nrrd
from mammoxai.schema import validate_prediction

pytest_plugins = ["server_fixture"]


@pytest.fixture
def client(app_server, tmp_path):
    return MONAILabelClient(app_server.url, tmpdir=str(tmp_path))


@pytest.fixture
def dicom_id(app_server):
    return app_server.study_ids()[0]


def write_png(path, shape=(150, 118)):
    """A 16-bit grayscale breast-like PNG: a bright half-ellipse against the left edge on a dark background."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    breast = (cols / (0.85 * shape[1])) ** 2 + ((rows - shape[0] / 2) / (0.45 * shape[0])) ** 2 < 1
    pixels = np.where(breast, 30000 + 20 * rows, 200).astype(np.uint16)
    Image.fromarray(pixels).save(path)
    return path


def test_info_lists_one_classification_model_with_the_bundle_class_names(client, app_server):
    info = client.info()

    assert list(info["models"]) == [app_server.model]
    model = info["models"][app_server.model]
    assert model["type"] == "classification"
    assert model["labels"] == app_server.class_names
    assert model["dimension"] == 2
    assert info["labels"] == app_server.class_names
    # what a request may choose: the test bundle's 256 x 208 grid holds no 256 x 256 CorRELAX view
    assert model["saliency"]["method"] == "gradcam" and model["saliency"]["preset"] is None
    assert model["saliency"]["methods"]["rise"] == ["faithful", "fast"]
    assert "gradcam" in model["saliency"]["methods"] and "correlax" not in model["saliency"]["methods"]


def test_datastore_serves_the_dicom_studies_folder(client, app_server):
    objects = client.datastore()["objects"]

    studies = set(app_server.study_ids())
    assert len(studies) == 4 * len(app_server.study_ids_by_patient())  # L/R x CC/MLO of each synthetic patient
    assert studies <= set(objects)
    assert {objects[image_id]["image"]["ext"] for image_id in studies} == {".dcm"}


def test_infer_on_a_dicom_returns_a_valid_prediction_and_a_heatmap_in_its_geometry(client, app_server, dicom_id):
    heatmap_file, params = client.infer(app_server.model, dicom_id, {})

    validate_prediction(params, source="server response")
    assert params["class_names"] == app_server.class_names
    assert params["label_names"] == app_server.class_names
    assert params["predicted_class"] == max(params["probabilities"], key=params["probabilities"].get)
    assert params["latencies"]["total"] > 0
    mammogram = read_mammogram(app_server.studies / f"{dicom_id}.dcm")
    heatmap, spacing = read_heatmap_nrrd(heatmap_file)
    assert heatmap_file.endswith(".nrrd")
    assert heatmap.dtype == np.float32
    assert heatmap.shape == mammogram.shape
    assert params["image"]["shape"] == list(mammogram.shape)
    assert spacing == pytest.approx(mammogram.spacing)
    assert heatmap.max() > 0


def test_uploaded_png_is_stored_and_explained_in_its_own_geometry(client, app_server, tmp_path):
    png = write_png(tmp_path / "upload.png", shape=(150, 118))

    response = client.upload_image(str(png), image_id="uploaded_png")

    assert response == {"image": "uploaded_png"}
    assert (app_server.studies / "uploaded_png.png").read_bytes() == png.read_bytes()
    stored = client.datastore()["objects"]["uploaded_png"]["image"]
    assert stored["ext"] == ".png"
    assert stored["info"]["shape"] == [150, 118]
    heatmap_file, params = client.infer(app_server.model, "uploaded_png", {})
    heatmap, spacing = read_heatmap_nrrd(heatmap_file)
    assert heatmap.shape == (150, 118)
    assert spacing == (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    assert params["image"]["spacing_mm"] is None


def test_image_sent_with_the_infer_request_is_explained_and_not_stored(client, app_server, tmp_path):
    png = write_png(tmp_path / "sent.png", shape=(140, 110))
    before = sorted(client.datastore()["objects"])

    response = requests.post(
        f"{app_server.url}/infer/{app_server.model}",
        params={"output": "json"},
        files={"file": ("sent.png", png.read_bytes())},
        data={"params": "{}"},
        timeout=300,
    )

    assert response.status_code == 200, response.text
    assert response.json()["image"]["shape"] == [140, 110]
    assert sorted(client.datastore()["objects"]) == before


def test_prediction_names_its_image_as_the_client_knows_it_not_by_the_servers_path(app_server, dicom_id, tmp_path):
    """``image.source`` held the file's path in the server's studies or temporary folder."""
    png = write_png(tmp_path / "sent.png")
    url = f"{app_server.url}/infer/{app_server.model}"

    stored = requests.post(url, params={"image": dicom_id, "output": "json"}, timeout=300)
    sent = requests.post(url, params={"output": "json"}, files={"file": ("sent.png", png.read_bytes())}, timeout=300)

    assert stored.status_code == 200 and sent.status_code == 200, (stored.text, sent.text)
    assert stored.json()["image"]["source"] == dicom_id
    assert sent.json()["image"]["source"] == ""  # MONAI Label keeps the sent file's suffix only


def test_final_label_is_stored_and_read_back(client, app_server, dicom_id, tmp_path):
    label = {
        "class": app_server.class_names[-1],
        "birads": "4",
        "lesions": [
            {"type": "box", "box": [10, 20, 40, 60], "finding": "mass"},
            {"type": "point", "point": [30.5, 44.0]},
        ],
        "annotator": "dr.test",
        "timestamp": "2024-05-01T09:30:00+00:00",
    }
    label_file = tmp_path / "label.json"
    label_file.write_text(json.dumps(label))

    response = client.save_label(dicom_id, str(label_file), tag="final")

    assert response["label"] == dicom_id
    assert "final" in client.datastore()["objects"][dicom_id]["labels"]
    assert json.loads((app_server.studies / "labels" / "final" / f"{dicom_id}.json").read_text()) == label
    with open(client.download_label(dicom_id, "final")) as stream:
        assert json.load(stream) == label
    training_pairs = requests.get(f"{app_server.url}/datastore/", params={"output": "train"}, timeout=30).json()
    assert any(os.path.basename(pair["label"]) == f"{dicom_id}.json" for pair in training_pairs)


def test_infer_request_chooses_the_saliency_method_and_an_unknown_one_is_422(client, app_server, dicom_id):
    heatmap_file, params = client.infer(
        app_server.model, dicom_id, {"saliency": {"method": "occlusion", "preset": "fast"}}
    )

    validate_prediction(params, source="server response")
    assert params["saliency"]["method"] == "occlusion"
    assert params["saliency"]["settings"]["preset"] == "fast"
    heatmap, _ = read_heatmap_nrrd(heatmap_file)
    assert heatmap.shape == read_mammogram(app_server.studies / f"{dicom_id}.dcm").shape
    assert heatmap.max() > 0
    response = requests.post(
        f"{app_server.url}/infer/{app_server.model}",
        params={"image": dicom_id, "output": "json"},
        data={"params": json.dumps({"saliency": {"method": "lime"}})},
        timeout=120,
    )
    assert response.status_code == 422, response.text
    assert "saliency method: 'lime' is not available" in response.json()["detail"]


def test_info_answers_while_an_inference_is_running(app_server, dicom_id):
    """The guard routes ran on the server's one event loop: ``GET /info/`` waited for a minutes-long inference."""
    slow = {"saliency": {"method": "occlusion", "preset": "faithful"}}  # hundreds of forward passes: seconds
    answered: dict[str, float] = {}

    def infer() -> None:
        response = requests.post(
            f"{app_server.url}/infer/{app_server.model}",
            params={"image": dicom_id, "output": "json"},
            data={"params": json.dumps(slow)},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        answered["infer"] = time.monotonic()

    inference = threading.Thread(target=infer)
    inference.start()
    time.sleep(1.0)  # the request is in and the inference started
    info = requests.get(f"{app_server.url}/info/", timeout=300)
    answered["info"] = time.monotonic()
    inference.join()

    assert info.status_code == 200
    assert "infer" in answered  # the inference succeeded
    assert answered["info"] < answered["infer"] - 0.5


def test_infer_json_output_answers_with_the_prediction_only(app_server, dicom_id):
    response = requests.post(
        f"{app_server.url}/infer/{app_server.model}", params={"image": dicom_id, "output": "json"}, timeout=120
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    validate_prediction(response.json(), source="server response")


def test_newly_trained_checkpoint_is_served_without_restart(client, app_server, dicom_id):
    before_file, before = client.infer(app_server.model, dicom_id, {})
    original = app_server.checkpoint.read_bytes()
    stamp = app_server.checkpoint.stat().st_mtime
    try:
        app_server.save_random_weights(seed=1)
        os.utime(app_server.checkpoint, (time.time(), stamp + 5))  # a new modification time even on coarse clocks

        after_file, after = client.infer(app_server.model, dicom_id, {})

        assert app_server.is_running()  # the same server process: no restart
        assert after["model"]["checkpoint_mtime"] != before["model"]["checkpoint_mtime"]
        assert after["probabilities"] != pytest.approx(before["probabilities"], abs=1e-6)
        assert not np.allclose(read_heatmap_nrrd(after_file)[0], read_heatmap_nrrd(before_file)[0])
    finally:
        app_server.checkpoint.write_bytes(original)
        os.utime(app_server.checkpoint, (time.time(), stamp + 10))


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda pid: os.killpg(pid, signal.SIGINT), id="ctrl-c"),  # what Ctrl-C in the terminal does
        pytest.param(lambda pid: os.kill(pid, signal.SIGTERM), id="kill"),  # `kill <pid>`, a service manager
    ],
)
def test_demo_prints_how_to_connect_and_stops_itself_and_the_server(app_server, tmp_path, free_port, stop):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(app_server.studies / f"{app_server.study_ids()[0]}.dcm", studies)
    url = f"http://127.0.0.1:{free_port}"
    command = [sys.executable, "scripts/demo.py", "--studies", str(studies), "--bundle", str(app_server.bundle)]
    command += ["--port", str(free_port), "--log", str(tmp_path / "server.log")]
    demo = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job has
        # and Ctrl-C's default action, which a suite started in the background (SIGINT ignored) would not pass on
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        for line in demo.stdout:
            lines.append(line)
            if "Press Ctrl-C to stop." in line:
                ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert ready.wait(180), "".join(lines)
        assert requests.get(f"{url}/info/", timeout=30).status_code == 200

        stop(demo.pid)

        assert demo.wait(60) == 0
        with pytest.raises(requests.ConnectionError):  # the server went with it: nothing holds the port
            requests.get(f"{url}/info/", timeout=5)
    finally:
        if demo.poll() is None:
            demo.kill()
    reader.join(10)
    output = "".join(lines)
    assert f"weights: {app_server.checkpoint.resolve()} (existing)" in output  # nothing was trained
    assert f"client = MONAILabelClient({url!r})" in output
    assert f'curl -X POST "{url}/infer/{app_server.model}?image={app_server.study_ids()[0]}&output=json"' in output
    assert "NOT for clinical use" in output
    assert output.rstrip().endswith("stopped")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/info/", timeout=5)


def test_a_tiff_mammogram_sent_to_the_wsi_route_is_explained_like_any_mammogram(app_server, tmp_path):
    """MONAI Label hands a .tif to its whole-slide tiling (openslide) before the app sees it; a mammogram is one
    image, so the app serves the WSI routes as /infer."""
    tiff = write_png(tmp_path / "sent.tif", shape=(140, 110))

    response = requests.post(
        f"{app_server.url}/infer/wsi_v2/{app_server.model}",
        params={"output": "json"},
        files={"file": ("sent.tif", tiff.read_bytes())},
        timeout=300,
    )

    assert response.status_code == 200, response.text
    assert response.json()["image"]["shape"] == [140, 110]
