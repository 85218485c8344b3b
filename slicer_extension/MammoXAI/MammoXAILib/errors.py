"""The one exception type of the Slicer-side logic.

Everything that can go wrong between the panel and the server (no server at the URL, a server that is not
MammoXAI, a timeout, a 4xx with the server's explanation, a reply the panel cannot read, a marking outside the
image) is raised as :class:`MammoXAIClientError`. Its message is written for the person at the panel: what
happened and what to do. ``kind`` lets the panel react (e.g. keep a correction for later when the server is
unreachable) without parsing the text.
"""

from __future__ import annotations

__all__ = ["MammoXAIClientError"]


class MammoXAIClientError(Exception):
    """A failure the panel shows to the user as one message.

    Args:
        message: what happened and what to do, e.g. "Cannot reach http://host:8000 (connection refused):
            start the server or check the URL".
        kind: ``"unreachable"``, ``"timeout"``, ``"not_mammoxai"``, ``"http"``, ``"bad_response"`` or
            ``"input"`` (something the user marked or chose).
        status: the HTTP status for ``kind == "http"``, else ``None``.
    """

    TRANSIENT_KINDS = ("unreachable", "timeout")
    """Kinds after which trying again later may succeed: the server was down or slow."""

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:  # noqa: B042 (__reduce__)
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status

    def __reduce__(self) -> tuple[type, tuple[str, str, int | None]]:
        # pickle and copy rebuild an exception from its args, which hold the message only (str(error) is the message)
        return type(self), (self.message, self.kind, self.status)
