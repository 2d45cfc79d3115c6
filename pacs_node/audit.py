"""Audit trail of the SCP: one database row per incoming connection.

:class:`AssociationAudit` binds to the SCP's events (see
:func:`pacs_node.ae.start_scp`) and writes :class:`storage.models.AssociationRow`
rows through :func:`storage.record_association` and
:func:`storage.finish_association`:

=====================  =========================================================
event                  row
=====================  =========================================================
``EVT_CONN_OPEN``      remembers the start time, peer address and port, TLS
``EVT_ACCEPTED``       inserted: ``accepted``, calling and called AE title,
                       subject of the TLS client certificate
``EVT_REJECTED``       inserted: ``rejected`` with the reason (e.g. "calling AE
                       title 'X' is not in the allow-list"), ended
``EVT_RELEASED``       updated: ``released``, end time, C-STORE counts
``EVT_ABORTED``        updated: ``aborted`` (inserted if it was never accepted)
``EVT_CONN_CLOSE``     a connection that never requested an association
                       (TLS handshake failed, timed out, port probe) is
                       inserted as ``failed`` with the reason; an accepted one
                       without release/abort is ended as ``aborted``
=====================  =========================================================

C-STORE counts come from :func:`pacs_node.handlers.association_counts`:
success, warning and failure statuses sent. Each write is its own short
transaction; a database error is logged at ERROR and never affects the
peer. Results sent are audited by the exporter's ``export_attempts`` rows.
No patient data is recorded.
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pacs_node.handlers import association_counts, rejection_reason
from pacs_node.receiver import utc_now
from pacs_node.tls import association_socket, handshake_failure, peer_certificate_subject
from storage import AssociationOutcome, finish_association, record_association

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.association import Association
    from pynetdicom.events import Event

LOGGER = logging.getLogger(__name__)

__all__ = ["AssociationAudit"]


@dataclass
class _Connection:
    """What the audit knows about one open connection."""

    started_at: datetime
    address: str
    port: int | None
    tls: bool
    row_id: int | None = None
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while a handler reads and writes this connection's row: the
    association thread (accepted, released, aborted) and the DUL thread
    (connection closed) may report on the same association at once."""


def _titles(assoc: Association) -> tuple[str | None, str | None]:
    primitive = assoc.requestor.primitive
    if primitive is None:
        return None, None
    calling = getattr(primitive, "calling_ae_title", None)
    called = getattr(primitive, "called_ae_title", None)
    return (
        None if calling is None else str(calling).strip(),
        None if called is None else str(called).strip(),
    )


class AssociationAudit:
    """Writes the ``associations`` audit rows of one SCP.

    Parameters
    ----------
    session_factory: sqlalchemy.orm.sessionmaker
        Sessions of the node's database.
    tls: bool
        Whether the SCP serves TLS (recorded on every row).
    clock: Callable[[], datetime]
        Current time, timezone-aware.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        tls: bool = False,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.session_factory = session_factory
        self.tls = bool(tls)
        self.clock = clock
        self._lock = threading.Lock()
        self._connections: weakref.WeakKeyDictionary[Association, _Connection] = (
            weakref.WeakKeyDictionary()
        )

    def handlers(self) -> list[tuple[evt.EventType, Callable[[Event], None]]]:
        """The ``(event, handler)`` pairs to bind on the SCP."""
        return [
            (evt.EVT_CONN_OPEN, self.on_connection_open),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_ended),
            (evt.EVT_ABORTED, self.on_ended),
            (evt.EVT_CONN_CLOSE, self.on_connection_closed),
        ]

    # -- handlers ---------------------------------------------------------
    def on_connection_open(self, event: Event) -> None:
        """``EVT_CONN_OPEN``: remember when and from where."""
        peer = getattr(event, "address", None)
        address = peer if isinstance(peer, tuple) else (peer, None)
        port = address[1] if isinstance(address[1], int) else None
        with self._lock:
            self._connections[event.assoc] = _Connection(
                self.clock(), str(address[0]), port, self.tls
            )

    def on_accepted(self, event: Event) -> None:
        """``EVT_ACCEPTED``: insert an ``accepted`` row; end it when the association thread ends.

        pynetdicom's DUL thread can die on malformed input (e.g. a P-DATA
        whose command set has no Command Field) without ``EVT_ABORTED`` or
        ``EVT_CONN_CLOSE``; the row then stayed ``accepted`` for ever (found
        by ``tests/test_fuzz_pdu.py``). A watcher thread joins the
        association and ends a row still open as ``aborted``.
        """
        connection = self._connection(event.assoc)
        with connection.lock:
            if connection.row_id is None and not connection.ended:
                connection.row_id = self._insert_row(
                    event.assoc, connection, AssociationOutcome.ACCEPTED
                )
        assoc = event.assoc
        threading.Thread(
            # Not named after the association: pynetdicom finds its acceptors by
            # "AcceptorThread" in thread names.
            target=self._end_after, args=(assoc,), name="association-audit", daemon=True
        ).start()

    def _end_after(self, assoc: Association) -> None:
        assoc.join()
        self._end(
            assoc, AssociationOutcome.ABORTED, "association ended without release or abort",
            final=False,
        )

    def _insert_row(
        self,
        assoc: Association,
        connection: _Connection,
        outcome: AssociationOutcome,
        **ended: Any,
    ) -> int | None:
        """Insert the row of `connection`; `ended` holds ``ended_at``, ``reason``
        and ``counts`` for a row that is already over (rejected, aborted)."""
        calling, called = _titles(assoc)
        return self._write(
            lambda session: record_association(
                session,
                peer_address=connection.address,
                peer_port=connection.port,
                started_at=connection.started_at,
                outcome=outcome,
                calling_ae_title=calling,
                called_ae_title=called,
                tls=connection.tls,
                tls_peer=peer_certificate_subject(association_socket(assoc)),
                **ended,
            )
        )

    def on_rejected(self, event: Event) -> None:
        """``EVT_REJECTED``: end the row as ``rejected`` with the reason (a row the
        connection-closed event of the DUL thread already wrote as aborted is
        corrected: the rejection is what happened)."""
        self._end(event.assoc, AssociationOutcome.REJECTED, rejection_reason(event.assoc))

    def on_ended(self, event: Event) -> None:
        """``EVT_RELEASED`` / ``EVT_ABORTED``: end the row with the C-STORE counts."""
        outcome = (
            AssociationOutcome.RELEASED
            if event.event is evt.EVT_RELEASED
            else AssociationOutcome.ABORTED
        )
        self._end(event.assoc, outcome, None)

    def on_connection_closed(self, event: Event) -> None:
        """``EVT_CONN_CLOSE``: record a connection that never got as far as a request."""
        connection = self._connection(event.assoc)
        with connection.lock:
            if connection.ended:
                return
            no_request = connection.row_id is None and event.assoc.requestor.primitive is None
        if no_request:
            reason = handshake_failure(event.assoc) or (
                "connection closed before an association request"
            )
            with connection.lock:
                if connection.ended:
                    return
                connection.ended = True
                connection.row_id = self._write(
                    lambda session: record_association(
                        session,
                        peer_address=connection.address,
                        peer_port=connection.port,
                        started_at=connection.started_at,
                        outcome=AssociationOutcome.FAILED,
                        tls=connection.tls,
                        ended_at=self.clock(),
                        reason=reason,
                    )
                )
            return
        # Closed under an open association: aborted, unless a release or
        # abort event (possibly from the other thread) says otherwise later.
        self._end(event.assoc, AssociationOutcome.ABORTED, "connection closed", final=False)

    # -- internals --------------------------------------------------------
    def _connection(self, assoc: Association) -> _Connection:
        with self._lock:
            connection = self._connections.get(assoc)
            if connection is None:  # bound after the connection opened
                connection = _Connection(
                    self.clock(), str(assoc.requestor.address), assoc.requestor.port, self.tls
                )
                self._connections[assoc] = connection
            return connection

    def _end(
        self,
        assoc: Association,
        outcome: AssociationOutcome,
        reason: str | None,
        *,
        final: bool = True,
    ) -> None:
        connection = self._connection(assoc)
        with connection.lock:
            self._end_locked(assoc, connection, outcome, reason, final)

    def _end_locked(
        self,
        assoc: Association,
        connection: _Connection,
        outcome: AssociationOutcome,
        reason: str | None,
        final: bool,
    ) -> None:
        if connection.ended and not final:
            return
        already_ended = connection.ended
        connection.ended = True
        counts = association_counts(assoc)
        now = self.clock()
        if connection.row_id is None:
            if already_ended:
                return
            connection.row_id = self._insert_row(
                assoc, connection, outcome, ended_at=now, reason=reason, counts=counts
            )
            return
        row_id = connection.row_id
        self._write(
            lambda session: finish_association(
                session, row_id, ended_at=now, outcome=outcome, counts=counts, reason=reason
            ).id
        )

    def _write(self, action: Callable[[Session], int]) -> int | None:
        try:
            with self.session_factory.begin() as session:
                return action(session)
        except SQLAlchemyError as exc:
            LOGGER.error("cannot write the association audit row: %s: %s", type(exc).__name__, exc)
            return None
