"""Database fixtures for the storage tests (SQLite and PostgreSQL).

tests/conftest.py loads them as a plugin.

``db_engine`` is parametrized over SQLite (a file in a temporary folder) and
PostgreSQL (the local server, marked ``postgres``). Each PostgreSQL test
session works in its own uniquely named schema, created and migrated at the
start and dropped at the end, so parallel runs do not collide. PostgreSQL
tests FAIL when the server is unreachable: it is present on CI. Set
``DEEPSC_TEST_POSTGRES_URL`` to use another server.

``db_session`` runs each test inside an outer transaction that is rolled
back at the end (``join_transaction_mode="create_savepoint"``): code under
test may commit, the database is unchanged afterwards.

``fresh_engine_factory`` makes empty databases (SQLite file or new
PostgreSQL schema) for tests that need committed data seen by several
connections (concurrency) or an empty schema (migrations).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from storage.db import create_database_engine, upgrade_database

#: The local PostgreSQL of the development machines and CI.
POSTGRES_URL = os.environ.get(
    "DEEPSC_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _new_schema_name() -> str:
    return f"deepsc_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"


class _PostgresSchemas:
    """Creates engines bound to new schemas and drops the schemas at the end."""

    def __init__(self) -> None:
        self.admin = create_database_engine(POSTGRES_URL)
        with self.admin.connect() as connection:  # fails the test if unreachable
            connection.execute(text("SELECT 1"))
        self.schemas: list[str] = []
        self.engines: list[Engine] = []

    def new_engine(self) -> Engine:
        schema = _new_schema_name()
        with self.admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        self.schemas.append(schema)
        engine = create_database_engine(
            POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"}
        )
        self.engines.append(engine)
        return engine

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()
        with self.admin.begin() as connection:
            for schema in self.schemas:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_schemas() -> Iterator[_PostgresSchemas]:
    """Factory of PostgreSQL engines on fresh schemas (dropped at session end)."""
    schemas = _PostgresSchemas()
    yield schemas
    schemas.close()


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Migrated SQLite file database for the whole session."""
    path = tmp_path_factory.mktemp("sqlite") / "deepsc-node.sqlite3"
    engine = create_database_engine(f"sqlite:///{path}")
    upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_engine(postgres_schemas: _PostgresSchemas) -> Engine:
    """Migrated PostgreSQL schema for the whole session."""
    engine = postgres_schemas.new_engine()
    upgrade_database(engine)
    return engine


@pytest.fixture(params=BACKENDS)
def db_engine(request: pytest.FixtureRequest) -> Engine:
    """A migrated database engine: SQLite, then PostgreSQL."""
    name = "sqlite_engine" if request.param == "sqlite" else "postgres_engine"
    return request.getfixturevalue(name)


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test."""
    with db_engine.connect() as connection:
        transaction = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()


@pytest.fixture(params=BACKENDS)
def fresh_engine_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], Engine]]:
    """Factory of engines on EMPTY databases (not migrated, committed for real)."""
    engines: list[Engine] = []

    if request.param == "sqlite":

        def make() -> Engine:
            engine = create_database_engine(f"sqlite:///{tmp_path / f'db{len(engines)}.sqlite3'}")
            engines.append(engine)
            return engine

    else:
        schemas: _PostgresSchemas = request.getfixturevalue("postgres_schemas")

        def make() -> Engine:
            engine = schemas.new_engine()
            engines.append(engine)
            return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A URL of the local PostgreSQL whose search_path is a fresh schema (dropped after)."""
    schema = f"deepsc_node_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_database_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:  # fails the test if the server is unreachable
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
