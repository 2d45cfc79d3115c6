"""Sending results to the destinations: ``written -> exported`` (or ``failed``).

The :class:`Exporter` thread polls :func:`storage.due_exports` (pending
exports of ``written`` jobs whose next attempt is due), groups them by
destination and sends each group over ONE association with
:func:`pacs_node.scu.send`, in the order they were recorded (the SEG before
the SR that references it). Every attempt is recorded with
:func:`storage.record_export_attempt` in its own short transaction:

* delivered (Success or Warning status): the export is ``delivered`` and is
  never sent again; when every export of the job is delivered the job is
  ``exported``;
* not delivered (no association, refused, failure status, file missing):
  the next attempt is scheduled with exponential backoff
  (``Settings.export_retry``: ``min(max_backoff, initial_backoff * 2 **
  (attempts - 1))`` s); after ``max_attempts`` (default: never) the export
  gives up and the job becomes ``failed`` with a reason naming the
  destination.

Nothing is lost when a destination is down: the exports stay ``pending`` in
the database, also across restarts, and go out when it answers again.
Delivery is at least once: if the node dies after the peer acknowledged but
before the attempt is committed, that object is sent again at the next start
(same SOP Instance UID, so the peer sees a duplicate, not a new object).
Before sending, each file's SHA-256 is compared with the recorded one: a
missing or altered result file is not sent and the attempt is recorded as
failed.
"""
from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from config import AssociationTimeouts, Destination, RetryPolicy
from pacs_node import scu
from pacs_node.loops import PollingLoop
from pacs_node.receiver import utc_now
from storage import (
    DueExport,
    ExportRecord,
    JobState,
    ResultStore,
    due_exports,
    record_export_attempt,
)
from storage.filestore import sha256_of_file

LOGGER = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXPORT_INTERVAL", "Exporter", "SendFunction"]

#: Seconds between polls for due exports when nobody wakes the exporter.
DEFAULT_EXPORT_INTERVAL = 0.5


class SendFunction(Protocol):
    """The signature of :func:`pacs_node.scu.send` (replaceable in tests)."""

    def __call__(
        self,
        destination: Destination,
        items: Sequence[Path],
        *,
        calling_ae: str,
        timeouts: AssociationTimeouts | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> scu.SendReport:
        """Send `items` to `destination` over one association (TLS context if it uses TLS)."""
        ...  # pragma: no cover


class Exporter(PollingLoop):
    """Sends due result objects to their destinations and records every attempt.

    Parameters
    ----------
    session_factory: sqlalchemy.orm.sessionmaker
        Sessions of the node's engine.
    result_store: storage.ResultStore
        Where the result files are.
    destinations: Sequence[config.Destination]
        ``Settings.destinations`` (exports name them by ``name``).
    calling_ae: str
        The node's AE title.
    timeouts: config.AssociationTimeouts
        Association timeouts.
    policy: config.RetryPolicy
        Backoff and give-up policy.
    clock: Callable[[], datetime]
        Current time (timezone-aware).
    interval: float
        Poll period in seconds.
    send: SendFunction
        Default :func:`pacs_node.scu.send`.
    tls_context: ssl.SSLContext | None
        Client TLS context for destinations with ``tls = true``
        (:func:`pacs_node.tls.client_context`); passed to `send` as
        ``tls_context`` for those destinations only.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        result_store: ResultStore,
        *,
        destinations: Sequence[Destination],
        calling_ae: str,
        timeouts: AssociationTimeouts,
        policy: RetryPolicy,
        clock: Callable[[], datetime] = utc_now,
        interval: float = DEFAULT_EXPORT_INTERVAL,
        send: SendFunction = scu.send,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__("deepsc-exporter", interval)
        self.session_factory = session_factory
        self.result_store = result_store
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self.timeouts = timeouts
        self.policy = policy
        self.clock = clock
        self.send = send
        self.tls_context = tls_context

    def poll_once(self) -> int:
        """Attempt every due export once.

        Returns
        -------
        int
            Exports attempted.
        """
        with self.session_factory() as session:
            due = due_exports(session, self.clock())
        groups: dict[str, list[DueExport]] = {}
        for item in due:
            groups.setdefault(item.destination, []).append(item)
        for name, items in groups.items():
            self._export(name, items)
        return len(due)

    def _export(self, name: str, items: list[DueExport]) -> None:
        destination = self.destinations.get(name)
        if destination is None:
            now = self.clock()
            for item in items:
                self._record(item, now, now, None, f"destination {name!r} is not configured")
            return
        sendable: list[DueExport] = []
        for item in items:
            problem = self._check_file(item)
            if problem:
                now = self.clock()
                self._record(item, now, now, None, problem)
            else:
                sendable.append(item)
        if not sendable:
            return
        paths = [self.result_store.root / item.file_path for item in sendable]
        started = self.clock()
        # The context is used only for a destination with ``tls = true``.
        report = self.send(
            destination, paths, calling_ae=self.calling_ae, timeouts=self.timeouts,
            tls_context=self.tls_context,
        )
        finished = self.clock()
        for item, outcome in zip(sendable, report.per_item):
            if outcome.delivered:
                self._record(item, started, finished, outcome.status, None, success=True)
            else:
                error = outcome.error or report.association_error or "not delivered"
                self._record(item, started, finished, outcome.status, error)
        for item in sendable[len(report.per_item):]:  # pragma: no cover - send reports each item
            self._record(item, started, finished, None, "no outcome reported by the sender")

    def _check_file(self, item: DueExport) -> str | None:
        path = self.result_store.root / item.file_path
        try:
            digest = sha256_of_file(path)
        except OSError as exc:
            return f"result file of {item.sop_instance_uid} cannot be read: {type(exc).__name__}"
        if digest != item.sha256:
            return f"result file of {item.sop_instance_uid} changed since it was recorded"
        return None

    def _record(
        self,
        item: DueExport,
        started: datetime,
        finished: datetime,
        status: int | None,
        error: str | None,
        *,
        success: bool = False,
    ) -> ExportRecord:
        with self.session_factory.begin() as session:
            record = record_export_attempt(
                session,
                item.export_id,
                started_at=started,
                finished_at=finished,
                success=success,
                policy=self.policy,
                status_code=status,
                error=error,
            )
        if success:
            LOGGER.info(
                "job %d: %s %s delivered to %s (attempt %d)%s",
                item.job_id,
                item.kind,
                item.sop_instance_uid,
                item.destination,
                record.attempt_count,
                "; job exported" if record.job_state is JobState.EXPORTED else "",
            )
        elif record.next_attempt_at is not None:
            LOGGER.warning(
                "job %d: %s %s to %s failed (attempt %d): %s; next attempt at %s",
                item.job_id,
                item.kind,
                item.sop_instance_uid,
                item.destination,
                record.attempt_count,
                error,
                record.next_attempt_at.isoformat(timespec="seconds"),
            )
        else:
            LOGGER.error(
                "job %d: %s %s to %s gave up after %d attempt(s): %s (job %s)",
                item.job_id,
                item.kind,
                item.sop_instance_uid,
                item.destination,
                record.attempt_count,
                error,
                record.job_state.value,
            )
        return record
