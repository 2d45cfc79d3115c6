"""Node lifecycle: start from a TOML file, fail fast on a bad model, resume after a restart."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest

from config import Destination, load_settings
from pacs_node import scu
from pacs_node.node import Node, NodeStartError
from pacs_node.receiver import StorageReceiver
from storage import (
    ExportStatus,
    InstanceStore,
    JobRecord,
    JobState,
    claim_next_job,
    create_database_engine,
    exports_for_job,
    get_job,
    job_events,
    jobs_for_series,
    make_session_factory,
    result_objects_for_job,
    result_summary,
    transition_job,
    upgrade_database,
)
from storage.jobs import RECOVERED_REASON
from tests.node_fixtures import (
    assert_result_kinds,
    chest_datasets,
    node_settings,
    received_instance,
    storescp_on,
    tiny_model,
    wait_until,
    write_datasets,
)
from tests.peers import free_port


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model"))


def series_jobs(node: Node, series_uid: str) -> list[JobRecord]:
    assert node.session_factory is not None
    with node.session_factory() as session:
        return jobs_for_series(session, series_uid)


def send_series(node: Node, paths: list[Path]) -> str:
    report = scu.send(Destination("node", node.settings.ae_title, "127.0.0.1", node.port),
                      paths, calling_ae="MODALITY")
    assert report.ok, report
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def test_node_starts_from_a_toml_file_and_stops_idempotently(
    tmp_path: Path, model_dir: Path
) -> None:
    port = free_port()
    config = tmp_path / "deepsc-node.toml"
    config.write_text(
        f'ae_title = "DEEPSC"\nport = {port}\nbind_address = "127.0.0.1"\n'
        f'data_dir = "data"\nmodel_dir = {json.dumps(str(model_dir))}\n'
        'providers = ["CPUExecutionProvider"]\nquiet_time = 0.5\n'
        f"[http]\nport = {free_port()}\n"
    )
    settings = load_settings(config_file=config, environ={})
    assert settings.data_dir == tmp_path / "data"
    node = Node(settings, intra_op_threads=1)
    with node:
        assert node.port == port
        assert node.manifest.model_name == "test model"
        assert scu.echo(Destination("node", "DEEPSC", "127.0.0.1", port), "TESTSCU") == 0
        assert node.is_idle()
        assert (tmp_path / "data" / "deepsc-node.sqlite3").is_file()
        assert (tmp_path / "data" / "instances").is_dir()
        assert (tmp_path / "data" / "results").is_dir()
    node.stop()  # idempotent
    with pytest.raises(RuntimeError, match="already started"):
        node.start()
    with pytest.raises(scu.AssociationFailedError):
        scu.echo(Destination("node", "DEEPSC", "127.0.0.1", port), "TESTSCU", timeout=2)


def test_bad_manifest_fails_fast_naming_the_model_dir_and_field(
    tmp_path: Path, model_dir: Path
) -> None:
    broken = shutil.copytree(model_dir, tmp_path / "broken-model")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["input"]["name"] = "scan"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    port = free_port()
    node = Node(node_settings(tmp_path, model_dir=broken, port=port))
    with pytest.raises(NodeStartError) as caught:
        node.start()
    message = str(caught.value)
    assert str(broken) in message
    assert 'manifest field "input.name"' in message
    with pytest.raises(scu.AssociationFailedError):  # nothing is left listening
        scu.echo(Destination("node", "DEEPSC", "127.0.0.1", port), "TESTSCU", timeout=2)


def test_missing_model_dir_fails_fast(tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    with pytest.raises(NodeStartError, match=f"cannot load the model in {missing}"):
        Node(node_settings(tmp_path, model_dir=missing, port=free_port())).start()


def test_port_in_use_fails_fast(tmp_path: Path, model_dir: Path) -> None:
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port())
    with Node(settings, intra_op_threads=1):
        with pytest.raises(NodeStartError, match="cannot listen on 127.0.0.1"):
            Node(settings, intra_op_threads=1).start()


@pytest.mark.e2e
def test_results_written_while_the_destination_is_down_go_out_after_a_restart(
    tmp_path: Path, model_dir: Path
) -> None:
    pacs_port = free_port()
    settings = node_settings(
        tmp_path, model_dir=model_dir, port=free_port(),
        destinations=[Destination("pacs", "STORESCP", "127.0.0.1", pacs_port)],
    )
    paths = write_datasets(tmp_path / "ct", chest_datasets())
    with Node(settings, intra_op_threads=1) as first:
        series = send_series(first, paths)

        def failed_once() -> bool:
            jobs = series_jobs(first, series)
            if not jobs or jobs[0].state is not JobState.WRITTEN:
                return False
            assert first.session_factory is not None
            with first.session_factory() as session:
                return all(e.attempt_count >= 1 for e in exports_for_job(session, jobs[0].id))

        wait_until(failed_once, 60, "the first failed export attempts")
    (job,) = series_jobs(first, series)
    assert job.state is JobState.WRITTEN
    # A SEG written by a job that died before recording it: no row names it.
    study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    orphan = first.result_store.write(study, series, "1.2.3.999", b"x").path
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))

    with storescp_on(tmp_path / "pacs", pacs_port) as folder:
        with Node(settings, intra_op_threads=1) as second:
            assert not orphan.exists()
            assert second.recovery is not None
            assert second.recovery.exporting == (job.id,)
            pending = second.recovery.pending_exports
            wait_until(lambda: series_jobs(second, series)[0].state is JobState.EXPORTED,
                       30, "the job to be exported")
            time.sleep(1.0)  # several exporter polls: nothing is sent again
            assert second.session_factory is not None
            with second.session_factory() as session:
                records = exports_for_job(session, job.id)
                objects = result_objects_for_job(session, job.id)
        files = sorted(folder.iterdir())
    assert len(files) == pending == len(objects) >= 3  # SEG, SR, SC page (+ key images)
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files} == {
        o.sop_instance_uid for o in objects
    }
    assert all(r.status is ExportStatus.DELIVERED for r in records)
    assert len(series_jobs(second, series)) == 1
    assert all((settings.results_dir / o.file_path).is_file() for o in objects)


def test_job_left_running_is_requeued_and_processed_once(tmp_path: Path, model_dir: Path) -> None:
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port())
    datasets = chest_datasets()
    series = str(datasets[0].SeriesInstanceUID)
    # Simulate a crash: the series was received and its job was running.
    engine = create_database_engine(settings.database_url)
    try:
        upgrade_database(engine)
        factory = make_session_factory(engine)
        receiver = StorageReceiver(InstanceStore(settings.instances_dir), factory)
        for ds in datasets:
            assert receiver.receive(received_instance(ds)).status == 0
        with factory.begin() as session:
            job = jobs_for_series(session, series)[0]
            transition_job(session, job.id, JobState.COMPLETE, "quiet", now=job.created_at)
            transition_job(session, job.id, JobState.QUEUED, "CT axial", now=job.created_at)
            assert claim_next_job(session, "crashed-worker", job.created_at) is not None
    finally:
        engine.dispose()
    with Node(settings, intra_op_threads=1) as node:
        assert node.recovery is not None and node.recovery.requeued == (job.id,)
        assert node.wait_idle(60)
        assert node.session_factory is not None
        with node.session_factory() as session:
            done = get_job(session, job.id)
            events = job_events(session, job.id)
            objects = result_objects_for_job(session, job.id)
            summary = result_summary(session, job.id)
    assert done.state is JobState.EXPORTED and done.run_count == 2
    states = [(e.from_state, e.to_state, e.reason) for e in events]
    assert (JobState.RUNNING, JobState.QUEUED, RECOVERED_REASON) in states
    assert [s[1] for s in states].count(JobState.WRITTEN) == 1
    kinds = [o.kind for o in objects]
    assert_result_kinds(kinds, summary)
    assert len(list(settings.results_dir.rglob("*.dcm"))) == len(objects)


def test_complete_job_left_by_a_crash_is_decided_at_start(
    tmp_path: Path, model_dir: Path
) -> None:
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port())
    datasets = chest_datasets(slices=3)
    engine = create_database_engine(settings.database_url)
    try:
        upgrade_database(engine)
        factory = make_session_factory(engine)
        receiver = StorageReceiver(InstanceStore(settings.instances_dir), factory)
        for ds in datasets:
            receiver.receive(received_instance(ds))
        with factory.begin() as session:
            job = jobs_for_series(session, str(datasets[0].SeriesInstanceUID))[0]
            transition_job(session, job.id, JobState.COMPLETE, "quiet", now=job.created_at)
    finally:
        engine.dispose()
    with Node(settings, intra_op_threads=1) as node:
        assert node.recovery is not None and node.recovery.to_evaluate == (job.id,)
        assert node.session_factory is not None
        with node.session_factory() as session:
            decided = get_job(session, job.id)
    assert (decided.state, decided.reason) == (JobState.REJECTED, "3 slices < minimum 20")


def test_stale_temporary_files_are_removed_at_start(tmp_path: Path, model_dir: Path) -> None:
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port())
    stale = settings.instances_dir / "1.2.3" / "4.5.6" / ".tmp-abc.part"
    fresh = settings.instances_dir / "1.2.3" / "4.5.6" / ".tmp-def.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    with Node(settings, intra_op_threads=1):
        assert not stale.exists()
        assert fresh.exists()  # may belong to a writer of another process



@pytest.mark.postgres
def test_node_on_postgresql_with_two_workers(
    tmp_path: Path, model_dir: Path, postgres_url: str
) -> None:
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port(),
                             database_url=postgres_url, workers=2)
    good = write_datasets(tmp_path / "good", chest_datasets(slices=20))
    other = write_datasets(tmp_path / "other", chest_datasets(slices=20))
    short = write_datasets(tmp_path / "short", chest_datasets(slices=3))
    with Node(settings, intra_op_threads=1) as node:
        uids = [send_series(node, paths) for paths in (good, other, short)]
        assert node.wait_idle(60)
        jobs = [series_jobs(node, uid) for uid in uids]
    assert [[(j.state, j.run_count) for j in found] for found in jobs] == [
        [(JobState.EXPORTED, 1)], [(JobState.EXPORTED, 1)], [(JobState.REJECTED, 0)]
    ]
    assert jobs[2][0].reason == "3 slices < minimum 20"
