"""Crash safety: SIGKILL the node while it receives, infers and exports; restart it.

Real processes on loopback: the node (``deepsc-node serve``, bundled model,
its own SQLite database and file store), Orthanc as the PACS and
destination, pynetdicom and DCMTK ``storescu`` as senders. The node is
killed with SIGKILL (no clean-up runs) and started again on the same data
directory, settings and port, as a supervisor (systemd) would do.

What must hold after the restart (issue 5, section 1):

* every instance the node acknowledged with Success (0x0000) is in its
  database and file store, readable, with the content that was sent;
* every series whose instances were all acknowledged gets exactly one
  result at the destination: one SEG and one SR, with the SOP Instance UIDs
  the node recorded, no duplicates;
* a job killed while running is resumed (not lost, not run twice to
  completion); an export killed in flight is sent again, and an object the
  destination stored before the node could record it is not duplicated.
"""
from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy.orm import Session

from config import Destination
from inference.phantom import generate_phantom, sample_spec, write_dicom_series
from pacs_node.receiver import content_digest
from storage import (
    ExportRecord,
    ExportStatus,
    JobRecord,
    JobState,
    ResultObjectRecord,
    create_database_engine,
    exports_for_job,
    job_events,
    make_session_factory,
    result_objects_for_job,
    result_summary,
    series_instances,
)
from storage.jobs import RECOVERED_REASON
from tests.dicom_proxy import DicomProxy
from tests.e2e_fixtures import NodeProcess
from tests.node_fixtures import assert_result_kinds, wait_until, write_chest_series
from tests.peers import PEER_ENV, Orthanc, require_binary, run_dcmtk

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORTHANC_AE = "ORTHANC"
SENDER_AE = "CRASHSCU"
ALLOWED = [ORTHANC_AE, "STORESCU", "E2ETEST", SENDER_AE]
#: Quiet time of the nodes under test: long enough for a resend after a restart.
QUIET_TIME = 4.0
RESULT_TIMEOUT = 120.0
#: Seconds to keep watching after a result arrived: nothing more may come.
SETTLE = 3.0


# -- fixtures and helpers ---------------------------------------------------
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("crash-orthanc"), aet=ORTHANC_AE)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_node(workdir: Path, destination_port: int) -> NodeProcess:
    """A node process whose results go to 127.0.0.1:`destination_port`."""
    destination = Destination(
        name="pacs", ae_title=ORTHANC_AE, host="127.0.0.1", port=destination_port
    )
    return NodeProcess(
        workdir,
        destinations=[destination],
        settings={"allowed_calling_aes": ALLOWED, "quiet_time": QUIET_TIME},
        # A held export must still be in flight when the test strikes.
        tables={"timeouts": {"acse": 60.0, "dimse": 60.0, "network": 60.0}},
    )


@contextlib.contextmanager
def running(node: NodeProcess) -> Iterator[NodeProcess]:
    """Start `node`; on the way out stop it (SIGTERM) if it still runs."""
    node.start()
    try:
        yield node
    finally:
        node.stop()


def sigkill(node: NodeProcess) -> None:
    """SIGKILL the node's process and reap it (no handler, no clean-up runs)."""
    assert node.process is not None, "the node is not running"
    node.process.kill()
    node.process.wait(timeout=10)
    assert node.process.returncode == -9, node.process.returncode
    node.process = None


@contextlib.contextmanager
def node_db(node: NodeProcess) -> Iterator[Session]:
    """A read session on the node's SQLite database (the node may be running)."""
    engine = create_database_engine(node.database_url)
    try:
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def only_job(node: NodeProcess, series_uid: str) -> JobRecord:
    jobs = node.jobs(series_uid)
    assert len(jobs) == 1, f"expected one job for series {series_uid}, got {jobs}"
    return jobs[0]


def job_outputs(
    node: NodeProcess, job_id: int
) -> tuple[list[ResultObjectRecord], list[ExportRecord]]:
    with node_db(node) as session:
        return result_objects_for_job(session, job_id), exports_for_job(session, job_id)


def wait_job_state(
    node: NodeProcess, series_uid: str, state: JobState, timeout: float
) -> JobRecord:
    """Wait until the latest job of the series is in `state` (fail early if it ends badly)."""
    def reached() -> JobRecord | None:
        jobs = node.jobs(series_uid)
        if jobs and jobs[-1].state is state:
            return jobs[-1]
        if jobs and jobs[-1].state in (JobState.FAILED, JobState.REJECTED):
            raise AssertionError(f"job ended {jobs[-1].state.value}: {jobs[-1].reason}\n"
                                 f"{node.log_tail()}")
        return None

    return wait_until(reached, timeout, f"series {series_uid} {state.value}", interval=0.02)


def orthanc_results(orthanc: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """SOP Instance UIDs per modality (SEG, SR...) of every instance of a study."""
    found: dict[str, list[str]] = {}
    for series in orthanc.find_series(study_uid):
        modality = series["MainDicomTags"].get("Modality", "")
        for instance in orthanc.get(f"/series/{series['ID']}/instances"):
            found.setdefault(modality, []).append(instance["MainDicomTags"]["SOPInstanceUID"])
    return found


def assert_one_result(
    orthanc: Orthanc, node: NodeProcess, study_uid: str, series_uid: str
) -> JobRecord:
    """Exactly one exported job, and exactly its SEG, SR (outline report) and SC images at
    Orthanc, once."""
    wait_job_state(node, series_uid, JobState.EXPORTED, RESULT_TIMEOUT)
    time.sleep(SETTLE)  # nothing more arrives: no second job, no resend
    job = only_job(node, series_uid)
    assert job.state is JobState.EXPORTED
    objects, exports = job_outputs(node, job.id)
    with node_db(node) as session:
        assert_result_kinds([o.kind for o in objects], result_summary(session, job.id))
    assert all(e.status is ExportStatus.DELIVERED for e in exports), exports
    at_orthanc = orthanc_results(orthanc, study_uid)
    def uids(*kinds: str) -> list[str]:
        return sorted(o.sop_instance_uid for o in objects if o.kind in kinds)

    assert at_orthanc.get("SEG") == uids("seg"), at_orthanc
    assert sorted(at_orthanc.get("SR", [])) == uids("sr", "outline"), at_orthanc
    assert len(orthanc.series_modalities(study_uid)["SEG"]) == 1
    assert len(orthanc.series_modalities(study_uid)["SR"]) == len(uids("sr", "outline"))
    assert sorted(at_orthanc.get("OT", [])) == sorted(
        o.sop_instance_uid for o in objects if o.kind == "sc"
    ), at_orthanc
    return job


def sender_ae() -> AE:
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def send_all(node: NodeProcess, datasets: Sequence[Dataset]) -> list[int]:
    """C-STORE every dataset over one association; the statuses."""
    assoc = sender_ae().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def burst_killed_after(
    node: NodeProcess, datasets: Sequence[Dataset], acked_before_kill: int
) -> list[str]:
    """Send `datasets` in one association; SIGKILL the node as soon as
    `acked_before_kill` instances were acknowledged, while the sender goes on.

    Returns the SOP Instance UIDs acknowledged with Success, in order.
    """
    process = node.process
    assert process is not None
    acked: list[str] = []
    reached = threading.Event()

    def killer() -> None:
        reached.wait(60)
        process.kill()

    thread = threading.Thread(target=killer, name="killer")
    thread.start()
    assoc = sender_ae().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        for ds in datasets:
            if not assoc.is_established:
                break
            try:
                response = assoc.send_c_store(ds)
            except RuntimeError:  # the association died between two requests
                break
            if "Status" not in response:  # aborted while waiting for the response
                break
            if int(response.Status) == 0x0000:
                acked.append(str(ds.SOPInstanceUID))
            if len(acked) == acked_before_kill:
                reached.set()  # the next C-STORE is on its way while the node dies
    finally:
        reached.set()
        thread.join(10)
        if assoc.is_established:
            assoc.abort()
    process.wait(timeout=10)
    assert process.returncode == -9, process.returncode
    node.process = None
    return acked


def phantom_files(folder: Path, slices: int = 40) -> tuple[list[Path], str, str]:
    """A small chest phantom series as files; (files, study UID, series UID)."""
    files = write_chest_series(folder, slices=slices, study_instance_uid=generate_uid())
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return files, str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def storescu(node: NodeProcess, files: list[Path]) -> None:
    proc = run_dcmtk(["storescu", "-aet", "STORESCU", "-aec", node.ae_title,
                      "127.0.0.1", str(node.port), *map(str, files)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- (a) SIGKILL in the middle of a C-STORE burst ---------------------------
def test_sigkill_during_c_store_burst_loses_no_acknowledged_instance(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    files, study_uid, series_uid = phantom_files(tmp_path / "ct", slices=40)
    datasets = [pydicom.dcmread(path) for path in files]
    sent = {str(ds.SOPInstanceUID): ds for ds in datasets}
    # A series sent completely just before: all acknowledged, never sent again.
    whole_files, whole_study, whole_series = phantom_files(tmp_path / "whole", slices=24)
    node = make_node(tmp_path / "node", orthanc.dicom_port)
    node.start()
    try:
        storescu(node, whole_files)
        acked = burst_killed_after(node, datasets, acked_before_kill=25)
    finally:
        if node.process is not None:
            sigkill(node)
    assert 25 <= len(acked) < len(datasets), f"{len(acked)} acknowledged"
    # The node stays down longer than its quiet time (a supervisor's restart
    # delay, a reboot): the partial series must not look complete at start.
    time.sleep(QUIET_TIME + 1.0)

    with running(node):
        # Every acknowledged instance is recorded, its file is there and is what was sent.
        with node_db(node) as session:
            recorded = {i.sop_instance_uid: i for i in series_instances(session, series_uid)}
        assert set(acked) <= set(recorded), sorted(set(acked) - set(recorded))
        assert len(recorded) <= len(acked) + 1  # at most the one in flight at the kill
        for uid, record in recorded.items():
            path = node.data_dir / "instances" / record.file_path
            data = path.read_bytes()
            assert content_digest(data) == record.sha256, uid
            stored = pydicom.dcmread(path)
            assert stored.SOPInstanceUID == uid
            assert stored.PixelData == sent[uid].PixelData
        print(f"\nSIGKILL in a C-STORE burst: {len(acked)} of {len(datasets)} acknowledged, "
              f"{len(recorded)} recorded, {len(recorded) - len(acked)} in flight and kept")

        # The PACS sends the whole series again, as it does after a failed association.
        assert send_all(node, datasets) == [0x0000] * len(datasets)
        job = assert_one_result(orthanc, node, study_uid, series_uid)
        with node_db(node) as session:
            assert len(series_instances(session, series_uid)) == len(datasets)
        assert job.run_count == 1
        # The series acknowledged in full before the kill: one result, not sent again.
        whole = assert_one_result(orthanc, node, whole_study, whole_series)
        assert whole.run_count == 1
        with node_db(node) as session:
            assert len(series_instances(session, whole_series)) == len(whole_files)


# -- (b) SIGKILL during inference -------------------------------------------
@pytest.fixture(scope="module")
def large_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str, str]:
    """62 slices of 256 x 256: the node runs it for a few seconds."""
    spec = sample_spec(20261127, "covid19").with_grid(matrix=256, slice_thickness=5.0)
    files = write_dicom_series(
        generate_phantom(spec), tmp_path_factory.mktemp("large"),
        study_instance_uid=generate_uid(),
    )
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return files, str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def test_sigkill_during_inference_resumes_the_job_once(
    orthanc: Orthanc, large_series: tuple[list[Path], str, str], tmp_path: Path
) -> None:
    files, study_uid, series_uid = large_series
    node = make_node(tmp_path / "node", orthanc.dicom_port)
    with running(node):
        storescu(node, files)
        running_job = wait_job_state(node, series_uid, JobState.RUNNING, 60)
        sigkill(node)
    # Killed while running: nothing was recorded for it.
    killed = only_job(node, series_uid)
    assert killed.id == running_job.id and killed.state is JobState.RUNNING, killed
    assert job_outputs(node, killed.id) == ([], [])

    with running(node):
        job = assert_one_result(orthanc, node, study_uid, series_uid)
        with node_db(node) as session:
            events = [(e.from_state, e.to_state, e.reason) for e in job_events(session, job.id)]
    assert job.id == killed.id and job.run_count == 2
    assert (JobState.RUNNING, JobState.QUEUED, RECOVERED_REASON) in events
    assert [to for _, to, _ in events].count(JobState.WRITTEN) == 1


# -- (c) SIGKILL during export ----------------------------------------------
def wait_written(node: NodeProcess, series_uid: str) -> JobRecord:
    return wait_job_state(node, series_uid, JobState.WRITTEN, RESULT_TIMEOUT)


def test_sigkill_while_the_export_is_in_flight_sends_the_result_once(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    files, study_uid, series_uid = phantom_files(tmp_path / "ct", slices=24)
    with DicomProxy(orthanc.dicom_port) as proxy:
        proxy.hold = True  # the destination accepts the connection and never answers
        node = make_node(tmp_path / "node", proxy.port)
        with running(node):
            storescu(node, files)
            written = wait_written(node, series_uid)
            wait_until(lambda: proxy.accepted >= 1, 30, "the node's connection to the destination",
                       interval=0.02)
            sigkill(node)
        # Killed with the association open: no attempt recorded, nothing at the PACS.
        job = only_job(node, series_uid)
        assert job.id == written.id and job.state is JobState.WRITTEN
        objects, exports = job_outputs(node, job.id)
        assert len(objects) == len(exports) >= 3  # SEG, SR, SC image(s)
        assert all(e.status is ExportStatus.PENDING and e.attempt_count == 0 for e in exports)
        assert "SEG" not in orthanc_results(orthanc, study_uid)

        proxy.drop_connections()
        proxy.hold = False  # the destination answers again
        with running(node):
            job = assert_one_result(orthanc, node, study_uid, series_uid)
            _, exports = job_outputs(node, job.id)
        assert [e.attempt_count for e in exports] == [1] * len(objects)
        assert job.run_count == 1


def test_sigkill_after_the_destination_stored_but_before_the_node_recorded_it(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    files, study_uid, series_uid = phantom_files(tmp_path / "ct", slices=24)
    with DicomProxy(orthanc.dicom_port) as proxy:
        # Orthanc receives and stores both objects; the node hears only the
        # first C-STORE response and waits for the second.
        proxy.forward_responses = 1
        node = make_node(tmp_path / "node", proxy.port)
        with running(node):
            storescu(node, files)
            wait_until(lambda: len(orthanc_results(orthanc, study_uid).get("SR", [])) == 1
                       and proxy.dropped_pdus >= 1, RESULT_TIMEOUT, "SEG and SR at Orthanc",
                       interval=0.02)
            sigkill(node)
        job = only_job(node, series_uid)
        assert job.state is JobState.WRITTEN
        objects, exports = job_outputs(node, job.id)
        # The node recorded no delivery, yet the PACS has both objects.
        assert all(e.status is ExportStatus.PENDING and e.attempt_count == 0 for e in exports)
        before = orthanc_results(orthanc, study_uid)
        assert before["SEG"] == [o.sop_instance_uid for o in objects if o.kind == "seg"]
        assert before["SR"] == [o.sop_instance_uid for o in objects if o.kind == "sr"]

        proxy.drop_connections()
        proxy.forward_responses = None
        with running(node):
            # Sent again (at least once), with the same SOP Instance UIDs: no duplicate.
            job = assert_one_result(orthanc, node, study_uid, series_uid)
            _, exports = job_outputs(node, job.id)
        assert [e.attempt_count for e in exports] == [1] * len(objects)
        after = orthanc_results(orthanc, study_uid)
        assert after["SEG"] == before["SEG"]
        # The SR arrived once; the outline report (sent after it) once, when there is one.
        assert sorted(after["SR"]) == sorted(
            o.sop_instance_uid for o in objects if o.kind in ("sr", "outline")
        )
        assert set(before["SR"]) <= set(after["SR"])
        # The SC images (sent after the SR) arrive once each, with the recorded UIDs.
        assert sorted(after["OT"]) == sorted(o.sop_instance_uid for o in objects if o.kind == "sc")


# -- repeated SIGKILL at random moments -------------------------------------
#: Seed of the kill delays (printed; set CRASH_SEED to replay a run).
CRASH_SEED = int(os.environ.get("CRASH_SEED", "20261126"))
#: Kills before the run that is left to finish.
KILLS = 4


def test_repeated_sigkill_at_random_moments_still_gives_one_result(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    files, study_uid, series_uid = phantom_files(tmp_path / "ct", slices=24)
    node = make_node(tmp_path / "node", orthanc.dicom_port)
    rng = random.Random(CRASH_SEED)
    # Sending takes ~0.3 s, the quiet time 4 s, processing ~1.5 s, export
    # ~0.2 s: delays up to 7 s after the send starts reach every phase.
    delays = [round(rng.uniform(0.0, 7.0), 2) for _ in range(KILLS)]
    states = []
    for delay in delays:
        node.start()
        # As a PACS does after a failed or interrupted transfer: send it all again.
        sender = subprocess.Popen(
            [require_binary("storescu"), "-aet", "STORESCU", "-aec", node.ae_title, "127.0.0.1",
             str(node.port), *map(str, files)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PEER_ENV,
        )
        try:
            time.sleep(delay)
            sigkill(node)
        finally:
            sender.wait(timeout=60)
        jobs = node.jobs(series_uid)
        states.append(jobs[-1].state.value if jobs else "none")
    print(f"\nCRASH_SEED={CRASH_SEED}: killed after {delays} s; job states at the kills: {states}")

    with running(node):
        storescu(node, files)
        job = assert_one_result(orthanc, node, study_uid, series_uid)
        with node_db(node) as session:
            assert len(series_instances(session, series_uid)) == len(files)
    assert job.run_count >= 1
