"""Requests MONAI Label would answer with 500, or with a task that fails later, answered with a 4xx / 503 up front.

MONAI Label's ``POST /scoring/<method>`` and ``POST /batch/infer/<model>`` hand any name to a background task and
answer 200 ``SUBMITTED``; the task then fails in its log (``GET /scoring/`` says ``ERROR``) and the client never
learns that the name was the problem. ``POST /scoring/uncertainty`` (and ``POST /scoring/``, which runs every
method) fails the same way before there are weights to score with, or when they do not fit the network (503 here,
as with ``run_sync=true``). Its ``POST /infer/<model>`` answers 500 for a request that names no image, its WSI
routes (``/infer/wsi_v2/<model>``, ``/infer/wsi/<model>``) also for a model it does not have, and
``GET /datastore/image/info`` answers 200 ``{}`` for an image it does not have. Every route that takes a JSON form
field (``params`` of ``/infer``, of an image upload and of a label; ``info`` of an image or a label; ``wsi``)
answers 500 when the field is JSON but not an object (``[1, 2]``, ``"x"``): MONAI Label adds the user's name to it,
merges it into the datastore index or reads fields from it.
MONAI Label's ``/infer`` reads any server path given as the image, as it must for the copy it makes of an image sent
with the request; the ``/infer`` guards make that copy themselves, so that the app knows it (:func:`request_upload`)
and reads every other image string as a datastore id (a temporary file may be another user's image, sent with a
request still in progress). :func:`install_route_guards` puts a route in front of each, with the same role and
parameters, that refuses what the app cannot serve and passes every other request on to MONAI Label's own handler,
as :func:`~lib.trainers.install_train_guard` does for ``POST /train/<model>``.

Every guard route is a plain function, which FastAPI runs in its thread pool. MONAI Label's own routes are ``async``
and run on the server's one event loop, so an inference (a faithful saliency method takes minutes on a CPU), a batch
or scoring run with ``run_sync=true``, an upload being validated, or a strategy scoring the unlabeled images held up
every other request, ``GET /info/`` included, until it ended; ``POST /activelearning/<strategy>`` is guarded for that
alone. Requests served side by side share the predictor, which runs one forward pass at a time under its own lock,
and the datastore, which makes each change under its lock (:class:`~lib.datastore.MammogramDatastore`).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, File, Form, UploadFile
from monailabel.config import settings
from monailabel.endpoints import activelearning as activelearning_endpoints
from monailabel.endpoints import batch_infer as batch_endpoints
from monailabel.endpoints import datastore as datastore_endpoints
from monailabel.endpoints import infer as infer_endpoints
from monailabel.endpoints import scoring as scoring_endpoints
from monailabel.endpoints import wsi_infer as wsi_endpoints
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.endpoints.wsi_infer import WSIInput
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from pydantic import ValidationError

from lib.http_errors import check_offered, client_errors, not_found, validation_problems
from lib.scoring import UncertaintyScoring
from mammoxai.errors import MammoXAIError

__all__ = ["install_route_guards", "request_upload"]

BATCH_DEFAULTS: dict[str, Any] = inspect.signature(batch_endpoints.api_run).parameters["params"].default
"""MONAI Label's batch-inference params when a request sends none, kept so the guard changes nothing else."""


_REQUEST_UPLOAD: ContextVar[str | None] = ContextVar("request_upload", default=None)


def request_upload() -> str | None:
    """The server's copy of the image sent with the ``/infer`` request being served (form field ``file``), or None.

    The app reads every other image string of a request as a datastore id, also one that looks like such a copy: a
    path in the temporary folder may be another user's image, sent with a request still in progress.
    """
    return _REQUEST_UPLOAD.get()


@contextmanager
def _sent_image(file: UploadFile | None, unnamed_suffix: str) -> Iterator[str | None]:
    """Copy the image sent with the request to a temporary file, as MONAI Label's handler would, and make it
    :func:`request_upload` while the block runs (the inference); None for a request that sent none.

    Args:
        file: the form field ``file``.
        unnamed_suffix: the suffix MONAI Label's handler gives a file sent without a name.
    """
    if not file:
        yield None
        return
    suffix = "".join(Path(file.filename).suffixes) if file.filename else unnamed_suffix
    handle, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(handle, "wb") as copy:
        shutil.copyfileobj(file.file, copy)
    token = _REQUEST_UPLOAD.set(path)
    try:
        yield path
    finally:
        _REQUEST_UPLOAD.reset(token)
        os.remove(path)


def _json_object(text: str, source: str, example: str) -> dict[str, Any]:
    """The JSON object a form field holds, or a :class:`MammoXAIError` (422 in :func:`~lib.http_errors.client_errors`)
    for JSON that is not an object, raised before MONAI Label's handler copies an upload or stores anything.

    Text that is not JSON at all raises :class:`json.JSONDecodeError`, answered with 422 by
    :func:`~lib.http_errors.install_request_error_handlers`; an empty field is MONAI Label's default, ``{}``.

    Args:
        text: the field as sent.
        source: the field, named for the user (``"params of upload 'case1'"``).
        example: a valid field, shown in the fix (``'params={"note": "..."}'``).
    """
    value = json.loads(text) if text else {}
    if not isinstance(value, dict):
        problem = f"{json.dumps(value)[:80]} is not a JSON object"
        raise MammoXAIError(source, problem, f"send a JSON object, e.g. {example}")
    return value


def _check_ready(scorer: ScoringMethod) -> None:
    """503 now (:meth:`UncertaintyScoring.load_weights`) for a scoring method that needs weights the server cannot
    load, not a background run that fails in its log."""
    if isinstance(scorer, UncertaintyScoring):
        scorer.load_weights()


def install_route_guards(
    server: FastAPI,
    scoring_methods: Mapping[str, ScoringMethod],
    infer_models: Collection[str],
    datastore: Callable[[], Datastore],
) -> None:
    """Put the guard routes in front of MONAI Label's ``/infer``, ``/scoring``, ``/batch/infer``, ``/datastore`` and
    ``/activelearning`` routes that the module docstring lists."""
    router = APIRouter()
    api = settings.MONAI_LABEL_API_STR

    def check_infer(route: str, model: str, names_image: bool) -> None:
        """404 for a model the app does not serve, 422 for a request that names no image (MONAI Label: 500 for both on
        its WSI routes, 500 for the second on ``/infer``)."""
        check_offered("model", model, infer_models)
        if not names_image:
            fix = "pass ?image=<id> (GET /datastore/?output=all) or send the image as the form field file"
            with client_errors():
                raise MammoXAIError(route, "names no image", fix)

    @router.post(f"{api}/infer/{{model}}", summary="Classify one mammogram and explain it")
    def infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: infer_endpoints.ResultType | None = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ) -> Any:
        check_infer(f"POST /infer/{model}", model, bool(image or file or session_id))
        with client_errors():
            _json_object(params, f"POST /infer/{model} params", 'params={"saliency": {"method": "gradcam"}}')
        with _sent_image(file, ".nii.gz") as sent:
            return infer_endpoints.run_inference(
                background_tasks, model, sent or image, session_id, params, None, label, output
            )

    # MONAI Label's whole-slide-image routes run the same inference on a mammogram (it is not a slide)
    @router.post(f"{api}/infer/wsi_v2/{{model}}", summary="Classify one mammogram and explain it (WSI route)")
    def infer_wsi(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        file: UploadFile = File(None),
        wsi: str = Form(WSIInput().model_dump_json()),
        output: wsi_endpoints.ResultType | None = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ) -> Any:
        route = f"POST /infer/wsi_v2/{model}"
        check_infer(route, model, bool(image or file or session_id))
        example = 'wsi={"params": {"saliency": {"method": "gradcam"}}}'
        with client_errors():
            fields = _json_object(wsi, f"{route} wsi", example)
            try:
                region = WSIInput.model_validate(fields)
            except ValidationError as error:  # MONAI Label: 500
                problems = validation_problems(error.errors())
                fix = f"send the fields {sorted(WSIInput.model_fields)} with these types, e.g. {example}"
                raise MammoXAIError(f"{route} wsi", problems, fix) from error
        with _sent_image(file, ".png") as sent:
            return wsi_endpoints.run_wsi_inference(
                background_tasks, model, sent or image, session_id, None, region, output
            )

    @router.post(f"{api}/infer/wsi/{{model}}", include_in_schema=False, deprecated=True)
    def infer_wsi_deprecated(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        wsi: WSIInput = WSIInput(),
        output: wsi_endpoints.ResultType | None = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ) -> Any:
        check_infer(f"POST /infer/wsi/{model}", model, bool(image or session_id))
        return wsi_endpoints.run_wsi_inference(background_tasks, model, image, session_id, None, wsi, output)

    @router.get(f"{api}/datastore/image/info", summary="The stored information of one image")
    def image_info(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))) -> Any:
        info = datastore().get_image_info(image)
        if not info:  # every stored image has at least its name and timestamp; {} means MONAI Label found none
            raise not_found(f"image {image!r}", "pick an id from GET /datastore/?output=all")
        return info

    @router.post(f"{api}/scoring/{{method}}", summary="Run a scoring method over the datastore")
    def scoring(
        method: str,
        params: dict | None = None,
        run_sync: bool = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ) -> Any:
        check_offered("scoring method", method, scoring_methods)
        _check_ready(scoring_methods[method])
        return scoring_endpoints.run_method(method, params, run_sync)

    @router.post(f"{api}/scoring/", include_in_schema=False, deprecated=True)
    def scoring_all(
        params: dict | None = None,
        run_sync: bool = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ) -> Any:
        for scorer in scoring_methods.values():
            _check_ready(scorer)
        return scoring_endpoints.run(params, run_sync)

    @router.post(f"{api}/batch/infer/{{model}}", summary="Infer every selected image and store the results")
    def batch_infer(
        model: str,
        images: BatchInferImageType = BatchInferImageType.IMAGES_ALL,
        params: dict | None = None,
        run_sync: bool = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ) -> Any:
        check_offered("model", model, infer_models)
        return batch_endpoints.run(model, images, BATCH_DEFAULTS if params is None else params, run_sync)

    @router.post(f"{api}/activelearning/{{strategy}}", summary="Propose the next case to label")
    def next_case(
        strategy: str,
        params: dict | None = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ) -> Any:
        return activelearning_endpoints.sample(strategy, params, user.username)

    # MONAI Label serves an upload under two paths, the older one deprecated; both are guarded
    @router.put(f"{api}/datastore/", include_in_schema=False, deprecated=True)
    @router.put(f"{api}/datastore/image", summary="Upload a mammogram")
    def add_image(
        background_tasks: BackgroundTasks,
        image: str | None = None,
        params: str = Form("{}"),
        file: UploadFile = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ) -> Any:
        with client_errors():
            _json_object(params, f"params of upload {image or file.filename!r}", 'params={"note": "..."}')
        return datastore_endpoints.add_image(background_tasks, image, params, file, user.username)

    @router.put(f"{api}/datastore/label", summary="Save a clinician's label")
    def save_label(
        background_tasks: BackgroundTasks,
        image: str,
        params: str = Form("{}"),
        tag: str = DefaultLabelTag.FINAL.value,
        label: UploadFile = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ) -> Any:
        with client_errors():
            _json_object(params, f"params of label {tag!r} of image {image!r}", 'params={"note": "..."}')
        return datastore_endpoints.save_label(background_tasks, image, params, tag, label, user.username)

    @router.put(f"{api}/datastore/image/info", summary="Add to the stored information of one image")
    def update_image_info(
        image: str, info: str = Form("{}"), user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
    ) -> Any:
        with client_errors():
            _json_object(info, f"info of image {image!r}", 'info={"note": "..."}')
        return datastore_endpoints.update_image_info(image, info, user.username)

    @router.put(f"{api}/datastore/label/info", summary="Add to the stored information of one label")
    def update_label_info(
        label: str,
        tag: str,
        info: str = Form("{}"),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ) -> Any:
        with client_errors():
            _json_object(info, f"info of label {tag!r} of image {label!r}", 'info={"note": "..."}')
        return datastore_endpoints.update_label_info(label, tag, info, user.username)

    @router.put(f"{api}/datastore/updatelabelinfo", include_in_schema=False, deprecated=True)
    def update_label_info_deprecated(
        label: str,
        tag: str,
        params: str = Form("{}"),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ) -> Any:
        with client_errors():
            _json_object(params, f"params of label {tag!r} of image {label!r}", 'params={"note": "..."}')
        return datastore_endpoints.update_label_info(label, tag, params, user.username)

    server.router.routes[0:0] = router.routes
