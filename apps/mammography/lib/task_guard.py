"""Unknown scoring methods and batch-inference models answered with 404 before MONAI Label starts a task.

MONAI Label's ``POST /scoring/<method>`` and ``POST /batch/infer/<model>`` hand any name to a background task and
answer 200 ``SUBMITTED``; the task then fails in its log (``GET /scoring/`` says ``ERROR``) and the client never
learns that the name was the problem. :func:`install_task_guard` puts a route in front of each, with the same role
and parameters, that refuses a name the app does not have and passes every other request on to MONAI Label's own
handler, as :func:`~lib.trainers.install_train_guard` does for ``POST /train/<model>``.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from lib.http_errors import not_found
from monailabel.config import settings
from monailabel.endpoints import batch_infer as batch_endpoints
from monailabel.endpoints import scoring as scoring_endpoints
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType

__all__ = ["install_task_guard"]

BATCH_DEFAULTS: dict[str, Any] = inspect.signature(batch_endpoints.api_run).parameters["params"].default
"""MONAI Label's batch-inference params when a request sends none, kept so the guard changes nothing else."""


def install_task_guard(server: FastAPI, scoring_methods: Collection[str], infer_models: Collection[str]) -> None:
    """Answer ``POST /scoring/<method>`` and ``POST /batch/infer/<model>`` for names the app lacks with 404."""
    router = APIRouter()
    api = settings.MONAI_LABEL_API_STR

    @router.post(f"{api}/scoring/{{method}}", summary="Run a scoring method over the datastore")
    async def scoring(
        method: str,
        params: dict | None = None,
        run_sync: bool = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ) -> Any:
        if method not in scoring_methods:
            raise not_found(f"scoring method {method!r}", f"use one of {sorted(scoring_methods)} (GET /info/)")
        return scoring_endpoints.run_method(method, params, run_sync)

    @router.post(f"{api}/batch/infer/{{model}}", summary="Infer every selected image and store the results")
    async def batch_infer(
        model: str,
        images: BatchInferImageType = BatchInferImageType.IMAGES_ALL,
        params: dict | None = None,
        run_sync: bool = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ) -> Any:
        if model not in infer_models:
            raise not_found(f"model {model!r}", f"use one of {sorted(infer_models)} (GET /info/)")
        return batch_endpoints.run(model, images, BATCH_DEFAULTS if params is None else params, run_sync)

    server.router.routes[0:0] = router.routes
