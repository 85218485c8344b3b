"""What the app adds to MONAI Label's own security: token verification that works, a login that says why it failed,
a fail-fast check of the login realm and a request-size limit.

Authentication and roles are MONAI Label's (``monailabel.endpoints.user.auth``): with ``MONAI_LABEL_AUTH_ENABLE``
every endpoint requires an OpenID Connect bearer token signed by the realm at ``MONAI_LABEL_AUTH_REALM_URI``
(Keycloak's realm document, whose ``public_key`` verifies the RS256 signature), and each endpoint requires one
role from the token: ``/infer`` and reading the datastore ``MONAI_LABEL_AUTH_ROLE_USER``, saving a label
``MONAI_LABEL_AUTH_ROLE_ANNOTATOR``, ``/train`` ``MONAI_LABEL_AUTH_ROLE_ADMIN``. A hospital runs its identity
provider (Keycloak, or one federating its directory); a password passes through this server only on
``POST /auth/token`` (how the Slicer module and scripts log in), which hands it to the provider and keeps nothing.
Four gaps remain, which this module closes:

* MONAI Label 0.8.5 verifies tokens with ``jwt.decode(token, key, options=...)`` and no ``algorithms``, which
  PyJWT 2 refuses for every token: with authentication on, every request would be answered 401.
  :func:`install_token_verifier` replaces that verification with :func:`verify_token`, the same claims mapping
  with the algorithm pinned to RS256 (pinning it also rules out algorithm-confusion attacks).

* MONAI Label fetches the realm key at the first request; a wrong realm URI then makes every request fail with
  500. :func:`check_auth_realm` fetches it at start-up and stops the server with a message naming the setting.
* MONAI Label's ``POST /auth/token`` answers 500 when the provider refuses the user name or password, and when the
  provider cannot be reached: the user cannot tell a typo from a broken server. It also hands the client the
  provider's refresh token. :func:`install_login_guard` answers 401, 502 or 503 with what to do, and the access
  token alone.
* Request bodies are unbounded: FastAPI spools an upload of any size to disk before the datastore sees it.
  :class:`RequestSizeLimit` answers 413 as soon as the declared or received body exceeds the limit.

Example:
    install_request_size_limit(monailabel.app.app, max_bytes=512 * 2**20)
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import jwt
import requests
from fastapi import APIRouter, Depends, FastAPI
from fastapi.security import OAuth2PasswordRequestForm
from monailabel.config import settings
from monailabel.endpoints.user import auth
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lib.http_errors import refusal
from mammoxai.errors import MammoXAIError

__all__ = [
    "RequestSizeLimit",
    "check_auth_realm",
    "install_login_guard",
    "install_request_size_limit",
    "install_token_verifier",
    "request_token",
    "verify_token",
]

TOKEN_ALGORITHMS = ["RS256"]
"""Signature algorithms accepted for access tokens: Keycloak's default, and the one its realm public key serves."""

logger = logging.getLogger(__name__)


class RequestSizeLimit:
    """ASGI middleware answering 413 to a request whose body is larger than ``max_bytes``.

    A ``Content-Length`` above the limit is refused before the body is read; a body sent without one (chunked) is
    counted as it arrives and refused when the count passes the limit, so the application never receives more
    than ``max_bytes``.

    Args:
        app: the ASGI application to protect.
        max_bytes: the largest accepted request body, in bytes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    return {"type": "http.disconnect"}  # the application stops reading and answers nothing
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        limit = f"{self.max_bytes / 2**20:g} MiB"
        detail = str(
            MammoXAIError(
                "request body",
                f"is larger than the server's limit of {limit}",
                "send a smaller file, or start the server with a larger --conf max_upload_mb",
            )
        )
        body = json.dumps({"detail": detail}).encode("utf-8")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def install_request_size_limit(app: FastAPI, max_bytes: int) -> None:
    """Put :class:`RequestSizeLimit` in front of ``app``, also when its middleware stack is already built.

    MONAI Label creates the FastAPI application itself and constructs the MONAI Label app (ours) while that
    application starts, after Starlette has built its middleware stack, so ``app.add_middleware`` is refused
    then; wrapping the built stack puts the limit in front of every route all the same.
    """
    if app.middleware_stack is None:
        app.add_middleware(RequestSizeLimit, max_bytes=max_bytes)
    elif not isinstance(app.middleware_stack, RequestSizeLimit):
        app.middleware_stack = RequestSizeLimit(app.middleware_stack, max_bytes)
    logger.info(f"request bodies are limited to {max_bytes} bytes")


def check_auth_realm(config: Any = settings) -> None:
    """With authentication enabled, fetch the realm's public key now, or stop with a message naming the setting."""
    if not config.MONAI_LABEL_AUTH_ENABLE:
        logger.warning(
            "authentication is disabled (MONAI_LABEL_AUTH_ENABLE): anyone who reaches this server can use it"
        )
        return
    realm = config.MONAI_LABEL_AUTH_REALM_URI
    try:
        auth.get_public_key(realm)
    except (requests.RequestException, KeyError, ValueError) as error:
        raise MammoXAIError(
            f"MONAI_LABEL_AUTH_REALM_URI {realm!r}",
            f"does not serve a realm public key ({error})",
            "set it to the OpenID Connect realm of your identity provider, e.g. https://keycloak.example/realms/monailabel",
        ) from error
    roles = {
        "infer and read": config.MONAI_LABEL_AUTH_ROLE_USER,
        "save labels": config.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
        "train": config.MONAI_LABEL_AUTH_ROLE_ADMIN,
    }
    logger.info(f"authentication enabled: realm {realm}; roles {roles}")


def verify_token(token: str) -> auth.User:
    """The user an access token names, after checking its RS256 signature against the realm key and its expiry.

    Claims are mapped as MONAI Label maps them (``MONAI_LABEL_AUTH_TOKEN_USERNAME``, ``..._EMAIL``, ``..._NAME``
    and ``..._ROLES``, a ``#``-separated path such as Keycloak's ``realm_access#roles``). Raises
    ``jwt.InvalidTokenError`` for a bad token, which MONAI Label answers with 401.
    """
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return auth.DEFAULT_USER
    key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    claims = jwt.decode(token, key, algorithms=TOKEN_ALGORITHMS, options={"verify_aud": False, "require": ["exp"]})
    roles: Any = claims
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    return auth.User(
        username=str(claims.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or ""),
        email=claims.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=claims.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=list(roles or []),
    )


def install_token_verifier() -> None:
    """Make MONAI Label's endpoints verify tokens with :func:`verify_token` (its dependency looks the function up per call)."""
    auth.from_token = verify_token


def install_login_guard(app: FastAPI) -> None:
    """Put :func:`request_token` in front of MONAI Label's ``POST /auth/token``.

    MONAI Label's route answers 500 whenever the provider refuses the login or cannot be reached, returns the
    provider's whole answer (refresh and ID tokens included) to the client, and waits for the provider inside the
    server's event loop. This route is a plain function, which FastAPI runs in its thread pool.
    """
    router = APIRouter()

    @router.post(f"{settings.MONAI_LABEL_API_STR}/auth/token", summary="Fetch an access token from the realm")
    def access_token(form_data: OAuth2PasswordRequestForm = Depends()) -> dict[str, str | None]:
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            return {"access_token": None, "token_type": None}  # MONAI Label's answer: every call works without one
        return request_token(form_data.username, form_data.password)

    app.router.routes[0:0] = router.routes


def request_token(username: str, password: str, config: Any = settings) -> dict[str, str]:
    """An access token from the realm's token endpoint by the OAuth 2 password grant, as MONAI Label asks for it.

    Only ``access_token`` and ``token_type`` are returned: a refresh token would let whoever holds it mint access
    tokens without the password, and the client needs none (the Slicer module logs in again when a token expires).

    Raises:
        HTTPException: 401 when the provider refuses the user (a wrong password, an unknown or disabled account,
            with the provider's reason), 502 when it answers with another error or not with JSON, 503 when it
            cannot be reached.
    """
    realm = f"identity provider {config.MONAI_LABEL_AUTH_REALM_URI}"
    form = {"client_id": config.MONAI_LABEL_AUTH_CLIENT_ID, "username": username, "password": password}
    try:
        endpoint = auth.open_id_configuration(config.MONAI_LABEL_AUTH_REALM_URI).get("token_endpoint")
        if not endpoint:
            problem = "names no token_endpoint in its OpenID configuration"
            raise refusal(HTTPStatus.BAD_GATEWAY, realm, problem, "check MONAI_LABEL_AUTH_REALM_URI")
        form["grant_type"] = "password"
        response = requests.post(endpoint, data=form, timeout=config.MONAI_LABEL_AUTH_TIMEOUT)
        answer = response.json()
    except ValueError as error:  # before RequestException: requests' JSONDecodeError is both
        problem = "answered with something that is not JSON (a web page?)"
        fix = "check that MONAI_LABEL_AUTH_REALM_URI names an OpenID Connect realm"
        raise refusal(HTTPStatus.BAD_GATEWAY, realm, problem, fix) from error
    except requests.RequestException as error:
        problem = f"cannot be reached ({type(error).__name__})"
        fix = "start it, or check MONAI_LABEL_AUTH_REALM_URI"
        raise refusal(HTTPStatus.SERVICE_UNAVAILABLE, realm, problem, fix) from error
    answer = answer if isinstance(answer, dict) else {}
    reason = ": ".join(str(answer[key]) for key in ("error", "error_description") if answer.get(key))
    if response.ok and answer.get("access_token"):
        return {"access_token": str(answer["access_token"]), "token_type": str(answer.get("token_type") or "bearer")}
    if response.status_code == HTTPStatus.UNAUTHORIZED or answer.get("error") == "invalid_grant":  # Keycloak's two
        problem = f"refused the login of {username!r} ({reason or 'wrong user name or password'})"
        fix = "check the user name and password; the realm's administrator can reset them"
        raise refusal(HTTPStatus.UNAUTHORIZED, realm, problem, fix)
    problem = f"answered the login with HTTP {response.status_code}" + (f" ({reason})" if reason else "")
    raise refusal(HTTPStatus.BAD_GATEWAY, realm, problem, "check MONAI_LABEL_AUTH_CLIENT_ID and the provider's log")
