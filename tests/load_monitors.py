"""Watching a node under load: its memory, and how fast it answers C-ECHO.

:class:`RssMonitor` samples the resident memory of a process and its
descendants (``/proc/<pid>/status``) in a thread and reads the process's own
peak (``VmHWM``). :class:`EchoProbe` runs :mod:`tests.echo_probe` in its own
process (so that the load generator's threads cannot slow the probe down)
and collects one :class:`EchoSample` per C-ECHO.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e_fixtures import REPO_ROOT

LOGGER = logging.getLogger(__name__)

__all__ = ["EchoProbe", "EchoSample", "RssMonitor"]

#: Seconds between RSS samples.
RSS_INTERVAL = 0.2


@dataclass
class EchoSample:
    """One C-ECHO of the probe."""

    at: float
    latency: float
    ok: bool
    error: str | None


def _proc_status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class RssMonitor:
    """Samples the RSS of a process and its descendants in a thread.

    Parameters
    ----------
    pid: int
        The process (the node).
    interval: float
        Seconds between samples.
    """

    def __init__(self, pid: int, interval: float = RSS_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_tree_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)

    def sample(self) -> int:
        """Current RSS (KiB) of the process and its descendants."""
        return sum(_proc_status_kib(p, "VmRSS") for p in [self.pid, *_descendants(self.pid)])

    def peak_kib(self) -> int:
        """``VmHWM`` of the process itself: its peak RSS so far (KiB)."""
        return _proc_status_kib(self.pid, "VmHWM")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_tree_kib = max(self.peak_tree_kib, self.sample())

    def __enter__(self) -> RssMonitor:
        self.peak_tree_kib = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.peak_tree_kib = max(self.peak_tree_kib, self.sample())


class EchoProbe:
    """:mod:`tests.echo_probe` as a subprocess; :attr:`samples` after exit.

    Parameters
    ----------
    port: int
        The node's port on 127.0.0.1.
    called_ae: str
        The node's AE title.
    interval: float
        Seconds between echoes.
    record: pathlib.Path | None
        File for the probe's JSON lines (kept for a closer look).
    """

    def __init__(
        self, port: int, called_ae: str, interval: float, record: Path | None = None
    ) -> None:
        self.command = [
            sys.executable, "-m", "tests.echo_probe", "--port", str(port),
            "--called-ae", called_ae, "--interval", str(interval),
        ]
        self.record = record
        self.process: subprocess.Popen[str] | None = None
        self.samples: list[EchoSample] = []
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    def wait_first(self, timeout: float = 30.0) -> None:
        """Wait until the probe has reported its first echo."""
        deadline = time.monotonic() + timeout
        while not self._lines:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError("the C-ECHO probe exited before its first echo")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no C-ECHO probe result within {timeout} s")
            time.sleep(0.05)

    def __enter__(self) -> EchoProbe:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, name="echo-probe-reader", daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(5.0)
        lines = [line for line in self._lines if line.strip()]
        if self.record is not None:
            self.record.write_text("".join(lines))
        self.samples = [EchoSample(**json.loads(line)) for line in lines]
