"""Sending the HL7 outbox: ``pending -> sent`` (or ``failed``), like the DICOM export.

The :class:`HL7Sender` thread polls :func:`storage.due_hl7_messages`, sends
each due message to its destination with :func:`pacs_node.hl7.mllp.send_message`
outside any transaction, checks the ACK (:func:`pacs_node.hl7.message.check_ack`)
and records the attempt with :func:`storage.record_hl7_attempt` in a short
transaction:

* MSA-1 ``AA`` or ``CA`` with the message's control ID: ``sent``;
* ``AE``/``AR``/``CE``/``CR``, a wrong control ID, a garbled or missing
  ACK, a refused or timed-out connection, or a destination no longer
  configured: the next attempt is scheduled with the DICOM export's backoff
  (``Settings.export_retry``); after ``max_attempts`` the message is
  ``failed``.

Messages wait in the database, so none is lost when the receiver is down or
the node restarts (at least once: a message acknowledged just before a crash
may be sent again with the same control ID). Logs name the control ID, the
job and the Study Instance UID, never the message (it holds PHI).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from config import HL7Destination, RetryPolicy
from pacs_node.hl7.message import AckResult, check_ack
from pacs_node.hl7.mllp import MLLPError, send_message
from pacs_node.loops import PollingLoop
from pacs_node.receiver import utc_now
from storage import (
    HL7MessageRecord,
    due_hl7_messages,
    job_study_uids,
    record_hl7_attempt,
)
from storage.errors import ExportStateError

LOGGER = logging.getLogger(__name__)

__all__ = ["DEFAULT_HL7_INTERVAL", "HL7Sender", "MLLPSendFunction"]

#: Seconds between polls for due messages when nobody wakes the sender.
DEFAULT_HL7_INTERVAL = 0.5


class MLLPSendFunction(Protocol):
    """The signature of :func:`pacs_node.hl7.mllp.send_message`."""

    def __call__(self, host: str, port: int, message: str, *, timeout: float) -> str:
        """Send `message` and return the answer."""
        ...  # pragma: no cover


class HL7Sender(PollingLoop):
    """Sends due HL7 messages to their destinations and records every attempt.

    Parameters
    ----------
    session_factory: sqlalchemy.orm.sessionmaker
        Sessions of the node's engine.
    destinations: Sequence[config.HL7Destination]
        ``Settings.hl7_destinations`` (messages name them by ``name``).
    policy: config.RetryPolicy
        ``Settings.export_retry``: backoff and give-up.
    clock: Callable[[], datetime]
        Current time (timezone-aware).
    interval: float
        Poll period in seconds.
    send: MLLPSendFunction
        Default :func:`pacs_node.hl7.mllp.send_message`.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        destinations: Sequence[HL7Destination],
        policy: RetryPolicy,
        clock: Callable[[], datetime] = utc_now,
        interval: float = DEFAULT_HL7_INTERVAL,
        send: MLLPSendFunction = send_message,
    ) -> None:
        super().__init__("deepsc-hl7-sender", interval)
        self.session_factory = session_factory
        self.destinations = {d.name: d for d in destinations}
        self.policy = policy
        self.clock = clock
        self.send = send

    def poll_once(self) -> int:
        """Attempt every due message once.

        Returns
        -------
        int
            Messages attempted.
        """
        with self.session_factory() as session:
            due = due_hl7_messages(session, self.clock())
            studies = job_study_uids(session, {message.job_id for message in due})
        attempted = 0
        for message in due:
            if self.stopping:
                break
            self.send_one(message, studies.get(message.job_id, "?"))
            attempted += 1
        return attempted

    def send_one(
        self, message: HL7MessageRecord, study_uid: str = "?"
    ) -> HL7MessageRecord | None:
        """Send one message, check its ACK and record the attempt.

        Returns
        -------
        storage.HL7MessageRecord | None
            The message after the attempt; ``None`` when it was superseded by
            a newer message of its job while it was being sent (nothing
            recorded).
        """
        destination = self.destinations.get(message.destination)
        if destination is None:
            result = AckResult(
                False, None, f"HL7 destination {message.destination!r} is not configured"
            )
        else:
            try:
                answer = self.send(
                    destination.host,
                    destination.port,
                    message.message,
                    timeout=destination.timeout,
                )
            except MLLPError as exc:
                result = AckResult(False, None, str(exc))
            else:
                result = check_ack(answer, message.control_id)
        try:
            with self.session_factory.begin() as session:
                record = record_hl7_attempt(
                    session,
                    message.id,
                    finished_at=self.clock(),
                    success=result.accepted,
                    policy=self.policy,
                    ack_code=result.code,
                    error=result.error,
                )
        except ExportStateError:
            LOGGER.info(
                "HL7 message %s (job %d, study %s) was superseded while being sent",
                message.control_id,
                message.job_id,
                study_uid,
            )
            return None
        if result.accepted:
            LOGGER.info(
                "HL7 message %s (job %d, study %s) to %s: sent, ACK %s",
                message.control_id,
                message.job_id,
                study_uid,
                message.destination,
                result.code,
            )
        else:
            LOGGER.warning(
                "HL7 message %s (job %d, study %s) to %s: attempt %d failed (%s); %s",
                message.control_id,
                message.job_id,
                study_uid,
                message.destination,
                record.attempt_count,
                result.error,
                "gave up"
                if record.next_attempt_at is None
                else f"next attempt at {record.next_attempt_at.isoformat()}",
            )
        return record
