"""Errors raised by the :mod:`pacs_node` package.

Domain failures derive from :class:`PacsNodeError`; argument errors use the
built-in ``ValueError`` / ``TypeError``.
"""
from __future__ import annotations

__all__ = ["PacsNodeError", "AssociationFailedError", "NodeError", "NodeStartError"]


class PacsNodeError(Exception):
    """Base class of the pacs_node package's domain errors."""


class AssociationFailedError(PacsNodeError, ConnectionError):
    """No association with a peer, or no response on it."""


class NodeError(PacsNodeError):
    """The node cannot do what was asked (start, stop, process)."""


class NodeStartError(NodeError):
    """The node cannot start: bad model, unusable data directory, port in use..."""
