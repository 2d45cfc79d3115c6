"""Workers and the whole path of a series: C-STORE -> ... -> written -> exported.

Real peers: DCMTK ``storescu`` sends the CT series to the node, DCMTK
``storescp`` is the destination; the model is a tiny real ONNX graph
(``tests.onnx_fixtures``), the database a real SQLite file.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from config import DEFAULT_UID_ROOT, Destination, SelectionRules
from inference.pipeline import InferencePipeline
from pacs_node.node import Node
from pacs_node.processing import SeriesProcessor
from pacs_node.receiver import StorageReceiver
from pacs_node.worker import Worker, WorkerPool
from storage import (
    InstanceStore,
    JobRecord,
    JobState,
    ResultStore,
    get_job,
    job_events,
    jobs_for_series,
    recover_after_restart,
    result_objects_for_job,
    result_summary,
    transition_job,
)
from storage.exports import NO_DESTINATIONS_REASON
from tests.dicom_fixtures import dcmtk_storescp, make_basic_text_sr, write_dataset
from tests.node_fixtures import (
    assert_result_kinds,
    chest_datasets,
    migrated_database,
    node_settings,
    received_instance,
    tilt,
    tiny_model,
    wait_until,
    write_datasets,
)
from tests.peers import free_port, run_dcmtk

FLOW = [
    JobState.RECEIVED,
    JobState.COMPLETE,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.WRITTEN,
    JobState.EXPORTED,
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def processor(model_dir: Path) -> SeriesProcessor:
    pipeline = InferencePipeline.from_model_dir(
        model_dir, providers=["CPUExecutionProvider"], intra_op_threads=1
    )
    return SeriesProcessor(
        pipeline, uid_root=DEFAULT_UID_ROOT, series_number_base=9000, rules=SelectionRules()
    )


@pytest.fixture()
def db_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated_database(tmp_path) as factory:
        yield factory


@pytest.fixture()
def stores(tmp_path: Path) -> tuple[InstanceStore, ResultStore]:
    return InstanceStore(tmp_path / "instances"), ResultStore(tmp_path / "results")


def queue_series(
    factory: sessionmaker[Session], store: InstanceStore, datasets: list[Dataset]
) -> JobRecord:
    """Store and record a series, then move its job to queued (as the watcher does)."""
    receiver = StorageReceiver(store, factory)
    for ds in datasets:
        assert receiver.receive(received_instance(ds)).status == 0
    with factory.begin() as session:
        job = jobs_for_series(session, str(datasets[0].SeriesInstanceUID))[-1]
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=job.created_at)
        return transition_job(session, job.id, JobState.QUEUED, "test", now=job.created_at)


def make_worker(
    factory: sessionmaker[Session],
    processor: SeriesProcessor,
    stores: tuple[InstanceStore, ResultStore],
    name: str = "w1",
    **kwargs: object,
) -> Worker:
    return Worker(name, factory, processor, *stores, **kwargs)  # type: ignore[arg-type]


# -- the whole path over the network -----------------------------------------------


@pytest.mark.e2e
def test_series_sent_by_cstore_reaches_the_destination_as_seg_and_sr(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    paths = write_datasets(tmp_path / "ct", chest_datasets())
    series_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    pacs_dir = tmp_path / "pacs"
    with dcmtk_storescp(pacs_dir) as pacs_port:
        settings = node_settings(
            tmp_path, model_dir=model_dir, port=free_port(),
            destinations=[Destination("pacs", "STORESCP", "127.0.0.1", pacs_port)],
        )
        with Node(settings, intra_op_threads=1) as node:
            sent = run_dcmtk(["storescu", "-aet", "MODALITY", "-aec", "DEEPSC", "127.0.0.1",
                              str(node.port), *map(str, paths)])
            assert sent.returncode == 0, sent.stderr
            assert node.wait_idle(60)
            assert node.session_factory is not None
            with node.session_factory() as session:
                jobs = jobs_for_series(session, series_uid)
                events = job_events(session, jobs[0].id)
                objects = result_objects_for_job(session, jobs[0].id)
                summary = result_summary(session, jobs[0].id)
    assert [job.state for job in jobs] == [JobState.EXPORTED]
    assert [event.to_state for event in events] == FLOW
    assert events[2].reason == "CT axial 24 slices 8.0 mm"
    received = sorted(pacs_dir.iterdir())
    assert len(received) == len(objects) >= 3  # SEG, SR, at least the SC summary page
    assert summary is not None
    assert_result_kinds([o.kind for o in objects], summary)
    delivered = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, received)}
    assert set(delivered) == {obj.sop_instance_uid for obj in objects}
    by_modality = {str(ds.Modality): ds for ds in delivered.values()}
    assert set(by_modality) == {"SEG", "SR", "OT"}
    seg = by_modality["SEG"]
    (sr,) = (ds for ds in delivered.values() if ds.SeriesNumber == 9002)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg.SeriesNumber == 9001 and sr.SeriesNumber == 9002
    assert str(seg.SOPInstanceUID).startswith(DEFAULT_UID_ROOT)
    assert summary is not None
    assert set(summary["class_probabilities"]) == {"covid19", "cap", "no_pneumonia"}
    assert summary["objects"]["seg"]["sop_instance_uid"] == str(seg.SOPInstanceUID)
    assert [item["sop_instance_uid"] for item in summary["objects"]["sc"]] == [
        obj.sop_instance_uid for obj in objects if obj.kind == "sc"
    ]
    assert "gsps" not in summary["objects"]  # no destination asked for it
    assert summary["source_series_instance_uid"] == series_uid
    assert "Research use only" in summary["intended_use"]
    # INFO lines name jobs and series by id and UID, never the patient.
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert f"job {jobs[0].id} (series {series_uid}): queued" in info
    assert "PHANTOM^COVID19" not in info and "PHANTOM-3" not in info


@pytest.mark.e2e
def test_each_destination_gets_the_objects_it_asks_for(tmp_path: Path, model_dir: Path) -> None:
    paths = write_datasets(tmp_path / "ct", chest_datasets())
    series_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    folders = {name: tmp_path / name for name in ("default", "plain", "weasis")}
    with dcmtk_storescp(folders["default"]) as default_port, \
            dcmtk_storescp(folders["plain"]) as plain_port, \
            dcmtk_storescp(folders["weasis"]) as weasis_port:
        settings = node_settings(
            tmp_path, model_dir=model_dir, port=free_port(),
            destinations=[
                Destination("default", "STORESCP", "127.0.0.1", default_port),
                Destination("plain", "STORESCP", "127.0.0.1", plain_port, ("seg", "sr")),
                Destination("weasis", "STORESCP", "127.0.0.1", weasis_port, ("sr", "gsps")),
            ],
        )
        with Node(settings, intra_op_threads=1) as node:
            sent = run_dcmtk(["storescu", "-aet", "MODALITY", "-aec", "DEEPSC", "127.0.0.1",
                              str(node.port), *map(str, paths)])
            assert sent.returncode == 0, sent.stderr
            assert node.wait_idle(60)
            assert node.session_factory is not None
            with node.session_factory() as session:
                (job,) = jobs_for_series(session, series_uid)
                objects = result_objects_for_job(session, job.id)
                summary = result_summary(session, job.id)
    assert job.state is JobState.EXPORTED
    kinds = [o.kind for o in objects]
    assert kinds[-1] == "gsps"
    assert_result_kinds(kinds[:-1], summary)
    uids = {kind: [o.sop_instance_uid for o in objects if o.kind == kind] for kind in kinds}
    received = {
        name: sorted((str(ds.Modality), str(ds.SOPInstanceUID))
                     for ds in (pydicom.dcmread(f, stop_before_pixels=True)
                                for f in folder.iterdir()))
        for name, folder in folders.items()
    }
    seg, sr, gsps = ("SEG", uids["seg"][0]), ("SR", uids["sr"][0]), ("PR", uids["gsps"][0])
    outline = [("SR", uid) for uid in uids.get("outline", [])]
    assert received["default"] == sorted(
        [seg, sr, *outline, *(("OT", uid) for uid in uids["sc"])]
    )
    assert received["plain"] == sorted([seg, sr])
    assert received["weasis"] == sorted([sr, gsps])
    assert summary is not None
    assert summary["objects"]["gsps"]["sop_instance_uid"] == uids["gsps"][0]
    assert [item["sop_instance_uid"] for item in summary["objects"]["sc"]] == uids["sc"]


@pytest.mark.e2e
def test_series_that_cannot_be_processed_are_rejected_with_reasons(
    tmp_path: Path, model_dir: Path
) -> None:
    short = chest_datasets(slices=3)
    mixed = tilt(chest_datasets(), 5.0, 12)
    report = make_basic_text_sr()
    files = [
        *write_datasets(tmp_path / "short", short),
        *write_datasets(tmp_path / "mixed", mixed),
        write_dataset(report, tmp_path / "sr" / "report.dcm"),
    ]
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port())
    with Node(settings, intra_op_threads=1) as node:
        sent = run_dcmtk(["storescu", "-aet", "MODALITY", "-aec", "DEEPSC", "127.0.0.1",
                          str(node.port), *map(str, files)])
        assert sent.returncode == 0, sent.stderr
        assert node.wait_idle(60)
        assert node.session_factory is not None
        with node.session_factory() as session:
            decided = {
                name: jobs_for_series(session, str(datasets[0].SeriesInstanceUID))
                for name, datasets in (("short", short), ("mixed", mixed), ("sr", [report]))
            }
            mixed_events = job_events(session, decided["mixed"][0].id)
    assert [(j.state, j.reason) for j in decided["short"]] == [
        (JobState.REJECTED, "3 slices < minimum 20")
    ]
    assert [(j.state, j.reason) for j in decided["sr"]] == [
        (JobState.REJECTED, "modality SR is not one of CT")
    ]
    (mixed_job,) = decided["mixed"]
    assert mixed_job.state is JobState.REJECTED
    assert "mixes 2 image orientations" in (mixed_job.reason or "")
    assert [e.to_state for e in mixed_events][-2:] == [JobState.RUNNING, JobState.REJECTED]
    assert not list((settings.results_dir).rglob("*.dcm"))


# -- one worker, no network ----------------------------------------------------------


def test_worker_writes_records_and_finishes_without_destinations(
    db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
    processor: SeriesProcessor,
) -> None:
    job = queue_series(db_factory, stores[0], chest_datasets())
    written: list[JobRecord] = []
    worker = make_worker(db_factory, processor, stores, on_written=written.append)
    done = worker.run_one()
    assert done is not None and done.id == job.id
    assert (done.state, done.reason) == (JobState.EXPORTED, NO_DESTINATIONS_REASON)
    assert [j.id for j in written] == [job.id]
    assert worker.run_one() is None
    with db_factory() as session:
        objects = result_objects_for_job(session, job.id)
        events = job_events(session, job.id)
        summary = result_summary(session, job.id)
    kinds = [o.kind for o in objects]
    assert_result_kinds(kinds, summary)
    for obj in objects:
        path = stores[1].root / obj.file_path
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(header.SOPInstanceUID) == obj.sop_instance_uid
    assert events[-3].reason == f"claimed by {worker.worker_id}"


def test_irregular_series_is_rejected_with_the_volume_reason(
    db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
    processor: SeriesProcessor,
) -> None:
    datasets = chest_datasets()
    del datasets[10]
    job = queue_series(db_factory, stores[0], datasets)
    done = make_worker(db_factory, processor, stores).run_one()
    assert done is not None and done.state is JobState.REJECTED
    assert done.reason is not None
    assert done.reason.startswith(f"series {job.series_instance_uid} is not a regularly spaced")
    assert "1 slice(s) appear to be missing" in done.reason


def test_unexpected_error_fails_the_job_with_type_message_and_traceback(
    tmp_path: Path, db_factory: sessionmaker[Session], processor: SeriesProcessor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instances = InstanceStore(tmp_path / "instances")
    (tmp_path / "results").write_text("a file where the result folder should be")
    job = queue_series(db_factory, instances, chest_datasets())
    worker = make_worker(db_factory, processor, (instances, ResultStore(tmp_path / "results")))
    with caplog.at_level(logging.ERROR, logger="pacs_node"):
        done = worker.run_one()
    assert done is not None and done.state is JobState.FAILED
    assert done.reason is not None and done.reason.startswith(
        ("FileExistsError: ", "NotADirectoryError: ")
    )
    tracebacks = [r for r in caplog.records if r.exc_info and f"job {job.id}" in r.getMessage()]
    assert tracebacks, "the traceback goes to the log at ERROR"
    assert "PHANTOM^COVID19" not in caplog.text  # no patient name in the log


def test_job_recovered_while_running_records_nothing(
    db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
    processor: SeriesProcessor,
) -> None:
    job = queue_series(db_factory, stores[0], chest_datasets())
    worker = make_worker(db_factory, processor, stores, heartbeat_interval=0.05)
    outcome: list[JobRecord | None] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.run_one()))
    thread.start()

    def running() -> bool:
        with db_factory() as session:
            return get_job(session, job.id).state is JobState.RUNNING

    wait_until(running, 10, "the job to run", interval=0.01)
    with db_factory.begin() as session:  # what a restart elsewhere would do
        started = get_job(session, job.id).started_at
        assert started is not None
        assert recover_after_restart(session, started).requeued == (job.id,)
    thread.join(60)
    assert outcome and outcome[0] is not None and outcome[0].state is JobState.QUEUED
    with db_factory() as session:
        assert result_objects_for_job(session, job.id) == []
    assert not list(stores[1].root.rglob("*.dcm"))
    # The re-queued job is processed once by whoever claims it.
    done = make_worker(db_factory, processor, stores, "w2").run_one()
    assert done is not None and done.state is JobState.EXPORTED and done.run_count == 2


def test_pool_stop_abandons_a_job_that_cannot_finish(
    db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
    processor: SeriesProcessor,
) -> None:
    job = queue_series(db_factory, stores[0], chest_datasets())
    pool = WorkerPool(1, lambda name: make_worker(db_factory, processor, stores, name))
    pool.start()

    def running() -> bool:
        with db_factory() as session:
            return get_job(session, job.id).state is JobState.RUNNING

    wait_until(running, 10, "the job to run", interval=0.01)
    assert pool.stop(timeout=0.0) == [job.id]
    worker = pool.workers[0]
    assert worker.abandoned
    assert worker.stop(60)  # the computation ends in the background...
    with db_factory() as session:  # ...and records nothing: the next start re-queues it
        assert get_job(session, job.id).state is JobState.RUNNING
        assert result_objects_for_job(session, job.id) == []


def test_two_workers_process_each_job_once(
    db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
    processor: SeriesProcessor,
) -> None:
    jobs = [queue_series(db_factory, stores[0], chest_datasets(slices=20)) for _ in range(2)]
    pool = WorkerPool(2, lambda name: make_worker(db_factory, processor, stores, name))
    pool.start()
    try:
        def finished() -> bool:
            with db_factory() as session:
                return all(get_job(session, j.id).state is JobState.EXPORTED for j in jobs)

        wait_until(finished, 60, "both jobs to finish")
    finally:
        assert pool.stop(10) == []
    with db_factory() as session:
        done = [get_job(session, j.id) for j in jobs]
    assert [j.run_count for j in done] == [1, 1]
    assert len({j.worker_id for j in done}) in (1, 2)
    assert not any(worker.running for worker in pool.workers)
