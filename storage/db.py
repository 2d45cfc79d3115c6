"""Engines, sessions and schema migrations.

One engine per process and URL: :func:`get_engine` caches it (SQLAlchemy
pools connections per engine; creating one per request defeats that).

SQLite (the default)
    Every connection gets ``journal_mode=WAL`` (readers do not block the
    writer), ``foreign_keys=ON``, ``synchronous=FULL`` (a committed
    transaction survives a power loss) and ``busy_timeout`` (a writer waits
    for the lock instead of failing). Transactions start with
    ``BEGIN IMMEDIATE``: SQLite allows one writer, and taking the write lock
    at the start makes a second writer wait in the busy handler rather than
    fail with "database is locked" when it upgrades a read transaction.
    SAVEPOINTs work (the driver's own transaction handling is switched off).
    A database file gets a pool of one connection
    (:data:`SQLITE_POOL_SIZE`): since every transaction takes the write
    lock, more connections add no concurrency, only waiting in SQLite's busy
    handler, which sleeps up to 100 ms between tries and is unfair. Under 8
    concurrent C-STORE associations that starved single threads for more
    than a second (a C-ECHO took over 1 s; an association stalled past a
    2 s quiet time and its series was processed in two parts). Threads now
    queue for the connection in the pool and the next one wakes as soon as
    it is returned (``pool_timeout`` = the busy timeout). Other processes
    (``deepsc-node status``) still meet the busy handler.
PostgreSQL (production)
    ``postgresql+psycopg2://...`` with ``pool_pre_ping``. Claiming jobs uses
    ``SELECT ... FOR UPDATE SKIP LOCKED``.
Migrations
    The Alembic scripts live in ``storage/migrations`` inside the package;
    the node calls :func:`upgrade_database` at start-up. A developer makes
    a new revision with ``alembic -c storage/migrations/alembic.ini -x
    url=sqlite:////tmp/dev.sqlite3 revision --autogenerate -m "..."`` on a
    database at head, then reviews it (SQLite needs batch operations, which
    ``env.py`` turns on).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

LOGGER = logging.getLogger(__name__)

__all__ = [
    "MIGRATIONS_DIR",
    "create_database_engine",
    "current_revision",
    "dispose_engines",
    "downgrade_database",
    "get_engine",
    "head_revision",
    "make_alembic_config",
    "make_session_factory",
    "upgrade_database",
]

#: Folder of the Alembic environment and revisions (inside the package).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Milliseconds an SQLite connection waits for a lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: Connections per SQLite database file and engine (see the module docstring).
#: Override with ``create_database_engine(url, pool_size=..., max_overflow=...)``.
SQLITE_POOL_SIZE = 1

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_database_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create a configured engine (prefer :func:`get_engine`, which caches).

    Parameters
    ----------
    url: str | sqlalchemy.engine.URL
        Database URL, e.g. ``sqlite:////var/lib/deepsc/deepsc-node.sqlite3``
        or ``postgresql+psycopg2://user@host/db``.
    **kwargs: Any
        Passed to :func:`sqlalchemy.create_engine` (e.g. ``connect_args``).

    Returns
    -------
    sqlalchemy.Engine
        The engine; SQLite connections are set up as the module docstring
        says. The parent folder of an SQLite file is created.

    Raises
    ------
    sqlalchemy.exc.ArgumentError
        If the URL cannot be parsed.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        if _is_memory_sqlite(parsed):
            kwargs.setdefault("poolclass", StaticPool)
        elif parsed.database:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            if "poolclass" not in kwargs:
                kwargs.setdefault("pool_size", SQLITE_POOL_SIZE)
                kwargs.setdefault("max_overflow", 0)
                kwargs.setdefault("pool_timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        _configure_sqlite(engine, memory=_is_memory_sqlite(parsed))
    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(parsed, **kwargs)
    LOGGER.debug("created engine for %s", parsed.render_as_string(hide_password=True))
    return engine


def _configure_sqlite(engine: Engine, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy (not the driver) emit BEGIN, so SAVEPOINT works.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(url: str | URL) -> Engine:
    """The process-wide engine for `url`, created on first use.

    Raises
    ------
    sqlalchemy.exc.ArgumentError
        If the URL cannot be parsed.
    """
    key = make_url(url).render_as_string(hide_password=False)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = create_database_engine(key)
            _ENGINES[key] = engine
        return engine


def dispose_engines() -> None:
    """Dispose every cached engine (shutdown, or after ``fork``)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Session factory for `engine` (``expire_on_commit=False``).

    Use as ``with factory.begin() as session: ...`` (commit on success,
    rollback on error). Repository functions never commit themselves.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def make_alembic_config(engine_or_url: Engine | str | URL) -> Any:
    """An Alembic ``Config`` for the package's migrations.

    Parameters
    ----------
    engine_or_url: sqlalchemy.Engine | str | sqlalchemy.engine.URL
        The database. An engine is used as is (its connection settings, such
        as a PostgreSQL ``search_path``, apply); a URL goes through
        :func:`get_engine`.

    Returns
    -------
    alembic.config.Config
        With ``script_location`` set and the engine in
        ``config.attributes["engine"]`` for ``migrations/env.py``.
    """
    from alembic.config import Config

    engine = engine_or_url if isinstance(engine_or_url, Engine) else get_engine(engine_or_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade_database(engine_or_url: Engine | str | URL, revision: str = "head") -> None:
    """Bring the schema to `revision` (the node does this at start-up).

    Parameters
    ----------
    engine_or_url: sqlalchemy.Engine | str | sqlalchemy.engine.URL
        The database (see :func:`make_alembic_config`).
    revision: str
        Target revision, default ``"head"``.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        If the database cannot be reached or a migration fails (the
        migration's transaction is rolled back).
    """
    from alembic import command

    config = make_alembic_config(engine_or_url)
    before = current_revision(config.attributes["engine"])
    command.upgrade(config, revision)
    after = current_revision(config.attributes["engine"])
    if before != after:
        LOGGER.info("database schema upgraded from %s to %s", before or "empty", after)


def downgrade_database(engine_or_url: Engine | str | URL, revision: str) -> None:
    """Take the schema back to `revision` (``"base"``: drop every table)."""
    from alembic import command

    command.downgrade(make_alembic_config(engine_or_url), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision of the database (``None``: not under Alembic)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with the package."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    plain = Config()
    plain.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(plain).get_current_head()
    if head is None:  # pragma: no cover - the package ships revisions
        raise RuntimeError("no migration revisions found")
    return head
