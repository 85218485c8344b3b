"""How a user's mistake reaches an HTTP client as a 4xx instead of a 500.

MONAI Label answers any exception it does not know with 500 and leaves the explanation in the server log, so
the client learns nothing and the user cannot tell a bad file from a broken server. MammoXAI raises
:class:`~mammoxai.errors.MammoXAIError` for everything a user can fix; the datastore and the infer task run the
code that reads user input inside :func:`client_errors`, which turns that exception into a FastAPI
``HTTPException`` whose ``detail`` is the error message (it names the input and the fix).

Example:
    with client_errors():
        mammogram = read_mammogram(uploaded_file)
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mammoxai.cli import user_error
from mammoxai.errors import MammoXAIError

__all__ = [
    "check_offered",
    "client_errors",
    "client_message",
    "conflict",
    "install_request_error_handlers",
    "not_found",
    "refusal",
    "user_error_alone",
    "validation_problems",
]


@contextmanager
def client_errors(
    status: HTTPStatus = HTTPStatus.UNPROCESSABLE_ENTITY, files: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Re-raise a :class:`MammoXAIError` from the block as an ``HTTPException`` with ``status`` (default 422).

    Args:
        status: the HTTP status of the refusal.
        files: each server-side file the block reads, to the name the client knows it by (``"image 'case1'"``).
            The reader names the file it refuses by its path, which is the server's (the studies folder, the
            temporary copy of an upload): the client knows the image by its id, and a path it cannot use tells it
            nothing but where the server keeps its files.
    """
    try:
        yield
    except MammoXAIError as error:
        raise HTTPException(status_code=status, detail=client_message(str(error), files)) from error


@contextmanager
def user_error_alone() -> Iterator[None]:
    """Re-raise the :class:`MammoXAIError` behind an exception from the block on its own, without the chain.

    MONAI's config parser wraps what a component raises in its own ``RuntimeError``, whose message goes on with the
    component's whole config: the one line that says what to fix ended up buried in the middle of a server's start-up
    traceback or cut off a training run's log. Any other exception propagates unchanged.
    """
    try:
        yield
    except Exception as error:  # noqa: BLE001 - anything but a user error propagates unchanged
        cause = user_error(error)
        if cause is None:
            raise
        raise cause from None


def client_message(message: str, files: Mapping[str, str] | None = None) -> str:
    """``message`` with each server-side file of ``files`` named as the client knows it (see :func:`client_errors`).

    For the messages a client reads outside a refusal: those a run reports per image (a scoring pass) or that are
    kept in an image's info. The server log keeps the path, which is what an administrator needs.
    """
    for path, name in (files or {}).items():
        message = message.replace(str(Path(path)), name)
    return message


def refusal(status: HTTPStatus, source: str, problem: str, fix: str) -> HTTPException:
    """An ``HTTPException`` whose ``detail`` is worded like a :class:`MammoXAIError`: the input, the problem, the fix."""
    return HTTPException(status_code=status, detail=str(MammoXAIError(source, problem, fix)))


def not_found(source: str, fix: str) -> HTTPException:
    """A 404 for an image, label or model id the server does not have."""
    return refusal(HTTPStatus.NOT_FOUND, source, "not found", fix)


def check_offered(kind: str, name: Any, offered: Collection[str]) -> None:
    """404 for a model, strategy, scoring method or trainer the server does not offer, listing those it does (MONAI
    Label answers an unknown name with 500, or with a background task that fails in its log)."""
    if name not in offered:
        raise not_found(f"{kind} {name!r}", f"use one of {sorted(offered)} (GET /info/)")


def conflict(source: str, problem: str, fix: str) -> HTTPException:
    """A 409: the request collides with the server's state (an id in use, a run in progress); nothing was changed."""
    return refusal(HTTPStatus.CONFLICT, source, problem, fix)


def validation_problems(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's validation errors as one line, ``"body/run_sync: Input should be a valid boolean; ..."``."""
    return "; ".join(f"{'/'.join(map(str, error['loc']))}: {error['msg']}" for error in errors)


def install_request_error_handlers(server: FastAPI) -> None:
    """Answer a request whose JSON does not parse with 422 instead of 500, and word FastAPI's own 422s as ours.

    MONAI Label's endpoints ``json.loads`` their ``params`` (``/infer``, ``/datastore/label``, ``/datastore/image``)
    and ``info`` fields themselves, outside any code of this app, so the error is caught where FastAPI handles
    exceptions. FastAPI refuses a JSON body of the wrong shape (``[1, 2]`` for ``/activelearning/<strategy>``,
    ``/train/<model>``, ``/scoring/<method>``) with a list of Pydantic records; every other refusal of the server is
    one line naming the input and the fix, which is what clients (the Slicer module) show, so these are too.

    MONAI Label builds the app while the server starts, after Starlette has built its middleware stack with the
    exception handlers of the time, so the stack is built again; call this before wrapping the stack
    (:func:`~lib.security.install_request_size_limit`).
    """

    async def bad_json(request: Request, error: json.JSONDecodeError) -> JSONResponse:
        problem = f"a JSON field of the request (params, info) is not JSON ({error})"
        fix = 'send a JSON object, e.g. params={"saliency": {"method": "gradcam"}}'
        return _unprocessable(request, problem, fix)

    async def bad_shape(request: Request, error: RequestValidationError) -> JSONResponse:
        return _unprocessable(request, validation_problems(error.errors()), "send it as the server's GET /docs shows")

    server.add_exception_handler(json.JSONDecodeError, bad_json)
    server.add_exception_handler(RequestValidationError, bad_shape)
    if server.middleware_stack is not None:
        server.middleware_stack = server.build_middleware_stack()


def _unprocessable(request: Request, problem: str, fix: str) -> JSONResponse:
    """A 422 whose ``detail`` names the route, the problem and the fix, like every refusal of this app."""
    detail = str(MammoXAIError(f"{request.method} {request.url.path}", problem, fix))
    return JSONResponse(status_code=HTTPStatus.UNPROCESSABLE_ENTITY, content={"detail": detail})
