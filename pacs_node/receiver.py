"""The storage-backed receiver: what the Storage SCP does with each instance.

:class:`StorageReceiver` implements the :class:`pacs_node.receive.Receiver`
seam. For every instance the C-STORE handler validated it

1. writes the received Part 10 bytes to the :class:`storage.InstanceStore`
   (temporary file, ``fsync``, atomic rename, directory ``fsync``);
2. records it with :func:`storage.record_instance` and commits;
3. only then answers Success.

So a Success status promises that the file is durable and its row (and the
series' job) committed. Nothing else happens in the handler thread: no
header parsing beyond what the handler did, no selection, no inference.

What Success (0x0000) promises, exactly
    The bytes received (with the node's file meta) are in
    ``instances/<study>/<series>/<sop>.dcm`` under their final name,
    ``fsync``\\ ed with their directory, and the instance row and its series'
    job are committed (SQLite ``synchronous=FULL``, PostgreSQL's default
    durable commit). Both survive a crash of the node (SIGKILL:
    ``tests/test_crash_safety.py``) and, on storage that honours flushes, a
    power loss; the instance takes part in its series' job and a restart
    resumes that job. For a ``duplicate`` it promises the same of the copy
    already held. It does not promise a result: the selection rules or the
    volume checks may still reject the series (the job says why). Any other
    status promises nothing was recorded; the peer should send again. If the
    node dies before answering, the instance may or may not be kept; a
    resend is harmless (duplicate or replaced).

Outcomes
    ``stored``: a new instance (the series' job is created or its quiet timer
    restarts). ``duplicate``: same SOP Instance UID and the same data set
    bytes (SHA-256 of the encoded data set, the file meta excluded) as
    recorded: Success, nothing changes (logged at INFO with the UID). So a
    PACS that sends a study again, or another peer that sends the same
    study, starts no second job. ``replaced``: same SOP Instance UID, other
    data set bytes: the new file replaces the old one and the series goes
    back to ``received``, or gets a new job if its job already started (the
    repository decides; see :mod:`storage.repository`). The same data set in
    another transfer syntax has other bytes and counts as replaced: the
    series is processed again, which is safe.
Failures
    ``OSError`` of the file store (disk full, permissions) and database
    errors answer ``0xA700`` Refused: Out of Resources with the comment
    "Out of resources - cannot store"; nothing is recorded (a file written
    before a database failure is left in place, unrecorded, and overwritten
    by the peer's retry). An attribute that cannot be recorded (e.g. an
    invalid Frame of Reference UID) answers ``0xA900``.
Concurrency
    pynetdicom runs each association in its own thread. Writes and records
    of the same SOP Instance UID are serialised by a striped lock, so the
    recorded hash always describes the file on disk; the repository locks
    the series row, so two associations delivering one series never make
    two jobs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pacs_node.receive import DispositionValues, ReceivedInstance, ReceiveOutcome
from pacs_node.status import StoreStatus
from storage import (
    InstanceAttributes,
    InstanceOutcome,
    InstanceStore,
    InvalidUIDError,
    JobAction,
    RecordedInstance,
    record_instance,
)

LOGGER = logging.getLogger(__name__)

__all__ = ["CANNOT_STORE_COMMENT", "StorageReceiver", "content_digest", "utc_now"]

#: Error Comment (0000,0902) sent with 0xA700.
CANNOT_STORE_COMMENT = "Out of resources - cannot store"

#: Number of locks that serialise work on one SOP Instance UID.
_LOCK_STRIPES = 64

_DISPOSITIONS = {
    InstanceOutcome.STORED: DispositionValues.STORED,
    InstanceOutcome.DUPLICATE: DispositionValues.DUPLICATE,
    InstanceOutcome.REPLACED: DispositionValues.REPLACED,
}


def content_digest(encoded: bytes) -> str:
    """SHA-256 (hex) of the data set part of a Part 10 file.

    The file meta (PS3.10 7.1) is left out: it names the sending AE and the
    time of transfer, which differ between two deliveries of one data set.

    Parameters
    ----------
    encoded: bytes
        Preamble, ``DICM``, file meta group starting with its group length
        (0002,0000), then the data set, as the C-STORE handler builds it.

    Returns
    -------
    str
        The digest of the data set bytes; of all bytes if `encoded` does
        not start like a Part 10 file with a group length element.

    Examples
    --------
    >>> meta = b"\\x02\\x00\\x00\\x00UL\\x04\\x00" + (4).to_bytes(4, "little") + b"meta"
    >>> a = content_digest(b"\\x00" * 128 + b"DICM" + meta + b"data set")
    >>> a == hashlib.sha256(b"data set").hexdigest()
    True
    """
    view = memoryview(encoded)
    if (
        len(view) >= 144
        and view[128:132] == b"DICM"
        and view[132:138] == b"\x02\x00\x00\x00UL"
    ):
        start = 144 + int.from_bytes(view[140:144], "little")
        if start <= len(view):
            return hashlib.sha256(view[start:]).hexdigest()
    return hashlib.sha256(view).hexdigest()


def utc_now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(timezone.utc)


class StorageReceiver:
    """Stores received instances in the file store and records them in the database.

    Parameters
    ----------
    store: storage.InstanceStore
        Where instance files go (``<data_dir>/instances``).
    session_factory: sqlalchemy.orm.sessionmaker
        Sessions of the node's engine; one short transaction per instance.
    clock: Callable[[], datetime]
        Returns the reception time (timezone-aware); default :func:`utc_now`.
    on_recorded: Callable[[RecordedInstance], None] | None
        Called after each commit (e.g. to wake the series watcher). An
        exception it raises is logged, not sent to the peer.

    Raises
    ------
    TypeError
        If `store` is not an :class:`~storage.InstanceStore`.
    """

    def __init__(
        self,
        store: InstanceStore,
        session_factory: sessionmaker[Session],
        *,
        clock: Callable[[], datetime] = utc_now,
        on_recorded: Callable[[RecordedInstance], None] | None = None,
    ) -> None:
        if not isinstance(store, InstanceStore):
            raise TypeError(
                f'Argument "store" should be an InstanceStore, got {type(store).__name__}'
            )
        self.store = store
        self.session_factory = session_factory
        self.clock = clock
        self.on_recorded = on_recorded
        self._locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))

    def _lock_for(self, sop_instance_uid: str) -> threading.Lock:
        digest = hashlib.blake2b(sop_instance_uid.encode("ascii"), digest_size=2).digest()
        return self._locks[int.from_bytes(digest, "big") % _LOCK_STRIPES]

    def receive(self, instance: ReceivedInstance) -> ReceiveOutcome:
        """Write, record and commit one instance; answer the status for the peer.

        Parameters
        ----------
        instance: pacs_node.receive.ReceivedInstance
            From the C-STORE handler (UIDs already validated).

        Returns
        -------
        pacs_node.receive.ReceiveOutcome
            Success with ``stored`` / ``duplicate`` / ``replaced``;
            ``0xA700`` (cannot write or record) or ``0xA900`` (an attribute
            that cannot be recorded) with ``refused``.
        """
        sop_uid = instance.sop_instance_uid
        try:
            path = self.store.path_for(
                instance.study_instance_uid, instance.series_instance_uid, sop_uid
            )
            # Validate what will be recorded BEFORE writing, so that a refused
            # instance never overwrites a recorded file; the size is filled in
            # from the store's write.
            attributes = InstanceAttributes.from_dataset(
                instance.dataset,
                file_path=self.store.relative_path(path),
                sha256=content_digest(instance.encoded),
                size=len(instance.encoded),
                transfer_syntax_uid=instance.transfer_syntax_uid,
                calling_ae_title=instance.calling_ae_title,
            )
        except InvalidUIDError as exc:
            LOGGER.warning(
                "instance %s of series %s refused: %s is not a valid UID",
                sop_uid,
                instance.series_instance_uid,
                exc.argument,
            )
            return ReceiveOutcome(
                status=StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                disposition=DispositionValues.REFUSED,
                comment=f"{exc.argument} is not a valid UID"[:64],
            )
        with self._lock_for(sop_uid):
            try:
                stored = self.store.write(
                    instance.study_instance_uid,
                    instance.series_instance_uid,
                    sop_uid,
                    instance.encoded,
                )
            except OSError as exc:
                LOGGER.error(
                    "cannot write instance %s of series %s: %s",
                    sop_uid,
                    instance.series_instance_uid,
                    exc.strerror or type(exc).__name__,
                )
                return self._refused()
            attributes = dataclasses.replace(attributes, size=stored.size)
            try:
                with self.session_factory.begin() as session:
                    recorded = record_instance(session, attributes, self.clock())
            except SQLAlchemyError as exc:
                LOGGER.error(
                    "cannot record instance %s of series %s: %s",
                    sop_uid,
                    instance.series_instance_uid,
                    type(exc).__name__,
                    exc_info=True,
                )
                return self._refused()
        self._after_commit(recorded, instance, path)
        return ReceiveOutcome(
            status=StoreStatus.SUCCESS, disposition=_DISPOSITIONS[recorded.outcome]
        )

    @staticmethod
    def _refused() -> ReceiveOutcome:
        return ReceiveOutcome(
            status=StoreStatus.REFUSED_OUT_OF_RESOURCES,
            disposition=DispositionValues.REFUSED,
            comment=CANNOT_STORE_COMMENT,
        )

    def _after_commit(
        self, recorded: RecordedInstance, instance: ReceivedInstance, path: Path
    ) -> None:
        job = recorded.job
        if recorded.outcome is InstanceOutcome.DUPLICATE:
            LOGGER.info(
                "duplicate instance %s of series %s (same content): nothing changed",
                instance.sop_instance_uid,
                instance.series_instance_uid,
            )
        elif recorded.outcome is InstanceOutcome.REPLACED:
            LOGGER.info(
                "instance %s of series %s replaced (content changed): job %d %s",
                instance.sop_instance_uid,
                instance.series_instance_uid,
                job.id,
                job.state.value,
            )
        else:
            LOGGER.debug(
                "instance %s of series %s stored (%d in series)",
                instance.sop_instance_uid,
                instance.series_instance_uid,
                recorded.series_instance_count,
            )
        if recorded.job_action is JobAction.CREATED:
            LOGGER.info(
                "series %s (study %s) from AE %r: job %d created",
                instance.series_instance_uid,
                instance.study_instance_uid,
                instance.calling_ae_title,
                job.id,
            )
        elif recorded.job_action is JobAction.RESTARTED:
            LOGGER.info(
                "series %s: new instance, job %d back to received",
                instance.series_instance_uid,
                job.id,
            )
        if recorded.previous_file_path:
            old = self.store.root / recorded.previous_file_path
            try:
                if old.resolve() != path.resolve():
                    old.unlink(missing_ok=True)
            except OSError as exc:
                LOGGER.warning(
                    "could not remove the replaced file of instance %s: %s",
                    instance.sop_instance_uid,
                    type(exc).__name__,
                )
        if self.on_recorded is not None:
            try:
                self.on_recorded(recorded)
            except Exception:  # a notification must not fail the C-STORE
                LOGGER.exception("on_recorded callback failed for %s", instance.sop_instance_uid)
