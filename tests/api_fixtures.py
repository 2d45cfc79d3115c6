"""A real node with its HTTP API, and helpers to process a series through it.

The node runs in the test process (:class:`pacs_node.node.Node`) with the
tiny ONNX model, its SCP and its HTTP API on free loopback ports, and no
destination (jobs end ``exported`` once written). Series arrive by a real
C-STORE; the API is reached over real HTTP with httpx.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom

from config import Destination, HTTPSettings
from pacs_node import scu
from pacs_node.node import Node
from storage import JobRecord, JobState, jobs_for_series, result_summary
from storage.triage import TriageRecord, get_triage
from tests.node_fixtures import node_settings, write_chest_series
from tests.peers import free_port

__all__ = ["ApiNode", "LogCollector", "api_node", "process_series"]


class LogCollector(logging.Handler):
    """Keeps every formatted log record of the process (for PHI/secret checks)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name} {record.getMessage()}")


@dataclass
class ApiNode:
    """A started node, its base URL and its token."""

    node: Node
    base_url: str
    token: str
    logs: LogCollector
    workdir: Path
    processed: list[JobRecord] = field(default_factory=list)

    def client(self, authorised: bool = True) -> httpx.Client:
        """An httpx client for the API (with the Bearer token when `authorised`)."""
        headers = {"Authorization": f"Bearer {self.token}"} if authorised else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10.0)


@contextlib.contextmanager
def api_node(workdir: Path, model_dir: Path, **overrides: Any) -> Iterator[ApiNode]:
    """Start a node whose token is generated into its data directory; stop it after.

    `overrides` are settings (``database_url``...) passed to ``node_settings``.
    """
    logs = LogCollector()
    root = logging.getLogger()
    root.addHandler(logs)
    previous = root.level
    root.setLevel(logging.DEBUG)
    settings = node_settings(
        workdir,
        model_dir=model_dir,
        port=free_port(),
        http=HTTPSettings(port=free_port(), worklist_refresh=1.0),
        **overrides,
    )
    try:
        with Node(settings, intra_op_threads=1) as node:
            token = (settings.data_dir / "http-token").read_text(encoding="ascii").strip()
            yield ApiNode(node, f"http://127.0.0.1:{node.http_port}", token, logs, workdir)
    finally:
        root.removeHandler(logs)
        root.setLevel(previous)


def process_series(api: ApiNode, folder: Path, *, seed: int = 3, label: str = "covid19",
                   slices: int = 24, timeout: float = 60.0) -> JobRecord:
    """Send a synthetic chest series to the node by C-STORE and wait until its job ends.

    Jobs that end ``exported`` are appended to ``api.processed``.
    """
    paths = write_chest_series(folder, seed=seed, label=label, slices=slices)
    node = api.node
    report = scu.send(
        Destination("node", node.settings.ae_title, "127.0.0.1", node.port),
        paths,
        calling_ae="MODALITY",
    )
    assert report.ok, report
    series_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    deadline = time.monotonic() + timeout
    assert node.session_factory is not None
    while True:
        with node.session_factory() as session:
            jobs = jobs_for_series(session, series_uid)
        if jobs and jobs[-1].state in (JobState.EXPORTED, JobState.REJECTED, JobState.FAILED):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"series {series_uid} not processed in {timeout} s: {jobs}")
        time.sleep(0.1)
    if jobs[-1].state is JobState.EXPORTED:
        api.processed.append(jobs[-1])
    return jobs[-1]


#: Flag and priority of the default triage rule of each predicted class.
DEFAULT_TRIAGE: dict[str, tuple[str, str]] = {
    "covid19": ("COVID-19 pattern", "urgent"),
    "cap": ("pneumonia, CAP pattern", "high"),
    "no_pneumonia": ("no pneumonia detected", "routine"),
}


def triage_of(api: ApiNode, job_id: int) -> TriageRecord:
    """The triage decision the node recorded with the job (the default rules)."""
    factory = api.node.session_factory
    assert factory is not None
    with factory() as session:
        found = get_triage(session, job_id)
        summary = result_summary(session, job_id)
    assert found is not None, f"job {job_id} has no triage"
    if summary is not None:  # analysed: the default rule of the predicted class
        assert (found.flag, found.priority) == DEFAULT_TRIAGE[summary["predicted_class"]]
    return found
