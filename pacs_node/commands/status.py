"""``deepsc-node status``: jobs and exports as the database sees them.

Read-only; safe while the node runs (SQLite in WAL mode lets readers work
beside the writer). Needs only the database settings.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.cli import add_settings_arguments
from pacs_node.commands.echo import load_settings_or_exit

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

LOGGER = logging.getLogger(__name__)

__all__ = [
    "collect_status",
    "format_status",
    "iso_seconds",
    "open_existing_database",
    "print_report",
    "register",
    "status",
]

EPILOG = """\
examples:
  deepsc-node status --config /etc/deepsc-node.toml
  deepsc-node status --data-dir /var/lib/deepsc --json | jq .jobs
  deepsc-node status --limit 50

Shows the number of jobs per state (received, complete, queued, running,
written, exported, rejected, failed), the most recently changed jobs with
their series UID, state, reason and times, and the exports still pending
(destination, attempts, next attempt, last error). Exit status 0, or 1 when
the database cannot be read.
"""


def iso_seconds(value: datetime | None) -> str | None:
    """``value`` in ISO 8601 to the second, or None."""
    return None if value is None else value.isoformat(timespec="seconds")


def open_existing_database(database_url: str) -> Engine:
    """An engine for the node's database, which must exist already.

    Parameters
    ----------
    database_url: str
        SQLAlchemy URL of the node's database.

    Raises
    ------
    FileNotFoundError
        If an SQLite database file does not exist (the node never ran here):
        a read-only report must not create an empty database.
    """
    from sqlalchemy.engine import make_url

    from storage import create_database_engine

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).is_file():
            raise FileNotFoundError(f"no database at {url.database} (has the node run here?)")
    return create_database_engine(url)


def print_report(
    command: str,
    collect: Callable[[], dict[str, Any]],
    format_text: Callable[[dict[str, Any]], str],
    as_json: bool,
) -> int:
    """Read a report from the node's database and print it as text or JSON.

    Parameters
    ----------
    command: str
        Command name for error messages (``status``, ``audit``).
    collect: Callable[[], dict[str, Any]]
        Reads the report; may raise ``FileNotFoundError`` (no database) or a
        SQLAlchemy error.
    format_text: Callable[[dict[str, Any]], str]
        Renders the report as text.
    as_json: bool
        Print JSON instead of text.

    Returns
    -------
    int
        0, or 1 when the database cannot be read (the reason on stderr).
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        data = collect()
    except FileNotFoundError as exc:
        print(f"deepsc-node {command}: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(
            f"deepsc-node {command}: cannot read the database: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(format_text(data))
    return 0


def collect_status(database_url: str, limit: int = 20) -> dict[str, Any]:
    """Read the status of a node's database as plain data.

    Parameters
    ----------
    database_url: str
        SQLAlchemy URL (``Settings.database_url``).
    limit: int
        Recent jobs to list.

    Returns
    -------
    dict[str, Any]
        ``database`` (URL without password), ``jobs`` ({state: count}),
        ``exports`` ({status: count}), ``recent_jobs`` (list of dicts, with
        the triage ``flag`` and ``priority``, ``None`` when not triaged),
        ``pending_exports`` (list of dicts) and ``hl7`` ({state: count} of
        the HL7 outbox). No PHI.

    Raises
    ------
    FileNotFoundError
        If an SQLite database file does not exist (the node never ran).
    sqlalchemy.exc.SQLAlchemyError
        If the database cannot be read.
    """
    from storage import (
        ExportStatus,
        due_exports,
        exports_for_job,
        hl7_message_counts,
        make_session_factory,
        status_overview,
        triage_for_jobs,
    )

    engine = open_existing_database(database_url)
    try:
        factory = make_session_factory(engine)
        with factory() as session:
            overview = status_overview(session, limit=limit)
            far_future = datetime.now(timezone.utc) + timedelta(days=36500)
            job_ids = sorted({item.job_id for item in due_exports(session, far_future, 1000)})
            pending = [
                record
                for job_id in job_ids
                for record in exports_for_job(session, job_id)
                if record.status is ExportStatus.PENDING
            ]
            triage = triage_for_jobs(session, [job.id for job in overview.recent_jobs])
            hl7_counts = hl7_message_counts(session)
    finally:
        engine.dispose()
    return {
        "database": engine.url.render_as_string(hide_password=True),
        "jobs": {state.value: count for state, count in overview.job_counts.items()},
        "exports": {status.value: count for status, count in overview.export_counts.items()},
        "recent_jobs": [
            {
                "id": job.id,
                "series_instance_uid": job.series_instance_uid,
                "study_instance_uid": job.study_instance_uid,
                "state": job.state.value,
                "reason": job.reason,
                "created_at": iso_seconds(job.created_at),
                "updated_at": iso_seconds(job.updated_at),
                "queued_at": iso_seconds(job.queued_at),
                "started_at": iso_seconds(job.started_at),
                "finished_at": iso_seconds(job.finished_at),
                "run_count": job.run_count,
                "flag": triage[job.id].flag if job.id in triage else None,
                "priority": triage[job.id].priority if job.id in triage else None,
            }
            for job in overview.recent_jobs
        ],
        "pending_exports": [
            {
                "job_id": record.job_id,
                "export_id": record.id,
                "destination": record.destination,
                "attempt_count": record.attempt_count,
                "next_attempt_at": iso_seconds(record.next_attempt_at),
                "last_error": record.last_error,
            }
            for record in pending
        ],
        "hl7": {state.value: count for state, count in hl7_counts.items()},
    }


def format_status(data: dict[str, Any]) -> str:
    """Human-readable form of :func:`collect_status`'s data.

    Parameters
    ----------
    data: dict[str, Any]
        From :func:`collect_status`.

    Returns
    -------
    str
        Several lines, ending with a newline.
    """
    lines = [f"database: {data['database']}"]
    lines.append("jobs: " + ", ".join(f"{state} {count}" for state, count in data["jobs"].items()))
    lines.append(
        "exports: " + ", ".join(f"{status} {count}" for status, count in data["exports"].items())
    )
    lines.append(
        "HL7 messages: " + ", ".join(f"{state} {count}" for state, count in data["hl7"].items())
    )
    lines.append("")
    if data["recent_jobs"]:
        lines.append("recent jobs (most recently changed first):")
        lines.append(f"  {'JOB':>5}  {'STATE':<9} {'UPDATED':<25} SERIES / REASON")
        for job in data["recent_jobs"]:
            lines.append(
                f"  {job['id']:>5}  {job['state']:<9} {job['updated_at'] or '':<25} "
                f"{job['series_instance_uid']}"
            )
            if job["reason"]:
                lines.append(f"  {'':>5}  {'':<9} {'':<25} {job['reason']}")
            if job["flag"]:
                triage = f"triage: {job['flag']} ({job['priority']})"
                lines.append(f"  {'':>5}  {'':<9} {'':<25} {triage}")
    else:
        lines.append("no jobs yet")
    if data["pending_exports"]:
        lines.append("")
        lines.append("pending exports:")
        for item in data["pending_exports"]:
            lines.append(
                f"  job {item['job_id']} export {item['export_id']} to {item['destination']}: "
                f"{item['attempt_count']} attempt(s), next at {item['next_attempt_at']}"
                + (f", last error: {item['last_error']}" if item["last_error"] else "")
            )
    return "\n".join(lines) + "\n"


def status(args: argparse.Namespace) -> int:
    """Print the node's status (the ``status`` command).

    Parameters
    ----------
    args: argparse.Namespace
        Parsed command line (settings flags, ``json``, ``limit``).

    Returns
    -------
    int
        0, 1 when the database cannot be read, 2 for invalid settings.
    """
    settings = load_settings_or_exit(args, "status")
    if settings is None:
        return 2
    return print_report(
        "status", lambda: collect_status(settings.database_url, limit=args.limit),
        format_status, as_json=args.json,
    )


def register(subparsers: Any) -> None:
    """Add the ``status`` command to the ``deepsc-node`` parser.

    Parameters
    ----------
    subparsers: argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers()``.
    """
    parser = subparsers.add_parser(
        "status",
        help="show jobs per state, recent jobs and pending exports",
        description="Read the node's database and show what it is doing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--limit", type=int, default=20, metavar="N", help="recent jobs to list (default 20)"
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=status)
