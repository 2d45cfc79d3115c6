"""Load run shared by ``bench/load.py`` and ``tests/test_load.py``.

:func:`run_load` starts a real Orthanc (the destination) and a real
``deepsc-node serve`` (bundled model, CPU, SQLite), writes ``studies``
phantom chest-CT studies, and sends them at once over ``associations``
concurrent pynetdicom associations (study *i* goes over association
*i mod associations*, all associations start together). Meanwhile:

* a C-ECHO probe in its own process (:mod:`tests.echo_probe`) opens an
  association and sends a C-ECHO every ``echo_interval`` seconds, from before
  the first C-STORE until every result is in Orthanc;
* a thread samples the resident memory of the node process and its children
  (``VmRSS`` in ``/proc``) every 0.2 s; the node's own peak (``VmHWM``) is read
  before it is stopped.

When every study has its SEG and its SR in Orthanc (or ``timeout`` runs out)
it counts, per study: instances acknowledged with a success or warning
status, acknowledged instances missing from the node (database row and
file), SEG and SR objects in Orthanc. :class:`LoadReport` holds the figures
and prints the table.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from config import Destination
from inference.phantom import CLASS_KEYS, generate_phantom, sample_spec, write_dicom_series
from pacs_node.results.common import SR_SERIES_NUMBER
from pacs_node.results.sr import OUTLINE_SR_SERIES_NUMBER
from storage import JobState, create_database_engine, make_session_factory, series_instances
from tests.e2e_fixtures import NodeProcess
from tests.echo_probe import PROBE_AE
from tests.load_monitors import EchoProbe, EchoSample, RssMonitor
from tests.peers import Orthanc

LOGGER = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_AES",
    "LoadConfig",
    "LoadReport",
    "StudyFiles",
    "make_studies",
    "run_load",
    "send_studies",
]

#: Calling AE title of the load generator's associations.
SENDER_AE = "LOADSCU"
#: Calling AEs the node accepts during a load run.
ALLOWED_AES = (SENDER_AE, PROBE_AE, "E2ETEST", "ORTHANC")
#: Transfer syntaxes offered for CT (Explicit, then Implicit VR Little Endian).
CT_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
#: Thickest slice of the load phantoms (mm; the node's default selection takes
#: up to 10 mm and at least 20 slices): fewer slices cover less of the chest.
MAX_SLICE_THICKNESS = 8.0
#: The state every study's job ends in when its results were delivered.
EXPECTED_JOB_STATE = JobState.EXPORTED.value


@dataclass(frozen=True)
class LoadConfig:
    """What to send and how.

    Parameters
    ----------
    studies: int
        Phantom studies (one CT series each).
    associations: int
        Concurrent associations they are spread over.
    slices: int
        Slices per series, spread over the phantom's scan length (slices at
        most :data:`MAX_SLICE_THICKNESS` thick; with fewer slices the scan
        is shorter).
    matrix: int
        Rows and columns per slice.
    quiet_time: float
        The node's quiet time (seconds without an instance -> series
        complete). The product default is 30 s; 5 s keeps the run short and
        leaves a wide margin over the slowest C-STORE response under this
        load (a stall longer than the quiet time splits a series in two).
    echo_interval: float
        Seconds between C-ECHO probes.
    timeout: float
        Seconds from the first C-STORE until every result must be in Orthanc.
    seed: int
        Seed of the first phantom (study *i* uses ``seed + i``).
    workers: int | None
        The node's ``workers`` setting (``None``: the node's default).
    """

    studies: int = 8
    associations: int = 8
    slices: int = 64
    matrix: int = 256
    quiet_time: float = 5.0
    echo_interval: float = 0.5
    timeout: float = 900.0
    seed: int = 500
    workers: int | None = None

    def __post_init__(self) -> None:
        for name in ("studies", "associations", "slices", "matrix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'Argument "{name}" should be an integer >= 1, got {value!r}')
        for name in ("quiet_time", "echo_interval", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f'Argument "{name}" should be > 0, got {getattr(self, name)!r}')


@dataclass
class StudyFiles:
    """One phantom study written as DICOM files, and what happened to it."""

    study_instance_uid: str
    series_instance_uid: str
    label: str
    files: list[Path]
    #: SOP Instance UIDs the node acknowledged with success (or warning).
    acknowledged: list[str] = field(default_factory=list)
    #: ``"<status or exception>"`` of every instance that was not acknowledged.
    refused: list[str] = field(default_factory=list)
    #: Seconds from each C-STORE request to its response (or failure).
    store_seconds: list[float] = field(default_factory=list)
    seg_count: int = 0
    #: Instances of the full report (Series Number 9002) in Orthanc.
    sr_count: int = 0
    #: Instances of the outline report (9005; none when no lesion reaches 0.5 mL).
    outline_count: int = 0
    instances_lost: int = 0
    job_state: str = "none"


@dataclass
class LoadReport:
    """The figures of one load run."""

    config: LoadConfig
    studies: list[StudyFiles]
    echoes: list[EchoSample]
    send_s: float
    wall_s: float
    idle_rss_mib: float
    peak_rss_mib: float
    peak_tree_rss_mib: float
    node_exit_code: int | None
    timed_out: bool
    echo_limit_s: float = 1.0

    # -- counts --------------------------------------------------------
    @property
    def instances_sent(self) -> int:
        """Instances the associations tried to send."""
        return sum(len(study.files) for study in self.studies)

    @property
    def instances_acknowledged(self) -> int:
        """Instances acknowledged with a success or warning status."""
        return sum(len(study.acknowledged) for study in self.studies)

    @property
    def instances_lost(self) -> int:
        """Acknowledged instances the node does not have (row or file missing)."""
        return sum(study.instances_lost for study in self.studies)

    @property
    def delivered(self) -> list[StudyFiles]:
        """Studies with exactly one SEG and one SR in Orthanc."""
        return [s for s in self.studies if s.seg_count == 1 and s.sr_count == 1]

    @property
    def results_lost(self) -> int:
        """Fully acknowledged studies without a SEG or an SR in Orthanc."""
        return sum(
            (s.seg_count == 0) + (s.sr_count == 0)
            for s in self.studies
            if len(s.acknowledged) == len(s.files)
        )

    @property
    def duplicate_results(self) -> int:
        """Result objects beyond one SEG, one SR and one outline report per study."""
        return sum(
            max(0, s.seg_count - 1) + max(0, s.sr_count - 1) + max(0, s.outline_count - 1)
            for s in self.studies
        )

    @property
    def store_seconds(self) -> list[float]:
        """Seconds from each C-STORE request to its response, every study."""
        return [t for study in self.studies for t in study.store_seconds]

    @property
    def echo_failures(self) -> int:
        """Probes that were not answered with success."""
        return sum(not e.ok for e in self.echoes)

    @property
    def echo_max_s(self) -> float:
        """Longest probe (failures included)."""
        return max((e.latency for e in self.echoes), default=math.nan)

    @property
    def echo_p95_s(self) -> float:
        """95th percentile of the probe latencies (nearest rank)."""
        return _percentile([e.latency for e in self.echoes], 95.0)

    @property
    def echo_median_s(self) -> float:
        """Median probe latency (nearest rank)."""
        return _percentile([e.latency for e in self.echoes], 50.0)

    def failures(self) -> list[str]:
        """What went wrong; empty when the node held the load."""
        out = []
        if self.instances_acknowledged != self.instances_sent:
            out.append(
                f"{self.instances_sent - self.instances_acknowledged} instance(s) not acknowledged"
            )
        if self.instances_lost:
            out.append(f"{self.instances_lost} acknowledged instance(s) lost")
        if self.results_lost:
            out.append(f"{self.results_lost} result object(s) not delivered")
        if self.duplicate_results:
            out.append(f"{self.duplicate_results} duplicate result object(s)")
        if not self.echoes:
            out.append("no C-ECHO probe result")
        if self.echo_failures:
            out.append(f"{self.echo_failures} C-ECHO probe(s) failed")
        if self.echoes and not self.echo_max_s < self.echo_limit_s:
            out.append(f"C-ECHO took {self.echo_max_s:.3f} s (limit {self.echo_limit_s} s)")
        not_exported = [s.job_state for s in self.studies if s.job_state != EXPECTED_JOB_STATE]
        if not_exported:
            out.append(f"{len(not_exported)} job(s) not exported: {sorted(set(not_exported))}")
        if self.timed_out:
            out.append(f"results not all in Orthanc within {self.config.timeout} s")
        if self.node_exit_code != 0:
            out.append(f"node exit status {self.node_exit_code} (expected 0 after SIGTERM)")
        return out

    def rows(self) -> list[tuple[str, str]]:
        """``(what, value)`` rows of the table."""
        seg = sum(s.seg_count for s in self.studies)
        sr = sum(s.sr_count for s in self.studies)
        return [
            ("studies sent", f"{len(self.studies)}"),
            ("concurrent associations", f"{self.config.associations}"),
            ("instances sent", f"{self.instances_sent}"),
            ("instances acknowledged", f"{self.instances_acknowledged}"),
            ("series processed and delivered (1 SEG + 1 SR)",
             f"{len(self.delivered)} / {len(self.studies)}"),
            ("results delivered to Orthanc", f"{seg + sr} ({seg} SEG, {sr} SR)"),
            ("send time (first C-STORE -> last association released)", f"{self.send_s:.1f} s"),
            ("wall time (first C-STORE -> all results in Orthanc)", f"{self.wall_s:.1f} s"),
            ("C-STORE response time median / p95 / max",
             f"{_percentile(self.store_seconds, 50.0) * 1e3:.0f} / "
             f"{_percentile(self.store_seconds, 95.0) * 1e3:.0f} / "
             f"{max(self.store_seconds, default=math.nan) * 1e3:.0f} ms"),
            ("node RSS idle, before the load", f"{self.idle_rss_mib:.0f} MiB"),
            ("node peak RSS (VmHWM)", f"{self.peak_rss_mib:.0f} MiB"),
            ("node + children peak RSS (sampled)", f"{self.peak_tree_rss_mib:.0f} MiB"),
            ("C-ECHO probes during load (failed)", f"{len(self.echoes)} ({self.echo_failures})"),
            ("C-ECHO latency median / p95 / max",
             f"{self.echo_median_s * 1e3:.0f} / {self.echo_p95_s * 1e3:.0f} / "
             f"{self.echo_max_s * 1e3:.0f} ms"),
            ("instances lost", f"{self.instances_lost}"),
            ("results lost", f"{self.results_lost}"),
            ("duplicate results", f"{self.duplicate_results}"),
        ]

    def table(self) -> str:
        """The report as aligned text."""
        cfg = self.config
        head = (
            f"load: {len(self.studies)} phantom studies of {cfg.slices} slices "
            f"{cfg.matrix}x{cfg.matrix} over {cfg.associations} concurrent associations; "
            f"quiet time {cfg.quiet_time} s, C-ECHO every {cfg.echo_interval} s"
        )
        width = max(len(name) for name, _ in self.rows())
        lines = [head, *(f"  {name:<{width}}  {value}" for name, value in self.rows())]
        failures = self.failures()
        lines.append("  result: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
        return "\n".join(lines)


def _percentile(values: Sequence[float], percent: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100.0 * len(ordered)))
    return ordered[rank - 1]


# -- phantoms -------------------------------------------------------------
def make_studies(config: LoadConfig, folder: Path) -> list[StudyFiles]:
    """Write ``config.studies`` phantom studies (classes in turn) under `folder`.

    Parameters
    ----------
    config: LoadConfig
        Count, grid and seed.
    folder: pathlib.Path
        One sub-folder per study is created in it.

    Returns
    -------
    list[StudyFiles]
    """
    studies = []
    for index in range(config.studies):
        seed = config.seed + index
        label = CLASS_KEYS[index % len(CLASS_KEYS)]
        spec = sample_spec(seed, label)
        # n_slices slices over the phantom's scan length, as thick as the spec allows.
        thickness = min(MAX_SLICE_THICKNESS, spec.scan_length / config.slices)
        spec = spec.with_grid(
            matrix=config.matrix, n_slices=config.slices, slice_thickness=thickness
        )
        files = write_dicom_series(
            generate_phantom(spec), folder / f"study{index:02d}", uid_seed=f"load-{seed}"
        )
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        studies.append(
            StudyFiles(
                study_instance_uid=str(header.StudyInstanceUID),
                series_instance_uid=str(header.SeriesInstanceUID),
                label=label,
                files=files,
            )
        )
    return studies


# -- sending --------------------------------------------------------------
def send_studies(
    studies: Sequence[StudyFiles], port: int, called_ae: str, start: threading.Barrier
) -> None:
    """Send studies over one association; record statuses on each study.

    Parameters
    ----------
    studies: Sequence[StudyFiles]
        Studies for this association (their ``acknowledged`` / ``refused``
        lists are filled in).
    port: int
        The node's port on 127.0.0.1.
    called_ae: str
        The node's AE title.
    start: threading.Barrier
        Passed by every sender before it associates (so all start together).
    """
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(CTImageStorage, list(CT_SYNTAXES))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120.0
    start.wait()
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        for study in studies:
            study.refused.extend(["association not established"] * len(study.files))
        return
    try:
        for study in studies:
            for path in study.files:
                ds = pydicom.dcmread(path)
                sent = time.monotonic()
                try:
                    answer = assoc.send_c_store(ds)
                except (OSError, RuntimeError, ValueError) as exc:
                    study.refused.append(f"{type(exc).__name__}: {exc}")
                    continue
                finally:
                    study.store_seconds.append(time.monotonic() - sent)
                status = int(answer.Status) if answer and "Status" in answer else None
                if status is not None and (status == 0x0000 or (status & 0xF000) == 0xB000):
                    study.acknowledged.append(str(ds.SOPInstanceUID))
                else:
                    study.refused.append(f"status {status!r}")
    finally:
        if assoc.is_established:
            assoc.release()


# -- checking -------------------------------------------------------------
def count_results(orthanc: Orthanc, study: StudyFiles) -> None:
    """Set ``seg_count`` / ``sr_count`` / ``outline_count`` of `study` from Orthanc
    (instances; the two SR series told apart by their Series Number)."""
    modalities = orthanc.series_modalities(study.study_instance_uid)
    study.seg_count = sum(
        len(orthanc.instances_of_series(s["ID"])) for s in modalities.get("SEG", [])
    )
    reports = modalities.get("SR", [])

    def count(number: int) -> int:
        return sum(
            len(orthanc.instances_of_series(s["ID"])) for s in reports
            if int(s["MainDicomTags"].get("SeriesNumber", 0)) == number
        )

    study.sr_count = count(SR_SERIES_NUMBER)
    study.outline_count = count(OUTLINE_SR_SERIES_NUMBER)
    # Any other SR series counts as a duplicate of the full report.
    study.sr_count += sum(
        int(s["MainDicomTags"].get("SeriesNumber", 0))
        not in (SR_SERIES_NUMBER, OUTLINE_SR_SERIES_NUMBER)
        for s in reports
    )


def count_lost_instances(node: NodeProcess, studies: Sequence[StudyFiles]) -> None:
    """Set ``instances_lost`` and ``job_state`` of each study (node database and files)."""
    engine = create_database_engine(node.database_url)
    try:
        with make_session_factory(engine)() as session:
            for study in studies:
                records = series_instances(session, study.series_instance_uid)
                present = {
                    r.sop_instance_uid for r in records
                    if (node.data_dir / "instances" / r.file_path).is_file()
                }
                study.instances_lost = sum(uid not in present for uid in study.acknowledged)
    finally:
        engine.dispose()
    for study in studies:
        jobs = node.jobs(study.series_instance_uid)
        study.job_state = jobs[-1].state.value if jobs else "none"


def _settled(orthanc: Orthanc, node: NodeProcess, studies: Sequence[StudyFiles]) -> bool:
    """Whether every study has its SEG and SR in Orthanc or its job gave up."""
    for study in studies:
        modalities = orthanc.series_modalities(study.study_instance_uid)
        if modalities.get("SEG") and modalities.get("SR"):
            continue
        jobs = node.jobs(study.series_instance_uid)
        if not jobs or jobs[-1].state not in (JobState.REJECTED, JobState.FAILED):
            return False
    return True


# -- the run --------------------------------------------------------------
def run_load(
    config: LoadConfig, workdir: Path, log: Callable[[str], None] = LOGGER.info
) -> LoadReport:
    """Start Orthanc and the node, send the load, watch, count.

    Parameters
    ----------
    config: LoadConfig
        What to send.
    workdir: pathlib.Path
        Scratch folder (phantoms, Orthanc storage, node data).
    log: Callable[[str], None]
        Progress messages.

    Returns
    -------
    LoadReport
    """
    workdir = Path(workdir)
    log(f"writing {config.studies} phantom studies ({config.slices} x "
        f"{config.matrix} x {config.matrix})")
    studies = make_studies(config, workdir / "phantoms")
    settings: dict[str, object] = {
        "quiet_time": config.quiet_time,
        "allowed_calling_aes": list(ALLOWED_AES),
    }
    if config.workers is not None:
        settings["workers"] = config.workers
    with Orthanc(workdir / "orthanc") as orthanc:
        destination = Destination(
            name="pacs", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
        )
        node = NodeProcess(workdir / "node", destinations=[destination], settings=settings)
        node.start()
        exit_code: int | None = None
        try:
            assert node.process is not None
            monitor = RssMonitor(node.process.pid)
            idle_kib = monitor.sample()
            groups = [list(studies[i::config.associations]) for i in range(config.associations)]
            groups = [g for g in groups if g]
            barrier = threading.Barrier(len(groups) + 1)
            senders = [
                threading.Thread(
                    target=send_studies, args=(group, node.port, node.ae_title, barrier),
                    name=f"load-sender-{index + 1}", daemon=True,
                )
                for index, group in enumerate(groups)
            ]
            with monitor, EchoProbe(
                node.port, node.ae_title, config.echo_interval, workdir / "echo-probe.jsonl"
            ) as probe:
                probe.wait_first()
                for sender in senders:
                    sender.start()
                barrier.wait()
                started = time.monotonic()
                log(f"sending over {len(groups)} associations")
                for sender in senders:
                    sender.join(config.timeout)
                send_s = time.monotonic() - started
                log(f"sent in {send_s:.1f} s; waiting for the results in Orthanc")
                timed_out = False
                deadline = started + config.timeout
                while not _settled(orthanc, node, studies):
                    if time.monotonic() > deadline:
                        timed_out = True
                        break
                    time.sleep(0.5)
                wall_s = time.monotonic() - started
                log(f"results in Orthanc after {wall_s:.1f} s")
            peak_kib = monitor.peak_kib()
            time.sleep(2.0)  # a late duplicate would show up now
            for study in studies:
                count_results(orthanc, study)
            count_lost_instances(node, studies)
        finally:
            exit_code = node.stop()
    return LoadReport(
        config=config,
        studies=studies,
        echoes=probe.samples,
        send_s=send_s,
        wall_s=wall_s,
        idle_rss_mib=idle_kib / 1024,
        peak_rss_mib=peak_kib / 1024,
        peak_tree_rss_mib=monitor.peak_tree_kib / 1024,
        node_exit_code=exit_code,
        timed_out=timed_out,
    )
