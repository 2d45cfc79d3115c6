"""A background thread that polls: the shape of the watcher, the workers and the exporter.

:class:`PollingLoop` calls :meth:`PollingLoop.poll_once` every
``interval`` seconds, or at once after :meth:`PollingLoop.wake`, until
:meth:`PollingLoop.stop`. An exception in one poll is logged with its
traceback at ERROR and the loop goes on after the interval (a database that
is briefly unavailable must not kill the node); nothing is swallowed
silently.
"""
from __future__ import annotations

import logging
import threading

LOGGER = logging.getLogger(__name__)

__all__ = ["PollingLoop", "poll_interval_for"]

#: Shortest and longest poll periods in seconds.
MIN_POLL_INTERVAL = 0.1
MAX_POLL_INTERVAL = 0.5


def poll_interval_for(quiet_time: float) -> float:
    """The watcher's period: ``min(0.5, quiet_time / 4)``, at least 0.1 s.

    Parameters
    ----------
    quiet_time: float
        ``Settings.quiet_time`` in seconds.

    Returns
    -------
    float
        Seconds between polls.

    Examples
    --------
    >>> poll_interval_for(30.0), poll_interval_for(1.0), poll_interval_for(0.2)
    (0.5, 0.25, 0.1)
    """
    return max(MIN_POLL_INTERVAL, min(MAX_POLL_INTERVAL, float(quiet_time) / 4.0))


class PollingLoop:
    """Runs :meth:`poll_once` in a daemon thread until stopped.

    Subclasses implement :meth:`poll_once`; it returns how much work it did
    (when positive, the loop polls again at once).

    Parameters
    ----------
    name: str
        Thread name (appears in logs and thread dumps).
    interval: float
        Seconds between polls when there is nothing to do (> 0).

    Raises
    ------
    ValueError
        If `interval` is not positive.
    """

    def __init__(self, name: str, interval: float) -> None:
        if not isinstance(interval, (int, float)) or not interval > 0:
            raise ValueError(f'Argument "interval" should be > 0 seconds, got {interval!r}')
        self.name = name
        self.interval = float(interval)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> int:
        """Do the work that is due now.

        Returns
        -------
        int
            Units of work done (jobs, exports...); 0 if nothing was due.
        """
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def start(self) -> None:
        """Start the thread (no-op when it runs)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Poll now instead of at the end of the interval."""
        self._wake.set()

    def request_stop(self) -> None:
        """Ask the thread to stop after its current poll, without waiting."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to stop after its current poll and wait for it.

        Parameters
        ----------
        timeout: float | None
            Seconds to wait; ``None``: until it ends.

        Returns
        -------
        bool
            Whether the thread has ended.
        """
        self.request_stop()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        LOGGER.debug("%s started (every %.2f s)", self.name, self.interval)
        while not self._stop.is_set():
            try:
                done = self.poll_once()
            except Exception:  # keep the loop alive; the traceback goes to the log
                LOGGER.exception("%s: poll failed; retrying in %.2f s", self.name, self.interval)
                done = 0
            if self._stop.is_set():
                break
            if done <= 0:
                self._wake.wait(self.interval)
            self._wake.clear()
        LOGGER.debug("%s stopped", self.name)
