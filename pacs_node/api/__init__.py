"""The node's HTTP API: studies and jobs, health, readiness, metrics, worklist page.

:func:`create_app` builds the Starlette application, :class:`HTTPServer`
serves it with uvicorn in a thread, :func:`load_or_create_token` finds the
access token. See ``docs/api.md``.
"""

from pacs_node.api.app import RESEARCH_USE_LINE, ReadinessCheck, create_app
from pacs_node.api.auth import (
    SESSION_COOKIE,
    TOKEN_FILE_NAME,
    ApiToken,
    TokenError,
    load_or_create_token,
)
from pacs_node.api.metrics import LATENCY_BUCKETS, NodeCollector
from pacs_node.api.server import HTTPServer

__all__ = [
    "ApiToken",
    "HTTPServer",
    "LATENCY_BUCKETS",
    "NodeCollector",
    "RESEARCH_USE_LINE",
    "ReadinessCheck",
    "SESSION_COOKIE",
    "TOKEN_FILE_NAME",
    "TokenError",
    "create_app",
    "load_or_create_token",
]
