"""Logging set-up of the node's commands: one format, one level, no PHI.

The package modules only create their ``LOGGER = logging.getLogger(__name__)``;
the commands (``serve``, ``process``, ``status``) call :func:`setup_logging`
once. Lines look like::

    2024-05-01 12:00:00,123 INFO pacs_node.worker: job 12 (series 1.2.3...) written ...

Patient data
    The node's own log lines name series, instances and jobs by UID and job
    id, never by patient name, ID or birth date. Third-party warnings can
    quote attribute values (pydicom warns about an invalid Patient's Name
    and prints it), so Python warnings are routed into logging and their
    text is withheld at INFO and above by :class:`WarningRedactor`; at
    DEBUG level (an operator's explicit choice) they appear in full.
"""
from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["LOG_FORMAT", "LibraryMessageRedactor", "WarningRedactor", "setup_logging"]

LOGGER = logging.getLogger(__name__)

#: Format of every log line: time, level, logger name, message.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Third-party loggers that are too chatty at INFO.
_QUIET_LOGGERS: tuple[str, ...] = ("pynetdicom", "alembic", "highdicom")

_HANDLER_NAME = "deepsc-node"


class WarningRedactor(logging.Filter):
    """Replace the text of captured Python warnings (they may quote PHI).

    Attached to the ``py.warnings`` logger by :func:`setup_logging` unless the
    level is DEBUG. The record keeps its level; its message becomes the
    warning category and the module that raised it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite `record` in place; always keep it.

        Parameters
        ----------
        record: logging.LogRecord
            A record of the ``py.warnings`` logger (``"path:line: Category: text"``).

        Returns
        -------
        bool
            ``True``.
        """
        text = record.getMessage()
        head, _, rest = text.partition(": ")
        category = rest.split(":", 1)[0].strip() if rest else "Warning"
        module = head.rsplit("/", 1)[-1].split(":", 1)[0] if head else "unknown"
        record.msg = "%s from %s (text withheld: it may quote patient data; use DEBUG to see it)"
        record.args = (category or "Warning", module)
        return True


class LibraryMessageRedactor(logging.Filter):
    """Withhold the text of pydicom's own log lines (they may quote values).

    pydicom logs invalid element values verbatim (a malformed Patient's Name,
    a bad UID in a command set). Attached to the ``pydicom`` logger by
    :func:`setup_logging` unless the level is DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite `record` in place; always keep it."""
        record.msg = "%s message withheld (it may quote patient data; use DEBUG to see it)"
        record.args = (record.name,)
        return True


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send log lines of every logger to `stream` with :data:`LOG_FORMAT`.

    Calling it again replaces the handler it installed (no duplicate lines).

    Parameters
    ----------
    level: str
        Level name: DEBUG, INFO, WARNING, ERROR or CRITICAL (``Settings.log_level``).
    stream: TextIO | None
        Where lines go; default ``sys.stderr``.

    Raises
    ------
    ValueError
        If `level` is not a level name.
    """
    name = str(level).upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(
            f'Argument "level" should be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}'
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(numeric)
    for quiet in _QUIET_LOGGERS:
        logging.getLogger(quiet).setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    for existing in list(warnings_logger.filters):
        if isinstance(existing, WarningRedactor):
            warnings_logger.removeFilter(existing)
    pydicom_logger = logging.getLogger("pydicom")
    for existing in list(pydicom_logger.filters):
        if isinstance(existing, LibraryMessageRedactor):
            pydicom_logger.removeFilter(existing)
    if numeric > logging.DEBUG:
        warnings_logger.addFilter(WarningRedactor())
        pydicom_logger.addFilter(LibraryMessageRedactor())
    LOGGER.debug("logging at %s", name)
