"""Alembic environment of the deepsc-node database.

Run by :func:`storage.db.upgrade_database` with the engine in
``config.attributes["engine"]``, or by the ``alembic`` command line with
``-c storage/migrations/alembic.ini -x url=<database URL>``. The schema is
described by :data:`storage.models.Base.metadata`. SQLite gets batch mode
(``render_as_batch``) because it cannot ALTER most things in place.
"""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import Connection, Engine

from storage.db import create_database_engine
from storage.models import Base

LOGGER = logging.getLogger("storage.migrations")

target_metadata = Base.metadata


def _engine() -> Engine:
    engine = context.config.attributes.get("engine")
    if engine is not None:
        return engine
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError('no database: pass -x url=... or set "sqlalchemy.url"')
    return create_database_engine(url)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL text instead of running it (``alembic upgrade --sql``)."""
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a connection of the engine."""
    with _engine().connect() as connection:
        _run(connection)
        connection.commit()


try:
    _offline: bool | None = context.is_offline_mode()
except NameError:
    # Imported outside Alembic (e.g. ``pytest --doctest-modules``): no
    # migration context exists and there is nothing to run.
    _offline = None

if _offline is True:
    run_migrations_offline()
elif _offline is False:
    run_migrations_online()
