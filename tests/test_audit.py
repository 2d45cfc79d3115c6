"""The audit trail: the ``associations`` table, its migration, the SCP's rows, ``audit``.

Migration and repository tests run on SQLite and on the local PostgreSQL
(``tests.storage_fixtures``). The SCP tests make real associations from a
pynetdicom SCU and check the rows the node writes: accepted and released
with C-STORE counts, rejected with the reason, aborted.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from config import Destination
from pacs_node.ae import build_ae, start_scp, stop_scp
from pacs_node.audit import AssociationAudit
from storage import (
    AssociationOutcome,
    JobState,
    NotFoundError,
    ResultObjectSpec,
    claim_next_job,
    current_revision,
    downgrade_database,
    due_exports,
    finish_association,
    recent_associations,
    recent_result_sends,
    record_association,
    record_export_attempt,
    record_instance,
    record_results,
    transition_job,
    upgrade_database,
)
from storage.models import Base
from storage.records import InstanceAttributes
from tests.dicom_fixtures import DirectoryReceiver, make_ct_dataset
from tests.node_fixtures import migrated_database, wait_until
from tests.peers import free_port

T0 = datetime(2026, 11, 26, 20, 0, tzinfo=timezone.utc)
NODE_AE = "DEEPSC"
REPO_ROOT = Path(__file__).resolve().parent.parent


# -- migration --------------------------------------------------------------------------


def test_migration_0002_upgrades_and_downgrades(
    fresh_engine_factory: Callable[[], Engine],
) -> None:
    engine = fresh_engine_factory()
    upgrade_database(engine, "0001")
    assert "associations" not in inspect(engine).get_table_names()
    upgrade_database(engine, "0002")
    assert current_revision(engine) == "0002"
    columns = {c["name"] for c in inspect(engine).get_columns("associations")}
    assert {"calling_ae_title", "called_ae_title", "peer_address", "peer_port", "tls",
            "started_at", "ended_at", "outcome", "reason", "instances_stored",
            "instances_warning", "instances_refused"} <= columns
    upgrade_database(engine)  # head: the models describe every revision together
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert list(compare_metadata(context, Base.metadata)) == []
    downgrade_database(engine, "0001")
    assert "associations" not in inspect(engine).get_table_names()
    assert current_revision(engine) == "0001"


# -- repository ---------------------------------------------------------------------------


def test_record_finish_and_query_associations(db_session: Session) -> None:
    accepted = record_association(
        db_session, peer_address="10.0.0.7", peer_port=40001, started_at=T0,
        outcome="accepted", calling_ae_title="ORTHANC", called_ae_title=NODE_AE, tls=True,
        tls_peer="CN=orthanc",
    )
    record_association(
        db_session, peer_address="10.0.0.8", peer_port=40002,
        started_at=T0 + timedelta(seconds=1), ended_at=T0 + timedelta(seconds=1),
        outcome=AssociationOutcome.REJECTED, calling_ae_title="INTRUDER" + "X" * 20,
        called_ae_title=NODE_AE, reason="calling AE title 'INTRUDER' is not in the allow-list",
    )
    record = finish_association(
        db_session, accepted, ended_at=T0 + timedelta(seconds=5), outcome="released",
        counts=(30, 1, 2),
    )
    assert (record.outcome, record.instances_stored, record.instances_warning,
            record.instances_refused) == (AssociationOutcome.RELEASED, 30, 1, 2)
    assert record.ended_at == T0 + timedelta(seconds=5) and record.tls_peer == "CN=orthanc"
    newest_first = recent_associations(db_session, 10)
    assert [r.peer_address for r in newest_first][:2] == ["10.0.0.8", "10.0.0.7"]
    assert newest_first[0].calling_ae_title == "INTRUDERXXXXXXXX"  # clipped to 16
    rejected = recent_associations(db_session, 10, outcome="rejected")
    assert [r.peer_port for r in rejected] == [40002]
    assert recent_associations(db_session, 10, calling_ae_title="ORTHANC")[0].id == accepted
    with pytest.raises(NotFoundError):
        finish_association(db_session, 10**9, ended_at=T0, outcome="aborted", counts=(0, 0, 0))
    with pytest.raises(ValueError, match='"counts"'):
        finish_association(db_session, accepted, ended_at=T0, outcome="aborted", counts=(-1, 0, 0))
    with pytest.raises(ValueError):
        record_association(db_session, peer_address="x", peer_port=1, started_at=T0,
                           outcome="maybe")


def test_results_sent_come_from_the_export_attempts(db_session: Session) -> None:
    series = "1.2.826.0.1.3680043.8.498.77.1"
    job = record_instance(db_session, InstanceAttributes(
        study_instance_uid="1.2.826.0.1.3680043.8.498.77",
        series_instance_uid=series, sop_instance_uid=f"{series}.1",
        sop_class_uid=str(CTImageStorage), file_path="a/b/c.dcm", sha256="0" * 64, size=10,
    ), T0).job
    transition_job(db_session, job.id, JobState.COMPLETE, now=T0)
    transition_job(db_session, job.id, JobState.QUEUED, now=T0)
    assert claim_next_job(db_session, "w", T0) is not None
    seg_uid = "2.25.88001"
    record_results(db_session, job.id, [ResultObjectSpec(
        "seg", "1.2.840.10008.5.1.4.1.1.66.4", seg_uid, "2.25.88", "1.2.826.0.1.3680043.8.498.77",
        "r/seg.dcm", "1" * 64, 10,
    )], {}, [Destination("pacs", "ORTHANC", "127.0.0.1", 4242)], T0)
    (due,) = due_exports(db_session, T0)

    class Policy:
        max_attempts = 5
        initial_backoff = 1.0
        max_backoff = 2.0

    record_export_attempt(db_session, due.export_id, started_at=T0, finished_at=T0,
                          success=False, policy=Policy(), error="association rejected")
    later = T0 + timedelta(seconds=3)
    record_export_attempt(db_session, due.export_id, started_at=later, finished_at=later,
                          success=True, policy=Policy(), status_code=0)
    sends = recent_result_sends(db_session, 10)
    assert [(s.attempt_number, s.success, s.error) for s in sends] == [
        (2, True, None), (1, False, "association rejected")
    ]
    assert all(s.destination == "pacs" and s.sop_instance_uid == seg_uid and s.kind == "seg"
               and s.job_id == job.id for s in sends)


# -- the SCP writes the rows ----------------------------------------------------------------


@pytest.fixture
def audited_scp(tmp_path: Path) -> Iterator[tuple[int, sessionmaker[Session]]]:
    """An SCP allowing only SCU / SLOW, with the audit in a migrated SQLite database."""
    with migrated_database(tmp_path) as sessions:
        ae = build_ae(NODE_AE, allowed_calling_aes=["SCU", "SLOW"], acse_timeout=5,
                      dimse_timeout=5, network_timeout=5)
        port = free_port()
        server = start_scp(ae, "127.0.0.1", port, DirectoryReceiver(tmp_path / "store"),
                           audit=AssociationAudit(sessions))
        try:
            yield port, sessions
        finally:
            stop_scp(server, timeout=2.0)


def _scu(calling: str) -> AE:
    ae = AE(calling)
    ae.acse_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae


def test_scp_audits_accepted_rejected_and_aborted_associations(
    audited_scp: tuple[int, sessionmaker[Session]],
) -> None:
    port, sessions = audited_scp
    before = datetime.now(timezone.utc)
    assoc = _scu("SCU").associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    local_port = assoc.requestor.port
    good = make_ct_dataset()
    bad = make_ct_dataset()
    # Invalid (leading zero) -> 0xA900; set without pydicom's validation warning.
    bad[0x0020000E] = DataElement(0x0020000E, "UI", "1.2.03", validation_mode=config.IGNORE)
    assert assoc.send_c_store(good).Status == 0
    assert assoc.send_c_store(bad).Status == 0xA900
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    rejected = _scu("INTRUDER").associate("127.0.0.1", port, ae_title=NODE_AE)
    assert rejected.is_rejected
    wrong_called = _scu("SCU").associate("127.0.0.1", port, ae_title="NOT_US")
    assert wrong_called.is_rejected
    aborted = _scu("SLOW").associate("127.0.0.1", port, ae_title=NODE_AE)
    assert aborted.is_established
    aborted.abort()

    def rows() -> list:
        with sessions() as session:
            found = recent_associations(session, 10)
        return found if len(found) == 4 and all(r.ended_at for r in found) else []

    released, intruder, called, slow = sorted(wait_until(rows, 5, "4 audit rows"),
                                              key=lambda r: r.id)
    after = datetime.now(timezone.utc)
    assert (released.outcome, released.calling_ae_title, released.called_ae_title) == (
        AssociationOutcome.RELEASED, "SCU", NODE_AE)
    assert (released.peer_address, released.peer_port, released.tls) == (
        "127.0.0.1", local_port, False)
    assert (released.instances_stored, released.instances_warning,
            released.instances_refused) == (1, 0, 1)
    assert before <= released.started_at <= released.ended_at <= after  # type: ignore[operator]
    assert intruder.outcome is AssociationOutcome.REJECTED
    assert intruder.reason == "calling AE title 'INTRUDER' is not in the allow-list"
    assert called.outcome is AssociationOutcome.REJECTED and called.called_ae_title == "NOT_US"
    assert "called AE title 'NOT_US' is not ours" in (called.reason or "")
    assert slow.outcome is AssociationOutcome.ABORTED and slow.calling_ae_title == "SLOW"
    # Nothing from the data sets (patient name/ID) is in the audit rows.
    text = json.dumps([r.__dict__ for r in (released, intruder, called, slow)], default=str)
    assert str(good.PatientName) not in text and str(good.PatientID) not in text


def test_audit_command_lists_the_associations(
    audited_scp: tuple[int, sessionmaker[Session]], tmp_path: Path,
) -> None:
    port, sessions = audited_scp
    assert _scu("INTRUDER").associate("127.0.0.1", port, ae_title=NODE_AE).is_rejected
    assoc = _scu("SCU").associate("127.0.0.1", port, ae_title=NODE_AE)
    assoc.release()
    wait_until(lambda: len(_rows(sessions)) == 2 and all(r.ended_at for r in _rows(sessions)),
               5, "two rows")
    url = f"sqlite:///{tmp_path / 'node.sqlite3'}"
    command = [sys.executable, "-m", "pacs_node", "audit", "--database-url", url]
    text = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert text.returncode == 0, text.stderr
    assert "rejected" in text.stdout and "INTRUDER" in text.stdout
    assert "calling AE title 'INTRUDER' is not in the allow-list" in text.stdout
    assert "released" in text.stdout and "no results sent" in text.stdout
    as_json = subprocess.run([*command, "--json", "--outcome", "rejected"],
                             capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    data = json.loads(as_json.stdout)
    assert [a["calling_ae_title"] for a in data["associations"]] == ["INTRUDER"]
    assert data["associations"][0]["peer_address"] == "127.0.0.1"
    missing = subprocess.run(
        [sys.executable, "-m", "pacs_node", "audit", "--database-url",
         f"sqlite:///{tmp_path / 'none.sqlite3'}"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert missing.returncode == 1 and "no database" in missing.stderr


def _rows(sessions: sessionmaker[Session]) -> list:
    with sessions() as session:
        return recent_associations(session, 10)



def test_the_audit_command_offers_every_association_outcome() -> None:
    from pacs_node.commands.audit import OUTCOMES

    assert OUTCOMES == tuple(outcome.value for outcome in AssociationOutcome)
