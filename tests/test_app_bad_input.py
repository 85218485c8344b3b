"""Bad input over HTTP: each mistake is a 4xx (503 while there are no weights) that says what is wrong and what
to do; nothing is stored and the server stays up."""

from __future__ import annotations

import functools
import importlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from dicom_factory import real_file_as_mammogram, shorten_value, write_ct_dicom, write_mammo_dicom
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from PIL import Image

pytest_plugins = ["server_fixture"]

VALID_LABEL = {"class": "benign", "annotator": "dr.test", "timestamp": "2024-05-01T09:30:00+00:00"}


@pytest.fixture
def unchanged(app_server):
    """Assert after the test that the datastore index and every file of the studies folder are as before."""
    index = requests.get(f"{app_server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    files = app_server.studies_digest()
    outside = sorted(app_server.studies.parent.iterdir())
    yield
    assert requests.get(f"{app_server.url}/datastore/", params={"output": "all"}, timeout=30).json() == index
    assert app_server.studies_digest() == files
    assert sorted(app_server.studies.parent.iterdir()) == outside


def assert_refused(response: requests.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


def assert_server_up(app_server) -> None:
    assert requests.get(f"{app_server.url}/info/", timeout=30).status_code == 200


def upload(app_server, image_id: str, name: str, content: bytes) -> requests.Response:
    return requests.put(
        f"{app_server.url}/datastore/image", params={"image": image_id}, files={"file": (name, content)}, timeout=60
    )


def save_label(app_server, image_id: str, content: bytes) -> requests.Response:
    return requests.put(
        f"{app_server.url}/datastore/label",
        params={"image": image_id, "tag": "final"},
        files={"label": ("label.json", content)},
        timeout=60,
    )


def test_infer_on_an_unknown_image_id_is_404_naming_it(app_server, unchanged, tmp_path):
    with pytest.raises(MONAILabelClientException) as raised:
        MONAILabelClient(app_server.url, tmpdir=str(tmp_path)).infer(app_server.model, "no_such_image", {})

    assert "Status: 404" in raised.value.msg
    assert "no_such_image" in raised.value.msg and "not found" in raised.value.msg
    assert_server_up(app_server)


def test_infer_with_an_unknown_model_is_404_listing_the_models(app_server, unchanged):
    response = requests.post(f"{app_server.url}/infer/resnet", params={"image": app_server.study_ids()[0]}, timeout=60)

    assert_refused(response, 404, "resnet", app_server.model)
    assert_server_up(app_server)


@pytest.mark.parametrize(
    "params, words",
    [
        ("{bad json", ["is not JSON", "params"]),
        ("[1, 2]", ["params", "is not a JSON object"]),
        (
            json.dumps({"saliency": {"method": "gradcam", "target_class": "cancer"}}),
            ["['target_class']", "only method"],
        ),
    ],
    ids=["params_not_json", "params_not_an_object", "saliency_key_a_request_cannot_set"],
)
def test_infer_params_that_cannot_be_honoured_are_422(app_server, unchanged, params, words):
    response = requests.post(
        f"{app_server.url}/infer/{app_server.model}",
        params={"image": app_server.study_ids()[0], "output": "json"},
        data={"params": params},
        timeout=120,
    )

    assert_refused(response, 422, *words)
    assert_server_up(app_server)


def test_infer_naming_no_image_is_422_saying_how_to_name_one(app_server, unchanged):
    response = requests.post(f"{app_server.url}/infer/{app_server.model}", data={"params": "{}"}, timeout=60)

    assert_refused(response, 422, "names no image", "?image=<id>")
    assert_server_up(app_server)


def test_info_of_an_unknown_image_is_404_and_of_a_stored_one_its_record(app_server, unchanged):
    unknown = requests.get(f"{app_server.url}/datastore/image/info", params={"image": "no_such_image"}, timeout=30)
    stored = requests.get(
        f"{app_server.url}/datastore/image/info", params={"image": app_server.study_ids()[0]}, timeout=30
    )

    assert_refused(unknown, 404, "'no_such_image'", "not found")
    assert stored.status_code == 200 and stored.json()["name"].startswith(app_server.study_ids()[0])


@pytest.mark.parametrize(
    "method, path, params",
    [
        ("delete", "/datastore/image", {"id": "no_such_image"}),
        ("delete", "/datastore/label", {"id": "no_such_image", "tag": "final"}),
        ("put", "/datastore/updatelabelinfo", {"label": "no_such_image", "tag": "final"}),
    ],
    ids=["delete_image", "delete_label", "update_label_info"],
)
def test_changing_an_unknown_image_or_label_is_404(app_server, unchanged, method, path, params):
    response = requests.request(method, f"{app_server.url}{path}", params=params, timeout=60)

    assert_refused(response, 404, "'no_such_image'", "not found")
    assert_server_up(app_server)


@pytest.mark.parametrize(
    "path, words",
    [("/scoring/nosuch", ["scoring method 'nosuch'", "uncertainty"]), ("/batch/infer/nosuch", ["model 'nosuch'"])],
)
def test_a_background_task_of_an_unknown_name_is_404_not_a_submitted_task_that_fails(
    app_server, unchanged, path, words
):
    response = requests.post(f"{app_server.url}{path}", json={}, timeout=60)

    assert_refused(response, 404, *words)
    assert_server_up(app_server)


def test_text_file_upload_is_422_through_the_client(app_server, unchanged, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a mammogram\n")

    with pytest.raises(MONAILabelClientException) as raised:
        MONAILabelClient(app_server.url, tmpdir=str(tmp_path)).upload_image(str(notes), image_id="notes")

    assert "Status: 422" in raised.value.msg
    assert "'notes'" in raised.value.msg and "neither DICOM nor a PNG" in raised.value.msg
    assert_server_up(app_server)


def test_ct_dicom_upload_is_422_naming_the_modality(app_server, unchanged, tmp_path):
    ct = write_ct_dicom(tmp_path / "ct.dcm")
    response = upload(app_server, "chest_ct", "ct.dcm", ct.read_bytes())

    assert_refused(response, 422, "'chest_ct'", "CT")
    assert_server_up(app_server)


def test_truncated_dicom_upload_is_422(app_server, unchanged):
    study = app_server.studies / f"{app_server.study_ids()[0]}.dcm"
    content = study.read_bytes()

    response = upload(app_server, "truncated", "truncated.dcm", content[: len(content) // 2])

    assert_refused(response, 422, "'truncated'")
    assert_server_up(app_server)


def test_dicom_with_a_damaged_header_element_upload_is_422(app_server, unchanged, tmp_path):
    """pydicom raises its own exception for a value of the wrong length when the value is used, answered with 500."""
    path = real_file_as_mammogram(tmp_path)
    shorten_value(path, (0x0028, 0x0101))  # Bits Stored: one byte of two

    response = upload(app_server, "damaged", "damaged.dcm", path.read_bytes())

    assert_refused(response, 422, "'damaged'", "header element that cannot be parsed", "(0028, 0101)")
    assert_server_up(app_server)


def write_blank(folder: Path) -> Path:
    """A mammogram of an exposure with nothing in it: every pixel the same."""
    return write_mammo_dicom(folder / "blank.dcm", np.zeros((64, 64), dtype=np.uint16))


def write_ct(folder: Path) -> Path:
    return write_ct_dicom(folder / "ct.dcm")


def listed_ids(app_server) -> set[str]:
    return set(requests.get(f"{app_server.url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"])


@pytest.mark.parametrize(
    "write",
    [write_blank, functools.partial(real_file_as_mammogram, name="image_dfl.dcm")],
    ids=["blank", "real_image_of_no_breast"],
)
def test_upload_of_an_image_with_no_breast_is_422(app_server, unchanged, tmp_path, write):
    """It was stored, then refused by every inference of it and left out of training."""
    path = write(tmp_path)

    response = upload(app_server, "no_breast", path.name, path.read_bytes())

    assert_refused(response, 422, "upload for image 'no_breast': no breast was found")
    assert_server_up(app_server)


@pytest.fixture
def drop_into_studies(app_server):
    """A function that copies a file into the studies folder, past the upload's checks, as a PACS export or a copy
    by hand does, and returns its image id once the server lists it; the images are deleted through the server after
    the test."""
    dropped = []

    def drop(source: Path, image_id: str) -> str:
        dropped.append(image_id)
        shutil.copyfile(source, app_server.studies / f"{image_id}.dcm")
        wait_until(lambda: image_id in listed_ids(app_server), f"{image_id} was never listed")
        return image_id

    yield drop
    for image_id in dropped:
        requests.delete(f"{app_server.url}/datastore/image", params={"id": image_id}, timeout=60)
    # the file is deleted at once, its index entry by the folder watcher
    wait_until(lambda: not listed_ids(app_server) & set(dropped), f"{dropped} were never unlisted")


def wait_until(condition: Callable[[], bool], failure: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.5)


@pytest.mark.parametrize(
    "write, words",
    [(write_blank, ["no breast was found"]), (write_ct, ["is not a mammogram", "CT"])],
    ids=["no_breast", "not_a_mammogram"],
)
def test_infer_refusing_a_stored_image_names_its_id_not_the_servers_path(
    app_server, unchanged, drop_into_studies, tmp_path, write, words
):
    """The refusal named the file in the server's studies folder, which the client does not know."""
    image_id = drop_into_studies(write(tmp_path), "dropped_in")

    response = requests.post(
        f"{app_server.url}/infer/{app_server.model}", params={"image": image_id, "output": "json"}, timeout=120
    )

    assert_refused(response, 422, f"image {image_id!r}: ", *words)
    assert str(app_server.studies) not in response.json()["detail"]
    assert_server_up(app_server)


@pytest.mark.parametrize(
    "write, words",
    [(write_blank, ["no breast was found"]), (write_ct, ["is not a mammogram"])],
    ids=["no_breast", "not_a_mammogram"],
)
def test_label_for_a_stored_image_that_inference_refuses_is_422_naming_its_id_not_the_servers_path(
    app_server, unchanged, drop_into_studies, tmp_path, write, words
):
    """One with no breast was stored, and every training run with it would fail, as its inference does."""
    image_id = drop_into_studies(write(tmp_path), "dropped_in")

    response = save_label(app_server, image_id, json.dumps(VALID_LABEL).encode())

    assert_refused(response, 422, f"image {image_id!r}: ", *words)
    assert str(app_server.studies) not in response.json()["detail"]
    assert_server_up(app_server)


def test_infer_refusing_an_image_sent_with_the_request_names_it_so_not_the_servers_path(
    app_server, unchanged, tmp_path
):
    """The refusal named the temporary file the server copied the image to."""
    blank = write_blank(tmp_path)

    response = requests.post(
        f"{app_server.url}/infer/{app_server.model}",
        params={"output": "json"},
        files={"file": (blank.name, blank.read_bytes())},
        timeout=120,
    )

    assert_refused(response, 422, "image sent with the request: no breast was found")
    assert tempfile.gettempdir() not in response.json()["detail"]
    assert_server_up(app_server)


def test_upload_under_an_id_in_use_is_409_and_keeps_the_image_and_its_labels(app_server, unchanged):
    first, second = app_server.study_ids()[:2]
    other = (app_server.studies / f"{second}.dcm").read_bytes()

    response = upload(app_server, first, "replacement.dcm", other)

    assert_refused(response, 409, f"image id {first!r}", "in the datastore already", "DELETE /datastore/image")
    assert_server_up(app_server)


def test_image_id_that_is_a_path_is_422(app_server, unchanged):
    study = app_server.studies / f"{app_server.study_ids()[0]}.dcm"

    response = upload(app_server, "../escaped", "escaped.dcm", study.read_bytes())

    assert_refused(response, 422, "'../escaped'", "plain file name")
    assert_server_up(app_server)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"class: benign", ["label", "not JSON"]),
        (json.dumps({**VALID_LABEL, "annotator": None}).encode(), ["label/annotator"]),
        (json.dumps({key: value for key, value in VALID_LABEL.items() if key != "timestamp"}).encode(), ["timestamp"]),
        (json.dumps({**VALID_LABEL, "class": "cancer"}).encode(), ["label/class", "'cancer'"]),
        (
            json.dumps({**VALID_LABEL, "lesions": [{"type": "point", "point": [5000, 10]}]}).encode(),
            ["label/lesions/0/point", "outside"],
        ),
    ],
    ids=["not_json", "annotator_not_a_string", "no_timestamp", "unknown_class", "point_outside_image"],
)
def test_invalid_label_is_422_and_not_stored(app_server, unchanged, content, words):
    response = save_label(app_server, app_server.study_ids()[0], content)

    assert_refused(response, 422, *words)
    assert_server_up(app_server)


UNCERTAINTY_CALLS = pytest.mark.parametrize(
    "path, params",
    [
        ("/activelearning/uncertainty", {}),
        ("/scoring/uncertainty", {"run_sync": "true"}),
        ("/scoring/uncertainty", {}),
        ("/scoring/", {}),
    ],
    ids=["next_case", "scoring", "scoring_in_background", "every_scoring_method"],
)
# The calls that need the served weights to rank cases; POST /scoring/<method> (and MONAI Label's older
# POST /scoring/, every method) runs in the background unless run_sync=true, and must be refused as the
# synchronous call is, at submission.


def scoring_tasks(app_server) -> list[str]:
    """The ids of the scoring tasks the server lists (none: a 404 before the first): a refused request must start
    none. Ids, not the listing, which changes when an earlier task ends."""
    response = requests.get(f"{app_server.url}/scoring/", params={"all": "true"}, timeout=30)
    return [task["id"] for task in response.json()] if response.status_code == 200 else []


@UNCERTAINTY_CALLS
def test_uncertainty_with_weights_of_another_network_is_503_saying_so(app_server, unchanged, path, params):
    served = app_server.checkpoint.read_bytes()
    tasks = scoring_tasks(app_server)
    torch.save({"some_layer.weight": torch.zeros(2)}, app_server.checkpoint)
    try:
        response = requests.post(f"{app_server.url}{path}", params=params, json={}, timeout=60)
    finally:
        app_server.checkpoint.write_bytes(served)

    assert_refused(response, 503, "model.pt: cannot be loaded into the network")
    assert scoring_tasks(app_server) == tasks
    assert "/activelearning/random" not in response.json()["detail"]  # training on top of them would fail too
    assert_server_up(app_server)


def test_label_params_that_are_json_but_not_an_object_are_422(app_server, unchanged):
    response = requests.put(
        f"{app_server.url}/datastore/label",
        params={"image": app_server.study_ids()[0], "tag": "final"},
        data={"params": "[1, 2]"},
        files={"label": ("label.json", json.dumps(VALID_LABEL).encode())},
        timeout=60,
    )

    assert_refused(response, 422, "params of label 'final'", "[1, 2] is not a JSON object")
    assert_server_up(app_server)


def test_label_for_an_unknown_image_is_404(app_server, unchanged):
    response = save_label(app_server, "no_such_image", json.dumps(VALID_LABEL).encode())

    assert_refused(response, 404, "no_such_image")
    assert_server_up(app_server)


def post_without_weights(app_server, path: str, **params: str) -> requests.Response:
    """``POST <path>`` while the served checkpoint is moved away, as before the first training run."""
    aside = app_server.checkpoint.with_name("model.pt.aside")
    app_server.checkpoint.rename(aside)
    try:
        return requests.post(f"{app_server.url}{path}", params=params, json={}, timeout=60)
    finally:
        aside.rename(app_server.checkpoint)


def test_infer_before_weights_exist_is_503_saying_how_to_train(app_server, unchanged):
    response = post_without_weights(app_server, f"/infer/{app_server.model}", image=app_server.study_ids()[0])

    assert_refused(response, 503, "model.pt", "configs/train.json")
    assert str(app_server.bundle) not in response.json()["detail"]  # shown at the Slicer panel; the log keeps it
    assert_server_up(app_server)


@UNCERTAINTY_CALLS
def test_uncertainty_before_weights_exist_is_503_naming_the_strategies_that_need_none(
    app_server, unchanged, path, params
):
    tasks = scoring_tasks(app_server)

    response = post_without_weights(app_server, path, **params)

    assert_refused(response, 503, "model.pt: no trained weights", "/activelearning/random", "tag final")
    assert str(app_server.bundle) not in response.json()["detail"]
    assert scoring_tasks(app_server) == tasks
    assert_server_up(app_server)


@pytest.mark.parametrize("value", ["[1, 2]", '"x"', "{bad json"], ids=["a_list", "a_string", "not_json"])
@pytest.mark.parametrize(
    "path, field, params",
    [
        ("/datastore/image", "params", {"image": "params_check"}),
        ("/datastore/", "params", {"image": "params_check"}),  # MONAI Label's older upload route
        ("/datastore/image/info", "info", {}),
        ("/datastore/label/info", "info", {"label": "no_such_image", "tag": "final"}),
        ("/datastore/updatelabelinfo", "params", {"label": "no_such_image", "tag": "final"}),
    ],
    ids=["upload", "upload_deprecated_route", "image_info", "label_info", "label_info_deprecated_route"],
)
def test_datastore_json_field_that_is_not_an_object_is_422_and_nothing_is_stored(
    app_server, unchanged, path, field, params, value
):
    """MONAI Label adds the user's name to the field's value before storing it, which fails with 500 for a list."""
    study = app_server.studies / f"{app_server.study_ids()[0]}.dcm"
    params = params or {"image": app_server.study_ids()[0]}
    files = {"file": ("study.dcm", study.read_bytes())} if path in ("/datastore/image", "/datastore/") else None

    response = requests.put(f"{app_server.url}{path}", params=params, data={field: value}, files=files, timeout=60)

    words = ["is not JSON"] if value.startswith("{") else [field, f"{value} is not a JSON object"]
    assert_refused(response, 422, *words)
    assert_server_up(app_server)


@pytest.mark.parametrize(
    "wsi, status, words",
    [
        ("[1, 2]", 422, ["wsi", "[1, 2] is not a JSON object"]),
        ('"x"', 422, ["wsi", '"x" is not a JSON object']),
        ('{"level": "top"}', 422, ["wsi", "level: Input should be a valid integer", "min_poly_area"]),
        ("{bad json", 422, ["is not JSON"]),
    ],
    ids=["a_list", "a_string", "a_field_of_the_wrong_type", "not_json"],
)
def test_wsi_infer_field_that_is_not_a_wsi_request_is_422(app_server, unchanged, wsi, status, words):
    response = requests.post(
        f"{app_server.url}/infer/wsi_v2/{app_server.model}",
        params={"image": app_server.study_ids()[0], "output": "json"},
        data={"wsi": wsi},
        timeout=60,
    )

    assert_refused(response, status, *words)
    assert_server_up(app_server)


@pytest.mark.parametrize("path", ["/infer/wsi_v2", "/infer/wsi"], ids=["wsi_v2", "wsi_deprecated_route"])
def test_wsi_infer_of_an_unknown_model_is_404_and_naming_no_image_422(app_server, unchanged, path):
    """MONAI Label's whole-slide-image routes serve the model on a mammogram too, and answered both with 500."""
    unknown = requests.post(f"{app_server.url}{path}/resnet", params={"image": app_server.study_ids()[0]}, timeout=60)
    no_image = requests.post(f"{app_server.url}{path}/{app_server.model}", timeout=60)

    assert_refused(unknown, 404, "model 'resnet'", app_server.model)
    assert_refused(no_image, 422, "names no image", "?image=<id>")
    assert_server_up(app_server)


def test_wsi_infer_of_a_stored_image_is_the_prediction_with_the_params_it_names(app_server, unchanged):
    """The guard passes a request it accepts on to MONAI Label, which serves the model as ``/infer`` does."""
    response = requests.post(
        f"{app_server.url}/infer/wsi_v2/{app_server.model}",
        params={"image": app_server.study_ids()[0], "output": "json"},
        data={"wsi": json.dumps({"params": {"saliency": {"method": "occlusion", "preset": "fast"}}})},
        timeout=120,
    )

    assert response.status_code == 200, response.text
    assert response.json()["class_names"] == app_server.class_names
    assert response.json()["saliency"]["method"] == "occlusion"


@pytest.mark.parametrize(
    "method, path, params, body, words",
    [
        (
            "post",
            "/activelearning/random",
            {},
            [1, 2],
            ["POST /activelearning/random: body: Input should be a valid dictionary"],
        ),
        (
            "post",
            "/scoring/uncertainty",
            {"run_sync": "maybe"},
            {},
            ["query/run_sync: Input should be a valid boolean"],
        ),
        (
            "get",
            "/datastore/",
            {"output": "everything"},
            None,
            ["GET /datastore/: query/output: Input should be", "/docs"],
        ),
    ],
    ids=["body_not_an_object", "query_not_a_boolean", "query_not_a_choice"],
)
def test_requests_fastapi_refuses_are_one_line_422s_like_every_other(
    app_server, unchanged, method, path, params, body, words
):
    """FastAPI answered these with a list of Pydantic records, which clients (the Slicer module) show as a dump."""
    response = requests.request(method, f"{app_server.url}{path}", params=params, json=body, timeout=60)

    assert isinstance(response.json()["detail"], str), response.text
    assert_refused(response, 422, *words)
    assert_server_up(app_server)


@pytest.fixture(scope="module")
def app_main():
    """The app's ``main`` module and its ``load_predictor``, imported into the test process (MONAI Label's server
    module with it: seconds)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "mammography"))
    return importlib.import_module("main")


@pytest.mark.parametrize(
    "conf, words",
    [
        ({"max_upload_mb": "1GB"}, ["--conf max_upload_mb 1GB: is not a number above zero", "MiB"]),
        ({"max_upload_mb": "0"}, ["--conf max_upload_mb 0: is not a number above zero"]),  # every request a 413
        ({"device": "gpu0"}, ["--conf device gpu0:", "use auto, cpu, cuda or cuda:<index>"]),
        ({"dicomweb_filter": '["StudyDate"]'}, ['--conf dicomweb_filter: ["StudyDate"] is not a JSON object']),
        ({"dicomweb_refresh": "soon"}, ["--conf dicomweb_refresh soon: is not a number zero or more", "seconds"]),
    ],
    ids=["upload_limit_with_a_unit", "upload_limit_zero", "device_unknown", "filter_a_list", "refresh_a_word"],
)
def test_a_conf_value_the_server_cannot_use_stops_it_naming_the_option(app_main, tmp_path, conf, words):
    with pytest.raises(app_main.MammoXAIError) as refused:
        app_main.MammographyApp(str(tmp_path), str(tmp_path), conf)

    assert all(word in str(refused.value) for word in words), str(refused.value)


def test_a_bundle_config_value_the_predictor_refuses_is_raised_alone_not_inside_monais_error(app_main, app_server):
    """MONAI's config parser wraps it in a RuntimeError whose message goes on with the component's whole config."""
    with pytest.raises(app_main.MammoXAIError, match="device 'gpu0'") as refused:
        app_main.load_predictor(app_server.bundle, "gpu0")

    assert refused.value.__cause__ is None and refused.value.__suppress_context__


@pytest.mark.parametrize(
    ("setting", "value", "refusal"),
    [
        ("intensity_scaling", "window", 'not an intensity scaling (use "breast_percentiles" or "display_range")'),
        ("field_of_view", "whole", 'not a field of view (use "breast" or "image")'),
    ],
)
def test_a_bundle_serving_an_unknown_input_setting_is_refused_at_load_naming_the_setting(
    app_main, tmp_path, setting, value, refusal
):
    """Refused where the server starts, not by the first request for a prediction or a training run."""
    configs = Path(__file__).resolve().parents[1] / "monai_bundle" / "configs"
    shutil.copytree(configs, tmp_path / "configs")
    inference = tmp_path / "configs" / "inference.json"
    inference.write_text(json.dumps({**json.loads(inference.read_text()), setting: value}))

    with pytest.raises(app_main.MammoXAIError) as refused:
        app_main.load_predictor(tmp_path, "cpu")

    assert str(refused.value) == f"{setting}: is {value!r}, {refusal}"


def test_an_upload_the_served_intensity_scaling_cannot_scale_is_refused_on_arrival(app_main, tmp_path):
    """A float TIFF fixes no value range: served with display_range, it was stored, then refused by every inference
    of it. The datastore refuses it with the reason and stores nothing; served with breast_percentiles it is fine."""
    from fastapi import HTTPException

    from lib.datastore import MammogramDatastore  # the app's modules are importable once app_main is

    rows, columns = np.mgrid[0:128, 0:96]
    pixels = np.where(((rows - 64) / 54) ** 2 + (columns / 67) ** 2 < 1, 0.6, 0.02).astype(np.float32)
    Image.fromarray(pixels).save(tmp_path / "float.tif")
    classes = ["normal", "benign", "malignant"]
    scaled = MammogramDatastore(
        str(tmp_path / "display"), classes, auto_reload=False, intensity_scaling="display_range"
    )

    with pytest.raises(HTTPException) as refused:
        scaled.add_image("float_case", str(tmp_path / "float.tif"), {})

    assert refused.value.status_code == 422
    assert "fixes no value range" in refused.value.detail and "breast_percentiles" in refused.value.detail
    assert scaled.list_images() == [] and not list((tmp_path / "display").glob("float_case*"))
    stretched = MammogramDatastore(str(tmp_path / "percentiles"), classes, auto_reload=False)
    assert stretched.add_image("float_case", str(tmp_path / "float.tif"), {}) == "float_case"
