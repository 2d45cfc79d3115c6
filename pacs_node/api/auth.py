"""The HTTP API's access token: where it comes from, and the check of every request.

Token source (:func:`load_or_create_token`)
    ``http.token`` in the settings (or ``DEEPSC_HTTP__TOKEN``); otherwise the
    file ``<data_dir>/http-token``, generated at the first start with
    :func:`secrets.token_urlsafe` (256 bits) and mode 0600. The file's path
    is logged, never the token.
Requests (:class:`TokenMiddleware`)
    Every path but the public ones (``/health``, ``/ready``, the login form)
    needs ``Authorization: Bearer <token>`` or the worklist session cookie.
    The comparison is constant-time (:func:`hmac.compare_digest`). A
    refused API request gets 401 with ``WWW-Authenticate: Bearer`` (RFC
    6750 section 3); a page request (``GET /worklist``) without an
    ``Authorization`` header is redirected to the login form instead.
Worklist session cookie
    The login form (``POST /login`` with the token) sets the cookie
    :data:`SESSION_COOKIE`: ``HttpOnly`` (page scripts cannot read it),
    ``SameSite=Strict`` (not sent with requests from other sites),
    ``Secure`` when the request came over HTTPS, ``Path=/``, no expiry (it
    ends with the browser session). Its value is not the token but
    ``HMAC-SHA256(token, "deepsc-node worklist session")``: it opens the node
    only while the token stays the same (change the token to end every
    session), and the token itself is never stored in the browser.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import HTTPConnection

from config.http import MIN_TOKEN_LENGTH, to_token

LOGGER = logging.getLogger(__name__)

__all__ = [
    "PUBLIC_PATHS",
    "SESSION_COOKIE",
    "TOKEN_FILE_NAME",
    "ApiToken",
    "TokenError",
    "TokenMiddleware",
    "load_or_create_token",
]

#: Name of the generated token file in the data directory.
TOKEN_FILE_NAME = "http-token"
#: Name of the worklist session cookie.
SESSION_COOKIE = "deepsc_session"
#: Paths served without the token: liveness, readiness, the login form.
PUBLIC_PATHS: frozenset[str] = frozenset({"/health", "/ready", "/login"})
#: Paths of pages: refused requests are redirected to the login form.
PAGE_PATHS: frozenset[str] = frozenset({"/", "/worklist"})

_SESSION_CONTEXT = b"deepsc-node worklist session"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenError(RuntimeError):
    """The token file cannot be read or written, or holds no valid token."""


@dataclass(frozen=True)
class ApiToken:
    """The access token and what the requests are checked against.

    Parameters
    ----------
    value: str
        The token (secret; not part of ``repr``).
    source: str
        Where it came from, for the log: ``"settings"`` or the file's path.
    """

    value: str
    source: str

    def __repr__(self) -> str:
        return f"ApiToken(source={self.source!r})"

    @property
    def session_value(self) -> str:
        """The value of the worklist session cookie for this token."""
        return hmac.new(self.value.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()

    def matches(self, candidate: str) -> bool:
        """Whether `candidate` is the token (constant-time)."""
        return hmac.compare_digest(candidate.encode(), self.value.encode())

    def matches_session(self, candidate: str) -> bool:
        """Whether `candidate` is a valid session cookie value (constant-time)."""
        return hmac.compare_digest(candidate.encode(), self.session_value.encode())


def load_or_create_token(configured: str | None, data_dir: Path) -> ApiToken:
    """The configured token, or the one in ``<data_dir>/http-token`` (created if missing).

    Parameters
    ----------
    configured: str | None
        ``Settings.http.token``.
    data_dir: pathlib.Path
        ``Settings.data_dir`` (exists).

    Returns
    -------
    ApiToken

    Raises
    ------
    TokenError
        If the file cannot be created or read, or holds no valid token.
    """
    if configured is not None:
        LOGGER.info("HTTP API token: from the settings (http.token)")
        return ApiToken(configured, "settings")
    path = Path(data_dir) / TOKEN_FILE_NAME
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token_file(path)
    except OSError as exc:
        raise TokenError(f"cannot create the HTTP API token file {path}: {exc}") from exc
    token = secrets.token_urlsafe(32)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise TokenError(f"cannot write the HTTP API token file {path}: {exc}") from exc
    LOGGER.info("HTTP API token generated into %s (mode 0600)", path)
    return ApiToken(token, str(path))


def _read_token_file(path: Path) -> ApiToken:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read the HTTP API token file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        LOGGER.warning(
            "HTTP API token file %s is readable by other users (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    try:
        token = to_token(text)
    except ValueError as exc:
        raise TokenError(f"the HTTP API token file {path}: the token {exc}") from None
    if token is None:
        raise TokenError(
            f"the HTTP API token file {path} is empty; delete it to generate a new token "
            f"or write one of at least {MIN_TOKEN_LENGTH} characters"
        )
    LOGGER.info("HTTP API token: from %s", path)
    return ApiToken(token, str(path))


def is_authorised(scope: Scope, token: ApiToken) -> tuple[bool, str | None]:
    """Check a request's credentials.

    Returns
    -------
    tuple[bool, str | None]
        ``(True, None)``, or ``(False, error)`` where error is ``None`` when
        no credentials came and ``"invalid_token"`` when wrong ones came.
    """
    connection = HTTPConnection(scope)
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() == "bearer" and token.matches(credentials.strip()):
            return True, None
        return False, "invalid_token"
    cookie = connection.cookies.get(SESSION_COOKIE)
    if cookie is not None:
        if token.matches_session(cookie):
            return True, None
        return False, "invalid_token"
    return False, None


class TokenMiddleware:
    """ASGI middleware: refuse requests without the token (see the module docstring).

    Parameters
    ----------
    app: ASGI application
        The wrapped application.
    token: ApiToken
        The access token.
    public_paths: Collection[str]
        Paths served without the token.
    """

    def __init__(
        self, app: ASGIApp, token: ApiToken, public_paths: Collection[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self.token = token
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        ok, error = is_authorised(scope, self.token)
        if ok:
            await self.app(scope, receive, send)
            return
        if (
            scope["path"] in PAGE_PATHS
            and scope.get("method") == "GET"
            and not _has_authorization_header(scope)
        ):  # a browser without (or with a stale) session: to the login form
            await _respond(send, 303, b"", [(b"location", b"/login")])
            return
        challenge = 'Bearer realm="deepsc-node"'
        if error is not None:
            challenge += f', error="{error}"'
        body = b'{"error": "unauthorized", "detail": "send Authorization: Bearer <token>"}'
        await _respond(
            send,
            401,
            body,
            [(b"www-authenticate", challenge.encode()), (b"content-type", b"application/json")],
        )


def _has_authorization_header(scope: Scope) -> bool:
    """Whether the request sent an Authorization header (ASGI header names are lower-case)."""
    return any(name == b"authorization" for name, _ in scope.get("headers", ()))


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})
