"""The node: storage, model, SCP, watcher, workers and exporter composed.

::

    with Node(settings) as node:        # start(): everything below, in order
        node.wait_idle(60)              # tests and tools: nothing left to do
                                        # stop(): the reverse, cleanly

:meth:`Node.start`
    1. creates the data directory (``instances/``, ``results/``);
    2. upgrades the database schema (:func:`storage.upgrade_database`);
    3. recovers from the last run (:func:`storage.recover_after_restart`):
       ``running`` jobs go back to ``queued``; ``written`` jobs keep their
       pending exports;
    4. removes temporary files left by interrupted writes;
    5. loads the model once (fails fast with :class:`NodeStartError` naming
       the model directory and, for a manifest problem, the field), and
       highdicom's tables of the standard
       (:func:`pacs_node.results.warmup.load_standard_tables`);
    6. re-evaluates jobs left ``complete`` (selection rules);
    7. starts the Storage SCP (:mod:`pacs_node.ae`), then the series watcher,
       ``Settings.workers`` workers and the exporter (and, with
       ``[[hl7_destinations]]``, the HL7 sender: :mod:`pacs_node.hl7`; the
       workers and the watcher record each job's triage with its state,
       :mod:`pacs_node.triage`). With ``[tls]``
       settings the SCP speaks DICOM TLS and destinations with
       ``tls = true`` are reached over TLS (:mod:`pacs_node.tls`); every
       incoming connection is recorded in the ``associations`` audit table
       (:mod:`pacs_node.audit`). The SCP tells the watcher which open
       associations delivered which series (:mod:`pacs_node.holds`): a
       series is not completed while one is open, for at most
       ``Settings.max_series_hold`` seconds.
    8. with ``http.enabled`` (default), serves the HTTP API, metrics and
       worklist page (:mod:`pacs_node.api`, ``docs/api.md``) on
       ``http.bind_address:http.port``; the access token comes from
       ``http.token`` or ``<data_dir>/http-token`` (generated, mode 0600).
:meth:`Node.stop`
    stops the HTTP API, stops accepting associations and lets running ones finish, stops the
    watcher, lets each worker finish its current job within the timeout (a
    job that cannot finish stays ``running`` and is re-queued at the next
    start; its late result is discarded), stops the exporter. Idempotent.
Threads and sessions
    One engine per node; every unit of work (an instance, a poll, a job
    step, an export attempt) uses its own short session. The model session
    is shared by the workers (ONNX Runtime's ``run()`` is thread-safe).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

from alembic.util import CommandError
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from inference.errors import ManifestError, ModelLoadError
from inference.manifest import Manifest
from pacs_node.ae import ae_from_settings, start_scp, stop_scp
from pacs_node.api import HTTPServer, TokenError, create_app, load_or_create_token
from pacs_node.audit import AssociationAudit
from pacs_node.errors import NodeError, NodeStartError
from pacs_node.exporter import Exporter
from pacs_node.hl7.sender import HL7Sender
from pacs_node.holds import SeriesHolds
from pacs_node.processing import SeriesProcessor
from pacs_node.tls import TLSSetupError, client_context, server_context
from pacs_node.triage import TriageRecorder
from pacs_node.receiver import StorageReceiver, utc_now
from pacs_node.results.warmup import load_standard_tables
from pacs_node.watcher import SeriesWatcher
from pacs_node.worker import DEFAULT_HEARTBEAT_INTERVAL, Worker, WorkerPool
from storage import (
    InstanceStore,
    JobState,
    RecoverySummary,
    ResultStore,
    create_database_engine,
    due_exports,
    make_session_factory,
    recorded_result_paths,
    recover_after_restart,
    status_overview,
    upgrade_database,
)

LOGGER = logging.getLogger(__name__)

__all__ = ["BUSY_STATES", "Node", "NodeError", "NodeStartError"]

#: Job states in which the node still has work to do for a series.
BUSY_STATES: tuple[JobState, ...] = (
    JobState.RECEIVED,
    JobState.COMPLETE,
    JobState.QUEUED,
    JobState.RUNNING,
)


class Node:
    """A complete deepsc-node in this process.

    Parameters
    ----------
    settings: config.Settings
        Everything the node needs.
    fsync: bool
        Make instance and result files durable before they are recorded
        (default ``True``; tests on throw-away folders may switch it off).
    intra_op_threads: int | None
        ONNX Runtime threads per operator (``None``: one per core).
    clock: Callable[[], datetime]
        Current time, timezone-aware (default UTC now).
    heartbeat_interval: float
        Seconds between heartbeats of a running job.

    Raises
    ------
    TypeError
        If `settings` is not a :class:`config.Settings`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        fsync: bool = True,
        intra_op_threads: int | None = None,
        clock: Callable[[], datetime] = utc_now,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    ) -> None:
        if not isinstance(settings, Settings):
            raise TypeError(
                f'Argument "settings" should be Settings, got {type(settings).__name__}'
            )
        self.settings = settings
        self.fsync = bool(fsync)
        self.intra_op_threads = intra_op_threads
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.instance_store = InstanceStore(settings.instances_dir, fsync=self.fsync)
        self.result_store = ResultStore(settings.results_dir, fsync=self.fsync)
        self.engine: Engine | None = None
        self.session_factory: sessionmaker[Session] | None = None
        self.processor: SeriesProcessor | None = None
        self.receiver: StorageReceiver | None = None
        self.watcher: SeriesWatcher | None = None
        self.holds = SeriesHolds(clock=clock)
        self.workers: WorkerPool | None = None
        self.exporter: Exporter | None = None
        self.hl7_sender: HL7Sender | None = None
        self.recovery: RecoverySummary | None = None
        self._server: ThreadedAssociationServer | None = None
        self.http: HTTPServer | None = None
        self._started = False
        self._stopped = False

    # -- lifecycle --------------------------------------------------------
    def start(self) -> Node:
        """Start everything (see the module docstring); returns the node.

        Raises
        ------
        NodeStartError
            If the database, the model or the listening port is not usable;
            whatever was started is stopped again.
        RuntimeError
            If the node was already started.
        """
        if self._started:
            raise RuntimeError("the node was already started; build a new Node to restart")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop(timeout=5.0)
            raise
        return self

    def _start(self) -> None:
        settings = self.settings
        try:
            for folder in (settings.data_dir, settings.instances_dir, settings.results_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeStartError(
                f"cannot create the data directory {settings.data_dir}: {exc}"
            ) from exc
        try:
            self.engine = create_database_engine(settings.database_url)
            upgrade_database(self.engine)
            self.session_factory = make_session_factory(self.engine)
            with self.session_factory.begin() as session:
                self.recovery = recover_after_restart(session, self.clock())
                recorded_results = recorded_result_paths(session)
        except (SQLAlchemyError, CommandError) as exc:
            raise NodeStartError(
                f"cannot open the database {self._database_label()}: {type(exc).__name__}: {exc}"
            ) from exc
        for store in (self.instance_store, self.result_store):
            store.remove_temporary_files()
        # SEG/SR written by a job that died before recording them: never sent,
        # and the re-queued job writes new ones (docs/robustness.md, section 1).
        self.result_store.remove_unrecorded_files(recorded_results)
        try:
            self.processor = SeriesProcessor.from_settings(
                settings, intra_op_threads=self.intra_op_threads
            )
        except (ModelLoadError, ManifestError) as exc:
            raise NodeStartError(f"cannot load the model in {settings.model_dir}: {exc}") from exc
        load_standard_tables()  # not while serving: it holds the GIL ~0.4 s
        unknown = sorted(
            {r.class_key for r in settings.triage.rules if r.class_key is not None}
            - set(self.processor.manifest.class_keys)
        )
        if unknown:
            LOGGER.warning(
                "triage rules name class(es) %s that model %s does not have (%s); "
                "those rules never match",
                ", ".join(unknown),
                self.processor.manifest.model_name,
                ", ".join(self.processor.manifest.class_keys),
            )
        try:
            scp_tls = server_context(settings.tls, handshake_timeout=settings.timeouts.acse)
            scu_tls = (
                client_context(settings.tls)
                if any(d.tls for d in settings.destinations)
                else None
            )
        except TLSSetupError as exc:
            raise NodeStartError(f"cannot set up DICOM TLS: {exc}") from exc
        factory = self.session_factory
        self.exporter = Exporter(
            factory,
            self.result_store,
            destinations=settings.destinations,
            calling_ae=settings.ae_title,
            timeouts=settings.timeouts,
            policy=settings.export_retry,
            clock=self.clock,
            tls_context=scu_tls,
        )
        if settings.hl7_destinations:
            self.hl7_sender = HL7Sender(
                factory,
                destinations=settings.hl7_destinations,
                policy=settings.export_retry,
                clock=self.clock,
            )
        triage = TriageRecorder(settings.triage, settings.hl7_destinations)
        processor = self.processor
        self.workers = WorkerPool(
            settings.workers,
            lambda name: Worker(
                name,
                factory,
                processor,
                self.instance_store,
                self.result_store,
                destinations=settings.destinations,
                clock=self.clock,
                heartbeat_interval=self.heartbeat_interval,
                on_written=lambda job: self._wake_exporter(),
                triage=triage,
            ),
        )
        self.watcher = SeriesWatcher(
            factory,
            self.instance_store,
            quiet_time=settings.quiet_time,
            rules=settings.selection,
            uid_root=settings.uid_root,
            clock=self.clock,
            on_queued=self._wake_workers,
            holds=self.holds,
            max_series_hold=settings.max_series_hold,
            triage=triage,
        )
        if self.recovery is not None:
            for job_id in self.recovery.to_evaluate:
                self.watcher.evaluate(job_id)
        self.receiver = StorageReceiver(self.instance_store, factory, clock=self.clock)
        try:
            self._server = start_scp(
                ae_from_settings(settings),
                settings.bind_address,
                settings.port,
                self.receiver,
                ssl_context=scp_tls,
                audit=AssociationAudit(factory, tls=scp_tls is not None, clock=self.clock),
                holds=self.holds,
            )
        except OSError as exc:
            raise NodeStartError(
                f"cannot listen on {settings.bind_address}:{settings.port}: {exc.strerror or exc}"
            ) from exc
        self.watcher.start()
        self.workers.start()
        self.exporter.start()
        if settings.http.enabled:
            self._start_http()
        if self.hl7_sender is not None:
            self.hl7_sender.start()
        manifest = self.manifest
        LOGGER.info(
            "node %s listening on %s:%d; model %s %s on %s; %d worker(s); destinations: %s; "
            "recovered: %d re-queued, %d re-evaluated, %d export(s) pending",
            settings.ae_title,
            settings.bind_address,
            self.port,
            manifest.model_name,
            manifest.model_version,
            self.processor.pipeline.model.provider,
            settings.workers,
            ", ".join(d.name for d in settings.destinations) or "none",
            len(self.recovery.requeued) if self.recovery else 0,
            len(self.recovery.to_evaluate) if self.recovery else 0,
            self.recovery.pending_exports if self.recovery else 0,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop cleanly within about `timeout` seconds (idempotent).

        Parameters
        ----------
        timeout: float
            Seconds for associations, the watcher, the workers' current jobs
            and the exporter together.
        """
        if self._stopped or not self._started:
            return
        self._stopped = True
        deadline = time.monotonic() + max(0.0, timeout)

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        if self.http is not None:
            self.http.stop(timeout=min(remaining(), 5.0))
            self.http = None
        if self._server is not None:
            stop_scp(self._server, timeout=min(remaining(), 10.0))
            self._server = None
        if self.watcher is not None:
            self.watcher.stop(remaining())
        if self.workers is not None:
            self.workers.stop(remaining())
        if self.exporter is not None and not self.exporter.stop(remaining()):
            LOGGER.warning("exporter still sending at stop; unrecorded attempts are retried")
        if self.hl7_sender is not None and not self.hl7_sender.stop(remaining()):
            LOGGER.warning("HL7 sender still sending at stop; unrecorded attempts are retried")
        if self.engine is not None:
            self.engine.dispose()
        LOGGER.info("node %s stopped", self.settings.ae_title)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- information ------------------------------------------------------
    @property
    def port(self) -> int:
        """The port the SCP listens on (the bound one when ``settings.port`` was 0).

        Raises
        ------
        RuntimeError
            If the SCP is not running.
        """
        if self._server is None:
            raise RuntimeError("the node's SCP is not running")
        return int(self._server.server_address[1])

    @property
    def http_port(self) -> int:
        """The port the HTTP API listens on (the bound one when ``http.port`` was 0).

        Raises
        ------
        RuntimeError
            If the HTTP API is not running.
        """
        if self.http is None:
            raise RuntimeError("the node's HTTP API is not running")
        return self.http.port

    @property
    def manifest(self) -> Manifest:
        """The loaded model's manifest.

        Raises
        ------
        RuntimeError
            If the model is not loaded (node not started).
        """
        if self.processor is None:
            raise RuntimeError("the model is not loaded; start the node first")
        return self.processor.manifest

    def is_idle(self) -> bool:
        """Whether no job is received/complete/queued/running and no export is due.

        Raises
        ------
        RuntimeError
            If the node was not started.
        """
        if self.session_factory is None:
            raise RuntimeError("the node was not started")
        with self.session_factory() as session:
            counts = status_overview(session, limit=0).job_counts
            if any(counts[state] for state in BUSY_STATES):
                return False
            return not due_exports(session, self.clock(), limit=1)

    def wait_idle(self, timeout: float, interval: float = 0.1) -> bool:
        """Wait until :meth:`is_idle` (for tests and tools).

        Parameters
        ----------
        timeout: float
            Seconds to wait at most.
        interval: float
            Seconds between checks.

        Returns
        -------
        bool
            Whether the node became idle in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.is_idle():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # -- internals --------------------------------------------------------
    def _start_http(self) -> None:
        settings = self.settings
        if self.session_factory is None or self.processor is None:
            raise RuntimeError("the database and the model come before the HTTP API")
        try:
            token = load_or_create_token(settings.http.token, settings.data_dir)
        except TokenError as exc:
            raise NodeStartError(f"cannot set up the HTTP API: {exc}") from exc
        app = create_app(
            self.session_factory,
            self.result_store,
            token,
            clock=self.clock,
            checks=[("model", self._model_check), ("dicom_scp", self._scp_check)],
            intended_use=self.processor.manifest.intended_use,
            worklist_refresh=settings.http.worklist_refresh,
        )
        server = HTTPServer(app, settings.http.bind_address, settings.http.port)
        try:
            server.start()
        except (OSError, RuntimeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise NodeStartError(
                f"cannot serve the HTTP API on {settings.http.bind_address}:"
                f"{settings.http.port}: {detail}"
            ) from exc
        self.http = server

    def _model_check(self) -> str | None:
        return None if self.processor is not None else "model not loaded"

    def _scp_check(self) -> str | None:
        server = self._server
        if server is None or self._stopped:
            return "DICOM SCP not listening"
        try:
            if server.socket is None or server.socket.fileno() < 0:
                return "DICOM SCP not listening"
        except OSError:
            return "DICOM SCP not listening"
        return None

    def _wake_workers(self) -> None:
        if self.workers is not None:
            self.workers.wake()

    def _wake_exporter(self) -> None:
        if self.exporter is not None:
            self.exporter.wake()
        if self.hl7_sender is not None:
            self.hl7_sender.wake()

    def _database_label(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.settings.database_url).render_as_string(hide_password=True)
