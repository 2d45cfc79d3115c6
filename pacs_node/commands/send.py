"""``deepsc-node send``: C-STORE the DICOM files of folders to a peer."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pacs_node.commands.echo import (
    add_network_arguments,
    load_settings_or_exit,
    setup_logging,
    tls_context_for,
)

LOGGER = logging.getLogger(__name__)

__all__ = ["find_dicom_files", "register"]

EPILOG = """\
examples:
  deepsc-node send ./series --to ORTHANC@10.0.0.5:4242
  deepsc-node send ./study --recursive --to pacs            configured destination
  deepsc-node send a.dcm b.dcm --to PACS@[::1]:104 --calling-ae DEEPSC

Sends every DICOM Part 10 file (128-byte preamble + "DICM") found in the
paths over one association; other files are skipped and counted. Compressed
files are sent in their own transfer syntax, never transcoded. Exit status
0 when the peer acknowledged every file (Success or Warning), 1 when any
file was not delivered or nothing was found, 2 for invalid settings or
arguments.
"""

#: Most failed files listed in the summary.
MAX_LISTED_FAILURES = 20


def _is_part10(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            head = stream.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def find_dicom_files(paths: Iterable[Path], recursive: bool = False) -> tuple[list[Path], int]:
    """DICOM Part 10 files among `paths` (files, or folders to list).

    Parameters
    ----------
    paths: Iterable[pathlib.Path]
        Files and folders.
    recursive: bool
        Also list sub-folders.

    Returns
    -------
    tuple[list[pathlib.Path], int]
        The DICOM files (sorted per folder, in argument order) and the
        number of other files skipped.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    """
    found: list[Path] = []
    skipped = 0
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            candidates = sorted(p for p in (path.rglob("*") if recursive else path.iterdir()))
        else:
            candidates = [path]
        for candidate in candidates:
            if not candidate.is_file():
                continue
            if _is_part10(candidate):
                found.append(candidate)
            else:
                skipped += 1
    return found, skipped


def _send_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pacs_node.scu import ItemOutcome, resolve_destination, send

    setup_logging(args.verbose)
    settings = load_settings_or_exit(args)
    if settings is None:
        return 2
    try:
        destination = resolve_destination(args.to, settings.destinations)
    except (TypeError, ValueError) as exc:
        print(f"deepsc-node send: --to: {exc}", file=sys.stderr)
        return 2
    try:
        files, skipped = find_dicom_files(args.paths, args.recursive)
    except FileNotFoundError as exc:
        print(f"deepsc-node send: {exc}", file=sys.stderr)
        return 2
    try:
        tls_context = tls_context_for(settings, destination)
    except ValueError as exc:
        print(f"deepsc-node send: {exc}", file=sys.stderr)
        return 2
    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    if skipped:
        print(f"skipped {skipped} files that are not DICOM Part 10")
    if not files:
        print(f"deepsc-node send: no DICOM files found in {', '.join(map(str, args.paths))}")
        return 1
    timeouts = settings.timeouts
    if args.timeout is not None:
        from config import AssociationTimeouts

        timeouts = AssociationTimeouts(args.timeout, args.timeout, args.timeout, args.timeout)
    with tqdm(
        total=len(files), unit="file", desc=f"to {peer}", disable=args.no_progress or None
    ) as bar:

        def advance(outcome: ItemOutcome) -> None:
            bar.update(1)

        report = send(
            destination,
            files,
            calling_ae=args.calling_ae or settings.ae_title,
            timeouts=timeouts,
            progress=advance,
            tls_context=tls_context,
        )
    print(
        f"sent {len(files)} files to {peer}: {report.delivered} delivered "
        f"({report.warnings} with warning), {report.failed} failed"
    )
    if report.association_error:
        print(f"association: {report.association_error}")
    listed = 0
    for item in report.per_item:
        if item.warning or not item.delivered:
            if listed < MAX_LISTED_FAILURES:
                kind = "warning" if item.warning else "failed"
                print(f"  {kind}: {item.source}: {item.error}")
            listed += 1
    if listed > MAX_LISTED_FAILURES:
        print(f"  ... and {listed - MAX_LISTED_FAILURES} more")
    return 0 if report.ok else 1


def register(subparsers: Any) -> None:
    """Add the ``send`` command to the ``deepsc-node`` parser.

    Parameters
    ----------
    subparsers: argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers()``.
    """
    parser = subparsers.add_parser(
        "send",
        help="C-STORE DICOM files to a peer",
        description="Send every DICOM file in folders (or given files) to a DICOM peer "
        "over one association and print a summary.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="folders or files")
    parser.add_argument(
        "--to",
        required=True,
        metavar="PEER",
        help="AE@host:port or the name of a configured destination",
    )
    parser.add_argument(
        "-r", "--recursive", action="store_true", help="also send files in sub-folders"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: only on a terminal)"
    )
    add_network_arguments(parser)
    parser.set_defaults(func=_send_command)

