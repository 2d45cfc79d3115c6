"""Open associations that hold back the completion of their series.

DICOM has no "end of series" message, so the watcher completes a series
after ``quiet_time`` seconds without an instance (:mod:`pacs_node.watcher`).
A sender whose association stalls in the middle of a series (a busy PACS, a
slow disk, a congested network) would then have the part received so far
processed on its own, and the rest would make a second job and a second
result. :class:`SeriesHolds` remembers, per series, the associations that
delivered instances of it (C-STORE answered with a success or warning
status) and are still open, so that the watcher can wait for them:

``delivered(assoc, series, label)``
    called by :func:`pacs_node.handlers.handle_store` after each stored
    instance;
``EVT_RELEASED``, ``EVT_ABORTED``, ``EVT_CONN_CLOSE``
    end the association (:meth:`SeriesHolds.handlers`); an association
    whose thread is found dead is ended too (pynetdicom's DUL thread can
    die on malformed input without any of these events, see
    :mod:`pacs_node.audit`);
``hold(series)``
    what the watcher asks: the open associations that delivered the series
    and when the last one of them ended.

Kept in memory only: an association cannot outlive the process, and after a
restart :meth:`pacs_node.watcher.SeriesWatcher.start` holds every series for
a whole quiet time anyway.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pynetdicom import evt

from pacs_node.receiver import utc_now

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.events import Event

LOGGER = logging.getLogger(__name__)

__all__ = ["SeriesHold", "SeriesHolds", "association_label"]


@dataclass(frozen=True)
class SeriesHold:
    """What holds a series back, as :meth:`SeriesHolds.hold` reports it.

    Parameters
    ----------
    open_associations: tuple[str, ...]
        Labels (e.g. ``"AE 'PACS' at 10.0.0.7:40112"``) of the open
        associations that delivered instances of the series; empty when
        none is open.
    ended_at: datetime | None
        When the last association that delivered instances of the series
        ended, if one ended recently (see :meth:`SeriesHolds.prune`).
    """

    open_associations: tuple[str, ...] = ()
    ended_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        """Whether an association that delivered the series is still open."""
        return bool(self.open_associations)


def association_label(calling_ae: str, address: str, port: int | None) -> str:
    """How logs name an association: ``"AE 'PACS' at 10.0.0.7:40112"``.

    Parameters
    ----------
    calling_ae: str
        The peer's calling AE title.
    address: str
        The peer's IP address.
    port: int | None
        The peer's port, if known.
    """
    where = address if port is None else f"{address}:{port}"
    return f"AE {calling_ae!r} at {where}"


def _is_alive(assoc: object) -> bool:
    """Whether `assoc` is still running (objects without ``is_alive`` always are)."""
    is_alive = getattr(assoc, "is_alive", None)
    return not callable(is_alive) or bool(is_alive())


class SeriesHolds:
    """Per series, the open associations that delivered instances of it (thread-safe).

    Parameters
    ----------
    clock: Callable[[], datetime]
        Current time, timezone-aware (the end time of associations);
        default UTC now. Use the watcher's clock.
    """

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # association -> (label, series UIDs it delivered)
        self._open: dict[object, tuple[str, set[str]]] = {}
        # series UID -> open associations that delivered it
        self._series: dict[str, set[object]] = {}
        # series UID -> when its last delivering association ended
        self._ended: dict[str, datetime] = {}

    def handlers(self) -> list[tuple[evt.EventType, Callable[[Event], None]]]:
        """The ``(event, handler)`` pairs to bind on the SCP: the ends of an association."""
        return [
            (evt.EVT_RELEASED, self.on_association_ended),
            (evt.EVT_ABORTED, self.on_association_ended),
            (evt.EVT_CONN_CLOSE, self.on_association_ended),
        ]

    def on_association_ended(self, event: Event) -> None:
        """``EVT_RELEASED`` / ``EVT_ABORTED`` / ``EVT_CONN_CLOSE``: :meth:`ended`."""
        self.ended(event.assoc)

    def delivered(self, assoc: object, series_instance_uid: str, label: str) -> None:
        """Note that the open association `assoc` delivered an instance of a series.

        Parameters
        ----------
        assoc: object
            The association (a ``pynetdicom.association.Association``; any
            hashable object in tests).
        series_instance_uid: str
            The series of the stored instance.
        label: str
            How logs name the association (:func:`association_label`).
        """
        with self._lock:
            entry = self._open.get(assoc)
            if entry is None:
                entry = self._open[assoc] = (label, set())
            if series_instance_uid not in entry[1]:
                entry[1].add(series_instance_uid)
                self._series.setdefault(series_instance_uid, set()).add(assoc)

    def ended(self, assoc: object, when: datetime | None = None) -> None:
        """End `assoc`: its series are no longer held by it (idempotent).

        Parameters
        ----------
        assoc: object
            The association.
        when: datetime | None
            When it ended; default the clock's now.
        """
        with self._lock:
            self._end_locked(assoc, self.clock() if when is None else when)

    def _end_locked(self, assoc: object, when: datetime) -> None:
        entry = self._open.pop(assoc, None)
        if entry is None:
            return
        label, series = entry
        for uid in series:
            holders = self._series.get(uid)
            if holders is not None:
                holders.discard(assoc)
                if not holders:
                    del self._series[uid]
            previous = self._ended.get(uid)
            if previous is None or when > previous:
                self._ended[uid] = when
        LOGGER.debug("association %s ended: %d series no longer held by it", label, len(series))

    def hold(self, series_instance_uid: str) -> SeriesHold:
        """What holds a series back now.

        An open association whose thread is no longer alive is ended first
        (at the clock's now).

        Parameters
        ----------
        series_instance_uid: str
            The series.

        Returns
        -------
        SeriesHold
            Its open delivering associations and when the last one ended.
        """
        with self._lock:
            holders = self._series.get(series_instance_uid, set())
            dead = [assoc for assoc in holders if not _is_alive(assoc)]
            if dead:
                now = self.clock()
                for assoc in dead:
                    self._end_locked(assoc, now)
            holders = self._series.get(series_instance_uid, set())
            labels = tuple(sorted(self._open[assoc][0] for assoc in holders))
            return SeriesHold(labels, self._ended.get(series_instance_uid))

    def prune(self, before: datetime) -> None:
        """Forget ends before `before` and end associations whose thread died.

        The watcher calls it at each poll with ``now - quiet_time``: an end
        older than that can no longer hold a series back.

        Parameters
        ----------
        before: datetime
            Ends earlier than this are forgotten.
        """
        with self._lock:
            dead = [assoc for assoc in self._open if not _is_alive(assoc)]
            if dead:
                now = self.clock()
                for assoc in dead:
                    self._end_locked(assoc, now)
            for uid in [uid for uid, when in self._ended.items() if when < before]:
                del self._ended[uid]

    def open_count(self) -> int:
        """Number of open associations that delivered at least one instance."""
        with self._lock:
            return len(self._open)
