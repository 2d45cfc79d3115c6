"""``deepsc-node audit``: the audit trail: recent associations and results sent.

Read-only; safe while the node runs. Needs only the database settings.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from config.cli import add_settings_arguments
from pacs_node.commands.echo import load_settings_or_exit
from pacs_node.commands.status import iso_seconds, open_existing_database, print_report

LOGGER = logging.getLogger(__name__)

__all__ = ["collect_audit", "format_audit", "register"]

EPILOG = """\
examples:
  deepsc-node audit --config /etc/deepsc-node.toml
  deepsc-node audit --outcome rejected --limit 100
  deepsc-node audit --json | jq '.associations[] | select(.tls == false)'

Associations (newest first): start time, outcome (accepted = still open,
released, aborted, rejected, failed = closed before an association request,
e.g. a failed TLS handshake), calling and called AE title, peer address and
port, TLS and the client certificate's subject, C-STORE counts (stored /
warning / refused) and the reason of a rejection or failure.
Results sent (newest first): every C-STORE attempt of a SEG or SR: time,
destination, SOP Instance UID, attempt number and outcome.
No patient data is shown. Exit status 0, or 1 when the database cannot be read.
"""

#: The values of :class:`storage.AssociationOutcome`, spelled out so that the
#: CLI does not import sqlalchemy to build its parser (a test keeps them equal).
OUTCOMES = ("accepted", "released", "aborted", "rejected", "failed")


def collect_audit(
    database_url: str, limit: int = 20, outcome: str | None = None
) -> dict[str, Any]:
    """Read the audit trail of a node's database as plain data.

    Parameters
    ----------
    database_url: str
        SQLAlchemy URL (``Settings.database_url``).
    limit: int
        Rows of each kind to list.
    outcome: str | None
        Only associations with this outcome.

    Returns
    -------
    dict[str, Any]
        ``associations`` and ``results_sent``, lists of dicts, newest first.

    Raises
    ------
    FileNotFoundError
        If an SQLite database file does not exist (the node never ran).
    sqlalchemy.exc.SQLAlchemyError
        If the database cannot be read.
    """
    from storage import (
        make_session_factory,
        recent_associations,
        recent_result_sends,
    )

    engine = open_existing_database(database_url)
    try:
        with make_session_factory(engine)() as session:
            associations = recent_associations(session, limit, outcome=outcome)
            sends = recent_result_sends(session, limit)
    finally:
        engine.dispose()
    return {
        "database": engine.url.render_as_string(hide_password=True),
        "associations": [
            {
                "id": a.id,
                "started_at": iso_seconds(a.started_at),
                "ended_at": iso_seconds(a.ended_at),
                "outcome": a.outcome.value,
                "calling_ae_title": a.calling_ae_title,
                "called_ae_title": a.called_ae_title,
                "peer_address": a.peer_address,
                "peer_port": a.peer_port,
                "tls": a.tls,
                "tls_peer": a.tls_peer,
                "instances_stored": a.instances_stored,
                "instances_warning": a.instances_warning,
                "instances_refused": a.instances_refused,
                "reason": a.reason,
            }
            for a in associations
        ],
        "results_sent": [
            {
                "started_at": iso_seconds(s.started_at),
                "finished_at": iso_seconds(s.finished_at),
                "destination": s.destination,
                "kind": s.kind,
                "sop_instance_uid": s.sop_instance_uid,
                "series_instance_uid": s.series_instance_uid,
                "job_id": s.job_id,
                "attempt_number": s.attempt_number,
                "success": s.success,
                "status_code": s.status_code,
                "error": s.error,
            }
            for s in sends
        ],
    }


def format_audit(data: dict[str, Any]) -> str:
    """Human-readable form of :func:`collect_audit`'s data (ends with a newline)."""
    lines = [f"database: {data['database']}", ""]
    if data["associations"]:
        lines.append("associations (newest first):")
        lines.append(
            f"  {'STARTED':<25} {'OUTCOME':<9} {'CALLING':<16} {'CALLED':<16} "
            f"{'PEER':<21} {'TLS':<3} STORED/WARN/REFUSED"
        )
        for a in data["associations"]:
            peer = f"{a['peer_address']}:{a['peer_port'] if a['peer_port'] is not None else ''}"
            lines.append(
                f"  {a['started_at']:<25} {a['outcome']:<9} {a['calling_ae_title'] or '-':<16} "
                f"{a['called_ae_title'] or '-':<16} {peer:<21} {'yes' if a['tls'] else 'no':<3} "
                f"{a['instances_stored']}/{a['instances_warning']}/{a['instances_refused']}"
            )
            if a["tls_peer"]:
                lines.append(f"  {'':<25} client certificate: {a['tls_peer']}")
            if a["reason"]:
                lines.append(f"  {'':<25} {a['reason']}")
    else:
        lines.append("no associations recorded")
    lines.append("")
    if data["results_sent"]:
        lines.append("results sent (newest first):")
        for s in data["results_sent"]:
            if s["success"] is None:
                outcome = "in progress"
            else:
                outcome = "delivered" if s["success"] else "failed"
            status = f" 0x{s['status_code']:04X}" if s["status_code"] is not None else ""
            lines.append(
                f"  {s['started_at']:<25} {s['kind']:<3} {s['sop_instance_uid']} -> "
                f"{s['destination']} attempt {s['attempt_number']}: {outcome}{status}"
                + (f" ({s['error']})" if s["error"] else "")
            )
    else:
        lines.append("no results sent")
    return "\n".join(lines) + "\n"


def audit(args: argparse.Namespace) -> int:
    """Print the audit trail (the ``audit`` command).

    Returns
    -------
    int
        0, 1 when the database cannot be read, 2 for invalid settings.
    """
    settings = load_settings_or_exit(args, "audit")
    if settings is None:
        return 2
    return print_report(
        "audit",
        lambda: collect_audit(settings.database_url, limit=args.limit, outcome=args.outcome),
        format_audit, as_json=args.json,
    )


def register(subparsers: Any) -> None:
    """Add the ``audit`` command to the ``deepsc-node`` parser."""
    parser = subparsers.add_parser(
        "audit",
        help="show the audit trail: recent associations and results sent",
        description="Read the node's audit trail: who associated, when, from where, "
        "with what outcome, and every result object sent.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--limit", type=int, default=20, metavar="N", help="rows of each kind (default 20)"
    )
    parser.add_argument(
        "--outcome", choices=OUTCOMES, default=None, help="only associations with this outcome"
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=audit)
