"""Inference workers: ``queued -> running -> written`` (or ``rejected`` / ``failed``).

``Settings.workers`` threads (:class:`WorkerPool`) each loop over
:func:`storage.claim_next_job` (atomic: one job goes to exactly one worker).
For a claimed job a :class:`Worker`

1. lists the series' stored files and runs
   :meth:`pacs_node.processing.SeriesProcessor.process_files` (volume,
   model, SEG + SR + Secondary Capture series, and the GSPS when a
   destination asks for it) while a heartbeat thread records that it is
   alive;
2. writes every object to the :class:`storage.ResultStore`
   (atomic, ``fsync``) and records them with :func:`storage.record_results`
   (one export row per object and configured destination whose ``objects``
   name its kind): the job becomes ``written`` (or ``exported`` at once
   without destinations). With a :class:`pacs_node.triage.TriageRecorder`
   the job's triage (flag, priority) and its HL7 messages are recorded in
   the same transaction, also when the job becomes ``rejected`` or
   ``failed`` (flag ``"not analysed: <reason>"``).

Outcomes
    :class:`~inference.errors.VolumeError` (not a regular volume,
    undecodable pixels, unreadable file) -> ``rejected`` with its message
    as reason, e.g. "series is not a regularly spaced volume: ...". Any
    other exception -> ``failed`` with "<ExceptionType>: <message>" as
    reason (cut to 500 characters) and the traceback in the log at ERROR.
Ownership
    Every final transition first checks, in the same transaction, that the
    job is still ``running`` for this worker (:func:`storage.heartbeat`). A
    job that was recovered meanwhile (a restart re-queued it), or a worker
    abandoned by :meth:`WorkerPool.stop` after its timeout, records nothing:
    its result files are deleted and the job is processed again by whoever
    holds it now.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from inference.errors import VolumeError
from pacs_node.loops import PollingLoop
from pacs_node.processing import ProcessedSeries, SeriesProcessor, dataset_bytes
from pacs_node.receiver import utc_now
from pacs_node.triage import TriageRecorder
from storage import (
    InstanceStore,
    JobRecord,
    JobState,
    ResultObjectSpec,
    ResultStore,
    claim_next_job,
    get_job,
    heartbeat,
    record_results,
    series_instances,
    transition_job,
)
from storage.records import ExportTarget

LOGGER = logging.getLogger(__name__)

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL", "Worker", "WorkerPool"]

#: Seconds between heartbeats of a running job.
DEFAULT_HEARTBEAT_INTERVAL = 10.0
#: Longest failure reason stored on a job.
MAX_REASON_LENGTH = 500
#: Seconds between polls for queued jobs when nobody wakes the worker.
DEFAULT_WORKER_INTERVAL = 0.5


class _JobLost(Exception):
    """The job is no longer running for this worker (recovered or abandoned)."""


class _Heartbeat:
    """Records every `interval` seconds that a worker still runs a job."""

    def __init__(self, worker: Worker, job_id: int, interval: float) -> None:
        self.worker = worker
        self.job_id = job_id
        self.interval = interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"{worker.name}-heartbeat", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.worker.session_factory.begin() as session:
                    alive = heartbeat(
                        session, self.job_id, self.worker.worker_id, self.worker.clock()
                    )
            except SQLAlchemyError:
                LOGGER.warning("job %d: heartbeat failed", self.job_id, exc_info=True)
                continue
            if not alive:
                LOGGER.warning(
                    "job %d is no longer running for %s; its result will be discarded",
                    self.job_id,
                    self.worker.worker_id,
                )
                self.lost = True
                return


class Worker(PollingLoop):
    """One inference worker thread.

    Parameters
    ----------
    name: str
        Thread name, also the last part of the worker id.
    session_factory: sqlalchemy.orm.sessionmaker
        Sessions of the node's engine.
    processor: pacs_node.processing.SeriesProcessor
        The shared model and encoders.
    instance_store: storage.InstanceStore
        Where the series' files are.
    result_store: storage.ResultStore
        Where SEG and SR files go.
    destinations: Sequence[storage.records.ExportTarget]
        ``Settings.destinations``.
    clock: Callable[[], datetime]
        Current time (timezone-aware).
    heartbeat_interval: float
        Seconds between heartbeats of a running job.
    on_written: Callable[[JobRecord], None] | None
        Called after a job was recorded ``written`` (wakes the exporter).
    triage: pacs_node.triage.TriageRecorder | None
        Records the job's triage and HL7 messages with its final state;
        ``None``: no triage.
    """

    def __init__(
        self,
        name: str,
        session_factory: sessionmaker[Session],
        processor: SeriesProcessor,
        instance_store: InstanceStore,
        result_store: ResultStore,
        *,
        destinations: Sequence[ExportTarget] = (),
        clock: Callable[[], datetime] = utc_now,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        on_written: Callable[[JobRecord], None] | None = None,
        interval: float = DEFAULT_WORKER_INTERVAL,
        triage: TriageRecorder | None = None,
    ) -> None:
        super().__init__(name, interval)
        if not isinstance(processor, SeriesProcessor):
            raise TypeError(
                f'Argument "processor" should be a SeriesProcessor, got {type(processor).__name__}'
            )
        if not heartbeat_interval > 0:
            raise ValueError(
                f'Argument "heartbeat_interval" should be > 0, got {heartbeat_interval!r}'
            )
        self.session_factory = session_factory
        self.processor = processor
        self.instance_store = instance_store
        self.result_store = result_store
        self.destinations = tuple(destinations)
        self.clock = clock
        self.heartbeat_interval = float(heartbeat_interval)
        self.on_written = on_written
        self.triage = triage
        # Unique per Worker object: a worker abandoned at stop and a new node's
        # worker of the same name in the same process must not look the same.
        token = secrets.token_hex(3)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{name}:{token}"[-128:]
        self.abandoned = False
        self.current_job: int | None = None

    def poll_once(self) -> int:
        """Claim and process one queued job.

        Returns
        -------
        int
            1 if a job was processed, 0 if none was queued (or stopping).
        """
        if self.stopping:
            return 0
        return 0 if self.run_one() is None else 1

    def run_one(self) -> JobRecord | None:
        """Claim the oldest queued job and take it to its next resting state.

        Returns
        -------
        storage.JobRecord | None
            The job afterwards (``written``, ``exported``, ``rejected``,
            ``failed``, or still ``running`` if it was lost), or ``None``
            when no job was queued.
        """
        with self.session_factory.begin() as session:
            job = claim_next_job(session, self.worker_id, self.clock())
        if job is None:
            return None
        self.current_job = job.id
        LOGGER.info(
            "job %d (series %s): running on %s (run %d)",
            job.id,
            job.series_instance_uid,
            self.worker_id,
            job.run_count,
        )
        try:
            return self._run_job(job)
        finally:
            self.current_job = None

    def _run_job(self, job: JobRecord) -> JobRecord:
        try:
            with _Heartbeat(self, job.id, self.heartbeat_interval) as beat:
                processed = self._process(job)
            if beat.lost or self.abandoned:
                raise _JobLost()
            specs = self._write(processed)
            try:
                done = self._record(job, processed, specs)
            except BaseException:
                self._delete(specs)
                raise
        except _JobLost:
            LOGGER.warning(
                "job %d (series %s): no longer ours; nothing recorded",
                job.id,
                job.series_instance_uid,
            )
            return self._current(job.id)
        except VolumeError as exc:
            return self._finish(job, JobState.REJECTED, str(exc))
        except Exception as exc:  # recorded as a failed job; traceback to the log
            LOGGER.error(
                "job %d (series %s) failed: %s",
                job.id,
                job.series_instance_uid,
                type(exc).__name__,
                exc_info=True,
            )
            reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON_LENGTH]
            return self._finish(job, JobState.FAILED, reason)
        if self.on_written is not None:
            try:
                self.on_written(done)
            except Exception:  # a notification must not undo a recorded job
                LOGGER.exception("job %d: on_written callback failed", done.id)
        return done

    def _process(self, job: JobRecord) -> ProcessedSeries:
        with self.session_factory() as session:
            instances = series_instances(session, job.series_instance_uid)
        paths = [self.instance_store.root / item.file_path for item in instances]
        return self.processor.process_files(paths)

    def _write(self, processed: ProcessedSeries) -> list[ResultObjectSpec]:
        specs: list[ResultObjectSpec] = []
        try:
            self._write_each(processed, specs)
        except BaseException:
            self._delete(specs)
            raise
        return specs

    def _write_each(self, processed: ProcessedSeries, specs: list[ResultObjectSpec]) -> None:
        for kind, dataset in processed.datasets():
            study = str(dataset.StudyInstanceUID)
            series = str(dataset.SeriesInstanceUID)
            sop = str(dataset.SOPInstanceUID)
            stored = self.result_store.write(study, series, sop, dataset_bytes(dataset))
            specs.append(
                ResultObjectSpec(
                    kind=kind,
                    sop_class_uid=str(dataset.SOPClassUID),
                    sop_instance_uid=sop,
                    series_instance_uid=series,
                    study_instance_uid=study,
                    file_path=self.result_store.relative_path(stored.path),
                    sha256=stored.sha256,
                    size=stored.size,
                )
            )

    def _delete(self, specs: Sequence[ResultObjectSpec]) -> None:
        for spec in specs:
            try:
                self.result_store.delete(
                    spec.study_instance_uid, spec.series_instance_uid, spec.sop_instance_uid
                )
            except OSError as exc:
                LOGGER.warning(
                    "could not delete unrecorded result %s: %s", spec.sop_instance_uid, exc
                )

    def _owned(self, session: Session, job_id: int) -> None:
        if self.abandoned or not heartbeat(session, job_id, self.worker_id, self.clock()):
            raise _JobLost()

    def _record(
        self, job: JobRecord, processed: ProcessedSeries, specs: list[ResultObjectSpec]
    ) -> JobRecord:
        with self.session_factory.begin() as session:
            self._owned(session, job.id)
            now = self.clock()
            summary = processed.summary()
            record_results(session, job.id, specs, summary, self.destinations, now)
            if self.triage is not None:
                self.triage.record_result(session, job.id, summary, now)
            done = get_job(session, job.id)
        sop = {spec.kind: spec.sop_instance_uid for spec in reversed(specs)}
        LOGGER.info(
            "job %d (series %s): %s: %s (p=%.3f), SEG %s, SR %s, %d object(s)",
            done.id,
            done.series_instance_uid,
            done.state.value,
            processed.result.predicted_class,
            max(processed.result.class_probabilities),
            sop.get("seg"),
            sop.get("sr"),
            len(specs),
        )
        return done

    def _finish(self, job: JobRecord, state: JobState, reason: str) -> JobRecord:
        try:
            with self.session_factory.begin() as session:
                self._owned(session, job.id)
                now = self.clock()
                done = transition_job(
                    session,
                    job.id,
                    state,
                    reason,
                    now=now,
                    expected_state=JobState.RUNNING,
                )
                if self.triage is not None:
                    self.triage.record_not_analysed(session, job.id, reason, now)
        except _JobLost:
            LOGGER.warning("job %d: no longer ours; %s not recorded", job.id, state.value)
            return self._current(job.id)
        except SQLAlchemyError:
            LOGGER.error(
                "job %d: cannot record %s; it stays running until recovered",
                job.id,
                state.value,
                exc_info=True,
            )
            return self._current(job.id)
        log = LOGGER.info if state is JobState.REJECTED else LOGGER.error
        log("job %d (series %s): %s: %s", job.id, job.series_instance_uid, state.value, reason)
        return done

    def _current(self, job_id: int) -> JobRecord:
        with self.session_factory() as session:
            return get_job(session, job_id)


class WorkerPool:
    """``count`` :class:`Worker` threads sharing one processor.

    Parameters
    ----------
    count: int
        Number of workers (``Settings.workers``), >= 1.
    factory: Callable[[str], Worker]
        Builds the worker with the given name.

    Raises
    ------
    ValueError
        If `count` is smaller than 1.
    """

    def __init__(self, count: int, factory: Callable[[str], Worker]) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f'Argument "count" should be an integer >= 1, got {count!r}')
        self.workers = [factory(f"deepsc-worker-{index + 1}") for index in range(count)]

    def start(self) -> None:
        """Start every worker."""
        for worker in self.workers:
            worker.start()

    def wake(self) -> None:
        """Make idle workers look for queued jobs now."""
        for worker in self.workers:
            worker.wake()

    def stop(self, timeout: float | None = None) -> list[int]:
        """Let each worker finish its current job within `timeout`, then stop.

        A worker still busy after `timeout` is abandoned: it records nothing
        when it finishes, and its job stays ``running`` until the next start
        re-queues it (:func:`storage.recover_after_restart`).

        Parameters
        ----------
        timeout: float | None
            Seconds for all workers together; ``None``: wait for them.

        Returns
        -------
        list[int]
            Ids of the jobs left ``running``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self.workers:
            worker.request_stop()
        left: list[int] = []
        for worker in self.workers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not worker.stop(remaining):
                worker.abandoned = True
                if worker.current_job is not None:
                    left.append(worker.current_job)
        if left:
            LOGGER.warning(
                "job(s) %s still running at stop: left running, re-queued at the next start", left
            )
        return left
