"""Tests of storage.models and storage.db: migrations, constraints, engines."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, String, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from storage import JobState, current_revision, downgrade_database, head_revision, upgrade_database
from storage.db import MIGRATIONS_DIR, create_database_engine, dispose_engines, get_engine
from storage.models import Base, InstanceRow, JobRow, ResultRow, SeriesRow, StudyRow


NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


class TestMigrations:
    def test_upgrade_head_matches_models_and_downgrade_works(
        self, fresh_engine_factory: Callable[[], Engine]
    ) -> None:
        engine = fresh_engine_factory()
        assert _tables(engine) == set()
        assert current_revision(engine) is None

        upgrade_database(engine)
        assert current_revision(engine) == head_revision()
        assert _tables(engine) == set(Base.metadata.tables) | {"alembic_version"}
        assert _diff(engine) == []

        downgrade_database(engine, "base")
        assert _tables(engine) == {"alembic_version"}
        assert current_revision(engine) is None

        upgrade_database(engine)  # and back up again
        assert _diff(engine) == []

    def test_upgrade_is_idempotent(self, fresh_engine_factory: Callable[[], Engine]) -> None:
        engine = fresh_engine_factory()
        upgrade_database(engine)
        upgrade_database(engine)
        assert current_revision(engine) == head_revision()

    def test_scripts_live_inside_the_package(self) -> None:
        import storage

        package_dir = Path(storage.__file__).parent
        assert MIGRATIONS_DIR == package_dir / "migrations"
        assert (MIGRATIONS_DIR / "env.py").is_file()
        assert (MIGRATIONS_DIR / "script.py.mako").is_file()
        assert list((MIGRATIONS_DIR / "versions").glob("*.py"))

    def test_revisions_do_not_import_the_models(self) -> None:
        # A revision is a snapshot; importing storage.models would change it later.
        for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
            imports = [
                line
                for line in script.read_text().splitlines()
                if line.lstrip().startswith(("import ", "from "))
            ]
            assert imports, script.name
            assert not [line for line in imports if "storage" in line], script.name
            assert "storage." not in script.read_text().split('"""', 2)[2], script.name


class TestSchema:
    def test_uid_columns_are_string64_with_dicom_comment(self) -> None:
        uid_columns = [
            column
            for table in Base.metadata.tables.values()
            for column in table.columns
            if column.name.endswith("_uid")
        ]
        assert len(uid_columns) >= 10
        for column in uid_columns:
            assert isinstance(column.type, String) and column.type.length == 64, column
            assert column.comment and "VR UI" in column.comment, column

    def test_naming_convention(self) -> None:
        names = {
            constraint.name
            for table in Base.metadata.tables.values()
            for constraint in table.constraints
        }
        assert "pk_jobs" in names
        assert "uq_instances_sop_instance_uid" in names
        assert "fk_instances_series_id_series" in names
        assert "ck_jobs_job_state" in names


def _study_series(session: Session) -> SeriesRow:
    study = StudyRow(study_instance_uid="1.2.3", created_at=NOW, updated_at=NOW)
    session.add(study)
    session.flush()
    series = SeriesRow(
        study_id=study.id,
        series_instance_uid="1.2.3.4",
        instance_count=0,
        first_received_at=NOW,
        last_received_at=NOW,
    )
    session.add(series)
    session.flush()
    return series


def _instance(series_id: int, sop_uid: str) -> InstanceRow:
    return InstanceRow(
        series_id=series_id,
        sop_instance_uid=sop_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        file_path="x.dcm",
        sha256="0" * 64,
        size=1,
        received_at=NOW,
    )


class TestConstraints:
    def test_unique_sop_instance_uid(self, db_session: Session) -> None:
        series = _study_series(db_session)
        db_session.add(_instance(series.id, "1.2.3.4.5"))
        db_session.flush()
        with pytest.raises(IntegrityError), db_session.begin_nested():
            db_session.add(_instance(series.id, "1.2.3.4.5"))
            db_session.flush()

    def test_foreign_keys_enforced(self, db_session: Session) -> None:
        with pytest.raises(IntegrityError), db_session.begin_nested():
            db_session.add(_instance(999_999, "1.2.3.4.6"))
            db_session.flush()

    def test_state_check_constraint(self, db_session: Session) -> None:
        series = _study_series(db_session)
        with pytest.raises(IntegrityError), db_session.begin_nested():
            db_session.execute(
                text(
                    "INSERT INTO jobs (series_id, state, created_at, updated_at, run_count) "
                    "VALUES (:series, 'bogus', :now, :now, 0)"
                ),
                {"series": series.id, "now": NOW.replace(tzinfo=None)},
            )

    def test_times_come_back_aware_utc(self, db_session: Session) -> None:
        series = _study_series(db_session)
        local = NOW.astimezone(timezone(timedelta(hours=2)))
        job = JobRow(
            series_id=series.id,
            state=JobState.RECEIVED,
            created_at=local,
            updated_at=local,
            run_count=0,
        )
        db_session.add(job)
        db_session.flush()
        db_session.expire_all()
        stored = db_session.scalars(select(JobRow).where(JobRow.id == job.id)).one()
        assert stored.created_at == NOW
        assert stored.created_at.tzinfo is not None
        assert stored.created_at.utcoffset() == timedelta(0)
        assert stored.state is JobState.RECEIVED

    def test_naive_time_refused(self, db_session: Session) -> None:
        series = _study_series(db_session)
        job = JobRow(
            series_id=series.id,
            state=JobState.RECEIVED,
            created_at=datetime(2024, 1, 1),
            updated_at=NOW,
            run_count=0,
        )
        db_session.add(job)
        with pytest.raises(StatementError, match="timezone-aware"):
            db_session.flush()
        db_session.rollback()

    def test_json_summary_round_trip(self, db_session: Session) -> None:
        series = _study_series(db_session)
        job = JobRow(
            series_id=series.id, state=JobState.WRITTEN, created_at=NOW, updated_at=NOW, run_count=1
        )
        db_session.add(job)
        db_session.flush()
        summary = {"probabilities": {"covid19": 0.7, "cap": 0.2, "normal": 0.1}, "lesions": [1, 2]}
        db_session.add(ResultRow(job_id=job.id, summary=summary, created_at=NOW))
        db_session.flush()
        db_session.expire_all()
        assert db_session.scalars(select(ResultRow.summary)).one() == summary


class TestEngines:
    def test_sqlite_pragmas(self, tmp_path: Path) -> None:
        engine = create_database_engine(f"sqlite:///{tmp_path / 'sub' / 'x.sqlite3'}")
        try:
            with engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
                assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert (tmp_path / "sub" / "x.sqlite3").is_file()
        finally:
            engine.dispose()

    def test_sqlite_savepoints(self, tmp_path: Path) -> None:
        engine = create_database_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
        try:
            upgrade_database(engine)
            with engine.connect() as connection:
                outer = connection.begin()
                session = Session(bind=connection, join_transaction_mode="create_savepoint")
                session.add(StudyRow(study_instance_uid="1.2", created_at=NOW, updated_at=NOW))
                session.commit()  # releases a savepoint only
                session.close()
                outer.rollback()
            with Session(engine) as session:
                assert session.scalars(select(StudyRow)).all() == []
        finally:
            engine.dispose()

    def test_one_engine_per_url(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'cached.sqlite3'}"
        try:
            assert get_engine(url) is get_engine(url)
        finally:
            dispose_engines()
        assert get_engine(url) is not None
        dispose_engines()

    def test_upgrade_by_url(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'by-url.sqlite3'}"
        try:
            upgrade_database(url)
            assert current_revision(get_engine(url)) == head_revision()
        finally:
            dispose_engines()
