"""Triage recorded with the job, and HL7 ORU^R01 over MLLP to a REAL listener.

The listener is python-hl7's asyncio MLLP server (``tests.hl7_fixtures``) on
127.0.0.1; what it receives is parsed back with ``hl7.parse``. The worker
tests run the tiny real ONNX model on a synthetic chest CT; the database is
a real SQLite file. Every wait is bounded (``wait_until``, socket timeouts).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hl7
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from config import (
    DEFAULT_TRIAGE_RULES,
    DEFAULT_UID_ROOT,
    Destination,
    HL7Destination,
    RetryPolicy,
    SelectionRules,
    TriageRule,
    TriageRules,
)
from inference.pipeline import InferencePipeline
from pacs_node import scu
from pacs_node.hl7.message import build_oru_r01, escape
from pacs_node.hl7.sender import HL7Sender
from pacs_node.node import Node
from pacs_node.processing import SeriesProcessor
from pacs_node.receiver import StorageReceiver
from pacs_node.triage import TriageDecision, TriageRecorder
from pacs_node.watcher import SeriesWatcher
from pacs_node.worker import Worker
from storage import (
    HL7MessageState,
    HL7StudyContext,
    InstanceAttributes,
    InstanceStore,
    JobRecord,
    JobState,
    ResultStore,
    create_database_engine,
    get_triage,
    hl7_messages_for_job,
    job_study_uids,
    jobs_for_series,
    make_session_factory,
    record_instance,
    result_summary,
    transition_job,
)
from tests.hl7_fixtures import MLLPListener
from tests.node_fixtures import (
    chest_datasets,
    migrated_database,
    node_settings,
    received_instance,
    tiny_model,
    wait_until,
    write_datasets,
)
from tests.peers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCESSION = "ACC|7^&"  # SH allows HL7 delimiters: they must arrive escaped
FAST_RETRY = RetryPolicy(max_attempts=None, initial_backoff=0.05, max_backoff=0.2)


def destination(port: int, name: str = "ris") -> HL7Destination:
    return HL7Destination(name, "127.0.0.1", port, "RIS", "RADIOLOGY", timeout=3.0)


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory) -> SeriesProcessor:
    pipeline = InferencePipeline.from_model_dir(
        tiny_model(tmp_path_factory.mktemp("model")), providers=["CPUExecutionProvider"],
        intra_op_threads=1,
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


def receive(factory: sessionmaker[Session], store: InstanceStore,
            datasets: list[Dataset]) -> JobRecord:
    """Store and record a series as the SCP does; its job is ``received``."""
    receiver = StorageReceiver(store, factory)
    for ds in datasets:
        ds.AccessionNumber = ACCESSION
        assert receiver.receive(received_instance(ds)).status == 0
    with factory() as session:
        return jobs_for_series(session, str(datasets[0].SeriesInstanceUID))[-1]


def queue(factory: sessionmaker[Session], store: InstanceStore,
          datasets: list[Dataset]) -> JobRecord:
    job = receive(factory, store, datasets)
    with factory.begin() as session:
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=job.created_at)
        return transition_job(session, job.id, JobState.QUEUED, "test", now=job.created_at)


def parsed(text: str) -> hl7.Message:
    return hl7.parse(text)


def comp(segment: Any, field: int, component: int = 1) -> str:
    """Component `component` of the first repetition of field `field` (still escaped)."""
    parts = str(segment(field)).split("~")[0].split("^")
    return parts[component - 1] if len(parts) >= component else ""


def observations(message: hl7.Message) -> dict[str, list[tuple[str, str, str]]]:
    """OBX by identifier code: (OBX-4 sub-ID, OBX-5 value unescaped, OBX-6 units code)."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    for segment in message.segments("OBX"):
        code = comp(segment, 3, 1)
        value = message.unescape(str(segment(5)))
        found.setdefault(code, []).append((str(segment(4)), value, comp(segment, 6, 1)))
    return found


def send_all(sender: HL7Sender, job_id: int, factory: sessionmaker[Session],
             timeout: float = 20.0) -> None:
    def done() -> bool:
        sender.poll_once()
        with factory() as session:
            return all(m.state is HL7MessageState.SENT
                       for m in hl7_messages_for_job(session, job_id))
    wait_until(done, timeout, "HL7 messages sent")


# -- written and rejected jobs through the worker ----------------------------------------


def test_written_job_gets_triage_and_an_oru_that_the_listener_parses_back(
    db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
    processor: SeriesProcessor, caplog: pytest.LogCaptureFixture,
) -> None:
    datasets = chest_datasets()
    job = queue(db_factory, stores[0], datasets)
    with MLLPListener() as listener:
        ris = destination(listener.port)
        worker = Worker("w1", db_factory, processor, *stores,
                        triage=TriageRecorder(TriageRules(), [ris]))
        done = worker.run_one()
        assert done is not None and done.state is JobState.EXPORTED  # no DICOM destination
        with db_factory() as session:
            triage = get_triage(session, job.id)
            summary = result_summary(session, job.id)
            (queued,) = hl7_messages_for_job(session, job.id)
        # recorded in the same transaction as "written": both are there, nothing sent yet
        assert triage is not None and summary is not None
        assert queued.state is HL7MessageState.PENDING and listener.messages() == []
        expected = {"covid19": ("COVID-19 pattern", "urgent", 1),
                    "cap": ("pneumonia, CAP pattern", "high", 2),
                    "no_pneumonia": ("no pneumonia detected", "routine", 3)}
        assert (triage.flag, triage.priority, triage.rank) == expected[summary["predicted_class"]]
        assert triage.text.startswith(f"{triage.flag}: {triage.priority}; probabilities ")
        sender = HL7Sender(db_factory, destinations=[ris], policy=FAST_RETRY)
        with caplog.at_level(logging.INFO, logger="pacs_node"):
            send_all(sender, job.id, db_factory)
        (text,) = listener.messages()
    message = parsed(text)
    header = datasets[0]
    msh = message.segment("MSH")
    assert (str(msh(3)), str(msh(5)), str(msh(6)), str(msh(9)), str(msh(10)),
            str(msh(12))) == ("DEEPSC-NODE", "RIS", "RADIOLOGY", "ORU^R01^ORU_R01",
                              queued.control_id, "2.5.1")
    pid = message.segment("PID")
    assert comp(pid, 3, 1) == header.PatientID and comp(pid, 3, 5) == "PI"
    assert comp(pid, 5, 1) == "PHANTOM" and comp(pid, 5, 2) == "COVID19"
    obr = message.segment("OBR")
    assert message.unescape(str(obr(2))) == ACCESSION == message.unescape(str(obr(18)))
    assert message.unescape(str(message.segment("ORC")(2))) == ACCESSION
    assert str(obr(25)) == "F"
    assert "Research use only, not for diagnosis" in str(message.segment("NTE")(3))
    expected_tq1 = {"urgent": "S", "high": "A", "routine": "R", "low": "R"}[triage.priority]
    assert comp(message.segment("TQ1"), 9, 1) == expected_tq1
    assert comp(message.segment("TQ1"), 9, 3) == "HL70027"
    obx = observations(message)
    assert obx["113014"] == [("", header.StudyInstanceUID, "")]
    assert obx["FLAG"][0][1] == triage.flag and obx["PRIORITY"][0][1] == triage.priority
    probabilities = {key: float(value) for key, value, _ in obx["PROB"]}
    assert probabilities == pytest.approx(summary["class_probabilities"], abs=1e-4)
    assert float(obx["LESVOL"][0][1]) == pytest.approx(summary["total_lesion_volume_ml"],
                                                        abs=0.05)
    assert obx["LESVOL"][0][2] == "mL" and obx["LUNGINV"][0][2] == "%"
    total = next(i for i in summary["involvement"] if i["region"] == "total")
    assert float(obx["LUNGINV"][0][1]) == pytest.approx(total["percent"], abs=0.05)
    assert obx["SUMMARY"][0][1] == triage.text
    assert all(str(s(11)) == "F" for s in message.segments("OBX"))
    # INFO log: control id, job and study UID; no patient data
    sent = [r.getMessage() for r in caplog.records if "sent, ACK AA" in r.getMessage()]
    assert sent and queued.control_id in sent[0] and header.StudyInstanceUID in sent[0]
    assert f"job {job.id}" in sent[0]
    assert header.PatientID not in caplog.text and "PHANTOM^COVID19" not in caplog.text


def test_rejected_and_failed_jobs_are_triaged_not_analysed_and_reported(
    tmp_path: Path, db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
    processor: SeriesProcessor,
) -> None:
    irregular = chest_datasets()
    del irregular[10]
    rejected = queue(db_factory, stores[0], irregular)
    with MLLPListener() as listener:
        ris = destination(listener.port)
        recorder = TriageRecorder(TriageRules(not_analysed_priority="high"), [ris])
        done = Worker("w1", db_factory, processor, *stores, triage=recorder).run_one()
        assert done is not None and done.state is JobState.REJECTED
        # a result folder that cannot be created: the job fails
        broken = tmp_path / "broken"
        broken.write_text("a file where the result folder should be")
        failed = queue(db_factory, stores[0], chest_datasets(seed=4))
        done = Worker("w2", db_factory, processor, stores[0], ResultStore(broken),
                      triage=recorder).run_one()
        assert done is not None and done.state is JobState.FAILED
        with db_factory() as session:
            triages = {job.id: get_triage(session, job.id) for job in (rejected, failed)}
            reasons = {job.id: jobs_for_series(session, job.series_instance_uid)[-1].reason
                       for job in (rejected, failed)}
        for job_id, triage in triages.items():
            assert triage is not None
            assert triage.flag == f"not analysed: {reasons[job_id]}"[:128]
            assert (triage.priority, triage.rank, triage.rule) == ("high", 2, "not-analysed")
        sender = HL7Sender(db_factory, destinations=[ris], policy=FAST_RETRY)
        send_all(sender, rejected.id, db_factory)
        send_all(sender, failed.id, db_factory)
        texts = listener.messages()
    assert len(texts) == 2
    for text in texts:
        obx = observations(parsed(text))
        assert obx["FLAG"][0][1].startswith("not analysed: ")
        assert obx["PRIORITY"][0][1] == "high"
        assert "PROB" not in obx and "LESVOL" not in obx


def test_watcher_rejection_is_triaged_without_an_hl7_message(
    db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
) -> None:
    job = receive(db_factory, stores[0], chest_datasets()[:5])  # 5 slices < 20
    with db_factory.begin() as session:
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=job.created_at)
    recorder = TriageRecorder(TriageRules(), [destination(free_port())])
    watcher = SeriesWatcher(db_factory, stores[0], quiet_time=1.0, rules=SelectionRules(),
                            uid_root=DEFAULT_UID_ROOT, triage=recorder)
    decided = watcher.evaluate(job.id)
    assert decided is not None and decided.state is JobState.REJECTED
    with db_factory() as session:
        triage = get_triage(session, job.id)
        assert hl7_messages_for_job(session, job.id) == []
    assert triage is not None and triage.flag == f"not analysed: {decided.reason}"
    assert triage.priority == "routine"


def test_the_nodes_own_output_gets_no_triage(
    db_factory: sessionmaker[Session], stores: tuple[InstanceStore, ResultStore],
) -> None:
    """A series under the node's UID root (its own result coming back) is rejected
    as own output without a triage record: it is not a study to put on a worklist."""
    datasets = chest_datasets()
    for ds in datasets:
        ds.SOPInstanceUID = generate_uid(prefix=DEFAULT_UID_ROOT)
    job = receive(db_factory, stores[0], datasets)
    with db_factory.begin() as session:
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=job.created_at)
    recorder = TriageRecorder(TriageRules(), [destination(free_port())])
    watcher = SeriesWatcher(db_factory, stores[0], quiet_time=1.0, rules=SelectionRules(),
                            uid_root=DEFAULT_UID_ROOT, triage=recorder)
    decided = watcher.evaluate(job.id)
    assert decided is not None and decided.state is JobState.REJECTED
    assert (decided.reason or "").startswith("own output")
    with db_factory() as session:
        assert get_triage(session, job.id) is None
        assert hl7_messages_for_job(session, job.id) == []


# -- ACK handling and retries --------------------------------------------------------------


T0 = datetime(2026, 11, 26, 23, 0, tzinfo=timezone.utc)
SUMMARY: dict[str, Any] = {
    "predicted_class": "covid19",
    "class_probabilities": {"covid19": 0.9, "cap": 0.07, "no_pneumonia": 0.03},
    "total_lesion_volume_ml": 42.25,
    "involvement": [{"region": "total", "lung_volume_ml": 4000.0, "lesion_volume_ml": 42.25,
                     "percent": 1.06}],
}


def triaged_job(factory: sessionmaker[Session], ris: HL7Destination, n: int = 1) -> int:
    """A job with its triage and one queued message, committed."""
    study = "1.2.826.0.1.3680043.8.498.55"
    with factory.begin() as session:
        job = record_instance(session, InstanceAttributes(
            study_instance_uid=study, series_instance_uid=f"{study}.{n}",
            sop_instance_uid=f"{study}.{n}.1", sop_class_uid=str(CTImageStorage),
            file_path=f"a/{n}.dcm", sha256="0" * 64, size=1, patient_id="P-1",
            patient_name="Doe^Jane", accession_number="A1",
        ), T0).job
        TriageRecorder(TriageRules(), [ris]).record_result(session, job.id, SUMMARY,
                                                           datetime.now(timezone.utc))
        return job.id


def only_message(factory: sessionmaker[Session], job_id: int) -> Any:
    with factory() as session:
        (message,) = hl7_messages_for_job(session, job_id)
    return message


def test_job_study_uids_reads_the_uid_of_each_job_in_one_query(
    db_factory: sessionmaker[Session],
) -> None:
    """The sender's log lines name the study by UID; the lookup reads nothing else."""
    ris = destination(1)
    first, second = triaged_job(db_factory, ris, 1), triaged_job(db_factory, ris, 2)
    with db_factory() as session:
        assert job_study_uids(session, {first, second, 999}) == {
            first: "1.2.826.0.1.3680043.8.498.55", second: "1.2.826.0.1.3680043.8.498.55"}
        assert job_study_uids(session, set()) == {}


@pytest.mark.parametrize("bad", ["AE", "AR", "CE", "WRONG-ID", "GARBLED", "CLOSE"])
def test_a_refused_or_unusable_ack_is_retried_then_sent_on_a_later_aa(
    db_factory: sessionmaker[Session], bad: str,
) -> None:
    with MLLPListener(answers=[bad]) as listener:
        ris = destination(listener.port)
        job_id = triaged_job(db_factory, ris)
        sender = HL7Sender(db_factory, destinations=[ris], policy=FAST_RETRY)
        assert sender.poll_once() == 1
        first = only_message(db_factory, job_id)
        assert (first.state, first.attempt_count) == (HL7MessageState.PENDING, 1)
        assert first.next_attempt_at is not None and first.last_error
        assert first.ack_code == (bad if bad in ("AE", "AR", "CE") else
                                  "AA" if bad == "WRONG-ID" else None)
        send_all(sender, job_id, db_factory)
        texts = listener.messages()
    sent = only_message(db_factory, job_id)
    assert (sent.state, sent.attempt_count, sent.ack_code, sent.last_error) == (
        HL7MessageState.SENT, 2, "AA", None)
    assert len(texts) == 2 and texts[0] == texts[1]  # the same message, same control id


def test_attempts_exhausted_mark_the_message_failed(db_factory: sessionmaker[Session]) -> None:
    with MLLPListener(answers=["AR", "AR", "AA"]) as listener:
        ris = destination(listener.port)
        job_id = triaged_job(db_factory, ris)
        sender = HL7Sender(db_factory, destinations=[ris], policy=RetryPolicy(
            max_attempts=2, initial_backoff=0.05, max_backoff=0.05))
        wait_until(lambda: sender.poll_once() == 0 and
                   only_message(db_factory, job_id).state is HL7MessageState.FAILED,
                   10, "message failed")
        assert len(listener.messages()) == 2
    failed = only_message(db_factory, job_id)
    assert (failed.attempt_count, failed.ack_code, failed.next_attempt_at) == (2, "AR", None)


def test_listener_down_leaves_the_message_pending_with_backoff_until_it_comes_up(
    db_factory: sessionmaker[Session],
) -> None:
    port = free_port()
    ris = destination(port)
    job_id = triaged_job(db_factory, ris)
    policy = RetryPolicy(max_attempts=None, initial_backoff=0.3, max_backoff=0.6)
    sender = HL7Sender(db_factory, destinations=[ris], policy=policy)
    before = datetime.now(timezone.utc)
    assert sender.poll_once() == 1
    after = datetime.now(timezone.utc)
    down = only_message(db_factory, job_id)
    assert (down.state, down.attempt_count) == (HL7MessageState.PENDING, 1)
    assert "cannot connect" in down.last_error
    first_delay = timedelta(seconds=0.3)
    assert down.next_attempt_at is not None
    assert before + first_delay <= down.next_attempt_at <= after + first_delay
    assert sender.poll_once() == 0  # not due before the backoff
    time.sleep(0.35)
    before = datetime.now(timezone.utc)
    assert sender.poll_once() == 1  # second attempt, still down: the delay doubles
    after = datetime.now(timezone.utc)
    second = only_message(db_factory, job_id)
    assert second.attempt_count == 2 and second.state is HL7MessageState.PENDING
    assert second.next_attempt_at is not None
    assert before + 2 * first_delay <= second.next_attempt_at <= after + 2 * first_delay
    with MLLPListener(port=port) as listener:
        send_all(sender, job_id, db_factory)
        (text,) = listener.messages()
    assert str(parsed(text).segment("MSH")(10)) == second.control_id
    assert only_message(db_factory, job_id).attempt_count == 3


def test_a_crash_while_waiting_for_the_ack_loses_nothing(tmp_path: Path) -> None:
    """A process that queued a message is killed while waiting for its ACK; a new
    process (here: a new engine and sender on the same database) sends it."""
    url = f"sqlite:///{tmp_path / 'node.sqlite3'}"
    with MLLPListener(answers=["HANG"]) as listener:
        script = textwrap.dedent(f"""
            from config import HL7Destination, RetryPolicy
            from pacs_node.hl7.sender import HL7Sender
            from storage import create_database_engine, make_session_factory, upgrade_database
            from tests.test_hl7 import triaged_job
            engine = create_database_engine({url!r})
            upgrade_database(engine)
            factory = make_session_factory(engine)
            ris = HL7Destination("ris", "127.0.0.1", {listener.port}, "RIS", timeout=60.0)
            print(triaged_job(factory, ris), flush=True)
            HL7Sender(factory, destinations=[ris], policy=RetryPolicy()).poll_once()
        """)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
        child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            job_id = int(child.stdout.readline())
            wait_until(lambda: listener.messages(), 30, "the message to arrive")
        finally:
            child.kill()  # SIGKILL: no cleanup, no attempt recorded
            child.wait(10)
        engine = create_database_engine(url)
        try:
            factory = make_session_factory(engine)
            pending = only_message(factory, job_id)
            assert (pending.state, pending.attempt_count) == (HL7MessageState.PENDING, 0)
            ris = destination(listener.port)
            send_all(HL7Sender(factory, destinations=[ris], policy=FAST_RETRY), job_id, factory)
            texts = listener.messages()
        finally:
            engine.dispose()
    assert len(texts) == 2 and texts[0] == texts[1]


def test_unconfigured_destination_is_an_attempt_that_failed(
    db_factory: sessionmaker[Session],
) -> None:
    job_id = triaged_job(db_factory, destination(free_port(), name="old-ris"))
    sender = HL7Sender(db_factory, destinations=[destination(free_port())], policy=FAST_RETRY)
    assert sender.poll_once() == 1
    message = only_message(db_factory, job_id)
    assert message.state is HL7MessageState.PENDING
    assert message.last_error == "HL7 destination 'old-ris' is not configured"


# -- the message itself ---------------------------------------------------------------------


def test_free_text_is_escaped_and_parses_back() -> None:
    nasty = "a|b^c&d~e\\f\r\nnext"
    assert escape(nasty) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f  next"
    context = HL7StudyContext(
        job_id=7, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
        accession_number="X|1", patient_id="ID^7&", patient_name="O'Brien^Seán=ideo",
        study_date="20260101", study_description=None, modality="CT",
    )
    decision = TriageDecision("flag|with^delims", "urgent", "r", nasty)
    text = build_oru_r01(destination=destination(1), context=context, decision=decision,
                         summary=None, control_id="C1", now=T0)
    assert "\n" not in text and text.count("\r") == len(text.split("\r")) - 1
    message = parsed(text)
    assert [str(s(0)) for s in message] == ["MSH", "PID", "ORC", "OBR", "NTE", "TQ1", "OBX",
                                            "OBX", "OBX", "OBX"]
    assert comp(message.segment("TQ1"), 9, 1) == "S"  # urgent: Stat (HL7 table 0027)
    pid = message.segment("PID")
    assert message.unescape(comp(pid, 3, 1)) == "ID^7&"
    assert (comp(pid, 5, 1), comp(pid, 5, 2)) == ("O'Brien", "Seán")
    obx = observations(message)
    assert obx["FLAG"][0][1] == "flag|with^delims"
    assert obx["SUMMARY"][0][1] == "a|b^c&d~e\\f  next"
    assert message.unescape(str(message.segment("OBR")(2))) == "X|1"
    assert str(message.segment("MSH")(7)) == "20261126230000+0000"
    assert str(message.segment("MSH")(18)) == "UNICODE UTF-8"


# -- the node: C-STORE in, ORU^R01 out ------------------------------------------------------


def test_node_sends_an_oru_for_a_series_it_processed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datasets = chest_datasets()
    for ds in datasets:
        ds.AccessionNumber = "ACC-42"
    paths = write_datasets(tmp_path / "ct", datasets)
    with MLLPListener(answers=["AE"]) as listener:  # the first attempt is refused
        settings = node_settings(
            tmp_path, model_dir=tiny_model(tmp_path / "model"), port=free_port(),
            initial_backoff=0.1, max_backoff=0.2,
            hl7_destinations=(destination(listener.port),),
            triage=TriageRules(rules=(*DEFAULT_TRIAGE_RULES,
                                      TriageRule("tumour", "tumour", "high", class_key="tumour"))),
        )
        with caplog.at_level(logging.WARNING, logger="pacs_node"):
            node = Node(settings, intra_op_threads=1).start()
        try:
            assert "triage rules name class(es) tumour that model" in caplog.text
            report = scu.send(Destination("node", "DEEPSC", "127.0.0.1", node.port), paths,
                              calling_ae="MODALITY")
            assert report.ok
            assert node.wait_idle(60)
            texts = wait_until(lambda: listener.messages()[1:], 30, "the retried ORU")
            factory = node.session_factory
            assert factory is not None
            with factory() as session:
                (job,) = jobs_for_series(session, str(datasets[0].SeriesInstanceUID))
                triage = get_triage(session, job.id)
            wait_until(lambda: only_message(factory, job.id).state is HL7MessageState.SENT,
                       10, "message sent")
        finally:
            node.stop()
    assert triage is not None and job.state is JobState.EXPORTED
    message = parsed(texts[0])
    assert comp(message.segment("OBR"), 2) == "ACC-42"
    assert comp(message.segment("PID"), 3) == datasets[0].PatientID
    obx = observations(message)
    assert obx["113014"][0][1] == datasets[0].StudyInstanceUID
    assert (obx["FLAG"][0][1], obx["PRIORITY"][0][1]) == (triage.flag, triage.priority)


def test_a_message_superseded_while_being_sent_records_nothing(
    db_factory: sessionmaker[Session],
) -> None:
    with MLLPListener() as listener:
        ris = destination(listener.port)
        job_id = triaged_job(db_factory, ris)
        old = only_message(db_factory, job_id)
        with db_factory.begin() as session:  # the job was retried and triaged again
            TriageRecorder(TriageRules(), [ris]).record_not_analysed(
                session, job_id, "model crashed", datetime.now(timezone.utc))
        sender = HL7Sender(db_factory, destinations=[ris], policy=FAST_RETRY)
        assert sender.send_one(old) is None
        assert sender.poll_once() == 1
        texts = listener.messages()
    with db_factory() as session:
        states = [(m.control_id == old.control_id, m.state, m.attempt_count)
                  for m in hl7_messages_for_job(session, job_id)]
    assert states == [(True, HL7MessageState.FAILED, 0), (False, HL7MessageState.SENT, 1)]
    assert len(texts) == 2  # the stale one went out once, unrecorded; the new one was sent
    assert "not analysed: model crashed" in texts[1]
