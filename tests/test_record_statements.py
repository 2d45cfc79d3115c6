"""``record_instance`` inserts the study and series rows only when they are missing (issue 6).

Every instance but a series' first finds its study and series: the
repository looks them up and skips the ``INSERT ... ON CONFLICT DO NOTHING``
statements (about 0.7 ms of the 3.4 ms of SQL per instance, measured by
``bench/receive.py``). These tests pin that down on SQLite and PostgreSQL
with the statements actually sent, and check that the rows, counts and jobs
are what they were, including two associations recording the first
instances of one new series at the same moment.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from storage import (
    JobAction,
    make_session_factory,
    record_instance,
    upgrade_database,
)
from storage.models import InstanceRow, JobRow, SeriesRow, StudyRow
from tests.test_storage_repository import SERIES, STUDY, T0, _instance

OTHER_SERIES = "1.2.826.0.1.3680043.8.498.10.2"


@contextmanager
def inserts_into(bind: Any) -> Iterator[list[str]]:
    """Names of the tables each INSERT sent on `bind` writes to (lower case)."""
    tables: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        if len(words) > 2 and words[0].upper() == "INSERT" and words[1].upper() == "INTO":
            tables.append(words[2].strip('"').lower())

    event.listen(bind, "before_cursor_execute", before)
    try:
        yield tables
    finally:
        event.remove(bind, "before_cursor_execute", before)


def test_study_and_series_are_inserted_once_then_only_looked_up(db_session: Session) -> None:
    bind = db_session.connection()
    with inserts_into(bind) as first:
        recorded = record_instance(db_session, _instance(1), T0)
    assert recorded.job_action is JobAction.CREATED
    assert "studies" in first and "series" in first and "instances" in first

    with inserts_into(bind) as second:
        recorded = record_instance(db_session, _instance(2), T0)
    assert recorded.job_action is JobAction.EXTENDED
    assert recorded.series_instance_count == 2
    assert "studies" not in second and "series" not in second
    assert second.count("instances") == 1

    # A new series of the same study: its series row, not a second study.
    with inserts_into(bind) as third:
        other = record_instance(
            db_session, _instance(1, series=OTHER_SERIES, patient_name="Other^Name"), T0
        )
    assert other.job_action is JobAction.CREATED and other.job.id != recorded.job.id
    assert "studies" not in third and "series" in third

    assert db_session.scalar(select(func.count()).select_from(StudyRow)) == 1
    assert db_session.scalar(select(StudyRow.patient_name)) == "Doe^Jane"  # the first one's
    counts = dict(db_session.execute(
        select(SeriesRow.series_instance_uid, SeriesRow.instance_count)
    ).all())
    assert counts == {SERIES: 2, OTHER_SERIES: 1}


def test_two_associations_starting_one_new_series_make_one_study_series_and_job(
    fresh_engine_factory: Callable[[], Engine],
) -> None:
    engine = fresh_engine_factory()
    upgrade_database(engine)
    factory = make_session_factory(engine)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def deliver(number: int) -> None:
        try:
            start.wait(timeout=30)
            with factory.begin() as session:
                record_instance(session, _instance(number), T0)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(StudyRow)) == 1
        assert session.scalar(select(func.count()).select_from(SeriesRow)) == 1
        assert session.scalar(select(func.count()).select_from(JobRow)) == 1
        assert session.scalar(select(func.count()).select_from(InstanceRow)) == 4
        assert session.scalar(select(SeriesRow.instance_count)) == 4
        assert session.scalar(select(SeriesRow.series_instance_uid)) == SERIES
        assert session.scalar(select(StudyRow.study_instance_uid)) == STUDY
