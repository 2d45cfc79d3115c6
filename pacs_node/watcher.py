"""Series completion and selection: ``received -> complete -> queued | rejected``.

DICOM has no "end of series" message, so a series counts as complete when no
instance of it arrived for ``Settings.quiet_time`` seconds (a quiet timer per
series, kept in the database as the series' ``last_received_at``). The
:class:`SeriesWatcher` thread polls :func:`storage.due_jobs` every
``min(0.5, quiet_time / 4)`` seconds (at least 0.1 s) and, for each due job:

1. moves it ``received -> complete`` (one short transaction for all due jobs;
   reason "quiet for N s, M instances");
2. reads the headers of the series' stored files (no pixel data) and applies
   the selection rules (:func:`pacs_node.selection.select_series`, with the
   database's own-output check for loop prevention);
3. moves it ``complete -> queued`` or ``complete -> rejected`` with the
   selection's reason, e.g. "CT axial 30 slices 8.0 mm" or
   "3 slices < minimum 20".

Late instances
    An instance that arrives while the job is ``complete`` or ``queued``
    sends it back to ``received`` (its quiet timer restarts; step 3 then
    finds the job no longer ``complete`` and leaves it). An instance that
    arrives after processing started creates a new job for the series; the
    earlier job's results stay (see :mod:`storage.repository`).
Restart
    Jobs found ``complete`` at start-up (the node stopped between steps 1
    and 3) are evaluated again by :meth:`SeriesWatcher.evaluate`. Jobs found
    ``received`` were cut off by the stop or crash: the sender's association
    died with the node, and its silence while the node was down says nothing
    about the series being complete. Their quiet timer counts from the start
    of the watcher (:meth:`SeriesWatcher.start`): no series is completed in
    the first ``quiet_time`` seconds, so a PACS that sends the series again
    after the restart extends the same job instead of the partial series
    being processed at once and the rest making a second job and result.
Open associations (``max_series_hold``)
    With a :class:`pacs_node.holds.SeriesHolds`, a due series is not
    completed while an association that delivered instances of it is still
    open: a sender that stalls longer than ``quiet_time`` in the middle of a
    series would otherwise have it processed in two parts. The hold lasts
    at most ``max_series_hold`` seconds counted from the series' last
    instance; after that the quiet timer alone decides, and a WARNING names
    the series and the association. When the association ends (release,
    abort, closed connection), the quiet timer runs from the later of the
    last instance and that end: a release usually comes right after the
    last instance, so the series completes ``quiet_time`` after it, and a
    sender that goes on with the same series in a new association (DICOM
    allows a series over several associations) still has a quiet time to
    start it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from config import SelectionRules
from inference.errors import VolumeError
from pacs_node.holds import SeriesHold, SeriesHolds
from pacs_node.loops import PollingLoop, poll_interval_for
from pacs_node.receiver import utc_now
from pacs_node.selection import Selection, read_headers, select_series
from pacs_node.triage import TriageRecorder
from storage import (
    IllegalTransitionError,
    InstanceStore,
    JobRecord,
    JobState,
    SeriesRecord,
    due_jobs,
    get_job,
    get_series,
    is_own_output,
    series_instances,
    transition_job,
)

LOGGER = logging.getLogger(__name__)

__all__ = ["SeriesWatcher"]


class SeriesWatcher(PollingLoop):
    """Completes quiet series and applies the selection rules (a polling thread).

    Parameters
    ----------
    session_factory: sqlalchemy.orm.sessionmaker
        Sessions of the node's engine.
    store: storage.InstanceStore
        Where the series' files are.
    quiet_time: float
        Seconds without a new instance after which a series is complete.
    rules: config.SelectionRules
        The selection rules.
    uid_root: str
        The node's UID root (own output).
    clock: Callable[[], datetime]
        Current time (timezone-aware); default UTC now.
    on_queued: Callable[[], None] | None
        Called when at least one job was queued (e.g. to wake the workers).
    interval: float | None
        Poll period; default :func:`pacs_node.loops.poll_interval_for`.
    holds: pacs_node.holds.SeriesHolds | None
        Open associations per series (see the module docstring); ``None``:
        the quiet timer alone decides.
    max_series_hold: float
        Longest hold by an open association, in seconds from the series'
        last instance (``Settings.max_series_hold``). Default 600. ``0``
        switches holds off, the one after an association's end included.
    triage: pacs_node.triage.TriageRecorder | None
        Records "not analysed: <reason>" with a rejected job, in the same
        transaction (no HL7 message: a study has several series that are
        not analysed, such as scouts; not for the node's own output).
        ``None``: no triage.

    Raises
    ------
    ValueError
        If `quiet_time` is not positive or `max_series_hold` is negative.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        store: InstanceStore,
        *,
        quiet_time: float,
        rules: SelectionRules,
        uid_root: str,
        clock: Callable[[], datetime] = utc_now,
        on_queued: Callable[[], None] | None = None,
        interval: float | None = None,
        holds: SeriesHolds | None = None,
        max_series_hold: float = 600.0,
        triage: TriageRecorder | None = None,
    ) -> None:
        if not isinstance(quiet_time, (int, float)) or not quiet_time > 0:
            raise ValueError(f'Argument "quiet_time" should be > 0 seconds, got {quiet_time!r}')
        if not isinstance(max_series_hold, (int, float)) or not max_series_hold >= 0:
            raise ValueError(
                f'Argument "max_series_hold" should be >= 0 seconds, got {max_series_hold!r}'
            )
        super().__init__(
            "deepsc-watcher", interval if interval is not None else poll_interval_for(quiet_time)
        )
        self.session_factory = session_factory
        self.store = store
        self.quiet_time = float(quiet_time)
        self.rules = rules
        self.uid_root = uid_root
        self.clock = clock
        self.on_queued = on_queued
        self.holds = holds
        self.max_series_hold = float(max_series_hold)
        self.triage = triage
        self.not_before: datetime | None = None
        self._held: set[str] = set()  # series whose hold was logged

    def start(self) -> None:
        """Start the thread; no series is completed in the first ``quiet_time`` seconds.

        Series left ``received`` by the previous run (a crash in the middle of
        a transfer) get a whole quiet time from now, so that their senders can
        send them again (see the module docstring). A series received after
        the start is not due before then anyway.
        """
        if not self.running:
            self.not_before = self.clock() + timedelta(seconds=self.quiet_time)
        super().start()

    def poll_once(self) -> int:
        """Complete every due series and decide on it.

        Returns
        -------
        int
            Jobs moved to ``complete`` in this poll.
        """
        if self.not_before is not None and self.clock() < self.not_before:
            return 0
        with self.session_factory.begin() as session:
            now = self.clock()
            if self.holds is not None:
                self.holds.prune(now - timedelta(seconds=self.quiet_time))
            completed = []
            held: set[str] = set()
            for job in due_jobs(session, now, self.quiet_time):
                series = get_series(session, job.series_instance_uid)
                reason = f"quiet for {self.quiet_time:g} s, {series.instance_count} instance(s)"
                note = self._hold_note(job, series, now)
                if note is None:
                    held.add(job.series_instance_uid)
                    continue
                try:
                    completed.append(
                        transition_job(
                            session,
                            job.id,
                            JobState.COMPLETE,
                            reason + note,
                            now=now,
                            expected_state=JobState.RECEIVED,
                        )
                    )
                except IllegalTransitionError:
                    LOGGER.debug("job %d changed state while completing; skipped", job.id)
            self._held = held
        queued = 0
        for job in completed:
            LOGGER.info("job %d (series %s): complete", job.id, job.series_instance_uid)
            decided = self.evaluate(job.id)
            if decided is not None and decided.state is JobState.QUEUED:
                queued += 1
        if queued and self.on_queued is not None:
            self.on_queued()
        return len(completed)

    def _hold_note(self, job: JobRecord, series: SeriesRecord, now: datetime) -> str | None:
        """``None`` to hold a due job back, else a note for its completion reason.

        See "Open associations" in the module docstring.
        """
        if self.holds is None or self.max_series_hold == 0:
            return ""
        uid = job.series_instance_uid
        hold: SeriesHold = self.holds.hold(uid)
        quiet = (now - series.last_received_at).total_seconds()
        if hold.is_open:
            names = ", ".join(hold.open_associations)
            if quiet < self.max_series_hold:
                if uid not in self._held:
                    LOGGER.info(
                        "job %d (series %s): quiet for %.1f s but association %s that "
                        "delivered it is still open; not completed yet (at most %g s)",
                        job.id, uid, quiet, names, self.max_series_hold,
                    )
                return None
            LOGGER.warning(
                "job %d (series %s): association %s that delivered it still open after %.1f s "
                "without an instance (max_series_hold %g s); completing on the quiet timer",
                job.id, uid, names, quiet, self.max_series_hold,
            )
            return f"; association still open after max_series_hold {self.max_series_hold:g} s"
        if hold.ended_at is not None and now - hold.ended_at < timedelta(seconds=self.quiet_time):
            return None
        return ""

    def evaluate(self, job_id: int) -> JobRecord | None:
        """Apply the selection rules to a ``complete`` job: ``queued`` or ``rejected``.

        Parameters
        ----------
        job_id: int
            The job.

        Returns
        -------
        storage.JobRecord | None
            The job after the decision, or ``None`` when it was no longer
            ``complete`` (a new instance arrived meanwhile: it is back in
            ``received`` and will be decided after its next quiet time).
        """
        with self.session_factory() as session:
            job = get_job(session, job_id)
            if job.state is not JobState.COMPLETE:
                return None
            instances = series_instances(session, job.series_instance_uid)
            own = is_own_output(session, series_instance_uid=job.series_instance_uid)
        selection = self._select([self.store.root / item.file_path for item in instances], own)
        try:
            with self.session_factory.begin() as session:
                now = self.clock()
                decided = transition_job(
                    session,
                    job_id,
                    selection.state,
                    selection.reason,
                    now=now,
                    expected_state=JobState.COMPLETE,
                )
                if (
                    self.triage is not None
                    and decided.state is JobState.REJECTED
                    and not selection.own_output
                ):
                    self.triage.record_not_analysed(
                        session, job_id, selection.reason, now, notify=False
                    )
        except IllegalTransitionError:
            LOGGER.info(
                "job %d (series %s): new instances arrived during selection; waiting again",
                job_id,
                job.series_instance_uid,
            )
            return None
        LOGGER.info(
            "job %d (series %s): %s: %s",
            decided.id,
            decided.series_instance_uid,
            decided.state.value,
            selection.reason,
        )
        return decided

    def _select(self, paths: list[Path], own_output: bool) -> Selection:
        try:
            headers = read_headers(paths)
        except VolumeError as exc:
            return Selection(False, str(exc))
        return select_series(headers, self.rules, uid_root=self.uid_root, own_output=own_output)
