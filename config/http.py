"""The ``[http]`` table of the settings: the node's HTTP API and worklist page.

The node serves a small HTTP API (:mod:`pacs_node.api`): studies and jobs
with their state, triage flag, priority and measurements, ``/health``,
``/ready``, Prometheus ``/metrics`` and the worklist page ``/worklist``.
Every path but ``/health``, ``/ready`` and the login form needs the access
token (``Authorization: Bearer <token>``, or the session cookie that the
login form sets).

The token is a secret: it is not part of ``repr``,
``Settings.to_dict(hide_secrets=True)`` replaces it with ``"<hidden>"``
and it is never logged. When ``token`` is not set, the node generates one
at its first start into ``<data_dir>/http-token`` (mode 0600) and logs the
file's path; prefer that file, or ``DEEPSC_HTTP__TOKEN`` in the
environment, to a token written in the settings file.

Examples
--------
>>> HTTPSettings().port
8080
>>> HTTPSettings(port="9090", enabled="false").enabled
False
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from config.sections import check_field
from config.validators import show, to_bool, to_float, to_host, to_port

LOGGER = logging.getLogger(__name__)

__all__ = [
    "HTTP_FIELDS",
    "HTTP_SECRET_FIELDS",
    "MIN_TOKEN_LENGTH",
    "HTTPSettings",
    "http_table",
    "to_token",
]

#: Shortest accepted token (characters). A generated token has 43.
MIN_TOKEN_LENGTH = 16

#: Characters of a token: printable ASCII without spaces (RFC 6750 ``b64token``
#: is stricter; this also allows the punctuation of typical password generators
#: but nothing that breaks an HTTP header).
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


def to_token(value: Any) -> str | None:
    """``None`` for ``None`` or ``""``; else a token of at least 16 printable characters.

    The value is never shown in the error message (it is a secret).
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("should be a string")
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError("should be printable ASCII without spaces")
    if len(value) < MIN_TOKEN_LENGTH:
        raise ValueError(f"should be at least {MIN_TOKEN_LENGTH} characters long")
    return value


#: Keys of the ``[http]`` table and their converters.
HTTP_FIELDS: dict[str, Callable[[Any], Any]] = {
    "enabled": to_bool,
    "bind_address": to_host,
    "port": to_port,
    "token": to_token,
    "worklist_refresh": lambda v: to_float(v, 1.0, 3600.0),
}
#: Keys whose values are secrets (hidden in ``to_dict(hide_secrets=True)``).
HTTP_SECRET_FIELDS: frozenset[str] = frozenset({"token"})


@dataclass(frozen=True)
class HTTPSettings:
    """The node's HTTP API and worklist page.

    Parameters
    ----------
    enabled: bool
        Serve the HTTP API. Default ``True``.
    bind_address: str
        Address it listens on. Default ``"127.0.0.1"`` (this machine only);
        for other machines put a TLS reverse proxy in front of it.
    port: int
        TCP port. Default 8080.
    token: str | None
        Access token (secret, at least 16 printable ASCII characters).
        Default ``None``: the token in ``<data_dir>/http-token``, generated
        at the first start.
    worklist_refresh: float
        Seconds between two refreshes of the worklist page (1-3600).
        Default 10.

    Raises
    ------
    ValueError
        If a value is invalid (the message names the key, never the token).
    """

    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: int = 8080
    token: str | None = field(default=None, repr=False)
    worklist_refresh: float = 10.0

    def __post_init__(self) -> None:
        for name, convert in HTTP_FIELDS.items():
            check_field(self, name, convert)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the token as it is; hide it with ``Settings.to_dict``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def http_table(value: Any) -> HTTPSettings:
    """Accept only :class:`HTTPSettings` (the loader builds it from the table)."""
    if isinstance(value, HTTPSettings):
        return value
    raise ValueError(f"should be HTTPSettings, got {show(type(value).__name__)}")
