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

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

from fastapi import HTTPException

from mammoxai.errors import MammoXAIError

__all__ = ["client_errors", "conflict", "not_found"]


@contextmanager
def client_errors(status: HTTPStatus = HTTPStatus.UNPROCESSABLE_ENTITY) -> Iterator[None]:
    """Re-raise a :class:`MammoXAIError` from the block as an ``HTTPException`` with ``status`` (default 422)."""
    try:
        yield
    except MammoXAIError as error:
        raise HTTPException(status_code=status, detail=str(error)) from error


def not_found(source: str, fix: str) -> HTTPException:
    """A 404 for an image, label or model id the server does not have, worded like a :class:`MammoXAIError`."""
    return HTTPException(status_code=HTTPStatus.NOT_FOUND, detail=str(MammoXAIError(source, "not found", fix)))


def conflict(source: str, problem: str, fix: str) -> HTTPException:
    """A 409: the request collides with the server's state (an id in use, a run in progress); nothing was changed."""
    return HTTPException(status_code=HTTPStatus.CONFLICT, detail=str(MammoXAIError(source, problem, fix)))
