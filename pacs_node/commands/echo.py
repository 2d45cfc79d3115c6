"""``deepsc-node echo``: C-ECHO DICOM peers and print the round-trip time.

Also holds the helpers that the network commands (``echo``, ``send``)
share: settings loading, target resolution and quiet logging.
"""
from __future__ import annotations

import argparse
import logging
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.cli import settings_from_args
from config.errors import SettingsError

if TYPE_CHECKING:  # pragma: no cover
    from config import Destination, Settings

LOGGER = logging.getLogger(__name__)

__all__ = ["register", "load_settings_or_exit", "setup_logging"]

EPILOG = """\
examples:
  deepsc-node echo                              every configured destination
  deepsc-node echo ORTHANC@10.0.0.5:4242        one peer, AE@host:port
  deepsc-node echo pacs --calling-ae DEEPSC     a configured destination by name
  deepsc-node echo PACS@[::1]:104 --timeout 3   IPv6 in brackets

Prints one line per peer with the C-ECHO status and the round-trip time
(connect, associate, echo, release). Exit status 0 when every peer answers
Success, 1 otherwise, 2 for invalid settings or arguments.
"""


def setup_logging(verbose: bool) -> None:
    """Log to stderr: INFO with `verbose`, else only errors (pynetdicom silent).

    The commands print their own results; pynetdicom's connection errors
    would repeat them.
    """
    level = logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def load_settings_or_exit(args: argparse.Namespace, command: str = "") -> Settings | None:
    """Settings from file < environment < flags, or ``None`` after printing why not.

    `command` names the subcommand in the message (``deepsc-node audit: ...``).
    """
    try:
        return settings_from_args(args)
    except SettingsError as exc:
        prefix = f"deepsc-node {command}" if command else "deepsc-node"
        print(f"{prefix}: invalid settings\n{exc}", file=sys.stderr)
        return None


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """``--calling-ae``, ``--timeout``, ``-v`` and the settings flags they use.

    Of the settings flags only ``--config``, ``--destination`` and ``--set``
    apply; :func:`config.cli.settings_from_args` reads them.
    """
    parser.add_argument(
        "--calling-ae",
        metavar="AE",
        help="our AE title (default: the ae_title setting, DEEPSC)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="connect/association/response timeout (default: the timeouts settings)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log DICOM traffic")
    group = parser.add_argument_group("settings (override DEEPSC_* and the file)")
    group.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    group.add_argument(
        "--destination",
        dest="destinations",
        action="append",
        metavar="NAME=AE@HOST:PORT",
        help="destination (repeatable; replaces the configured destinations)",
    )
    group.add_argument(
        "--set",
        dest="settings_set",
        action="append",
        metavar="KEY=VALUE",
        help='any settings key, e.g. "timeouts.acse=5" (repeatable)',
    )


def tls_context_for(settings: Settings, destination: Destination) -> ssl.SSLContext | None:
    """Client TLS context for a configured destination with ``tls = true``, else ``None``.

    Raises
    ------
    pacs_node.tls.TLSSetupError
        If a ``[tls]`` file cannot be used (a ``ValueError``).
    """
    if not destination.tls:
        return None
    from pacs_node.tls import client_context

    return client_context(settings.tls)


def _label(destination: Destination, named: bool) -> str:
    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    return f"{destination.name} ({peer})" if named else peer


def _echo_command(args: argparse.Namespace) -> int:
    from pacs_node.scu import AssociationFailedError, echo, resolve_destination
    from pacs_node.status import describe, is_success

    setup_logging(args.verbose)
    settings = load_settings_or_exit(args)
    if settings is None:
        return 2
    calling_ae = args.calling_ae or settings.ae_title
    timeout = args.timeout if args.timeout is not None else settings.timeouts.acse
    if args.peers:
        targets = []
        for text in args.peers:
            try:
                destination = resolve_destination(text, settings.destinations)
            except (TypeError, ValueError) as exc:
                print(f"deepsc-node echo: {exc}", file=sys.stderr)
                return 2
            targets.append((destination, "@" not in text))
    else:
        targets = [(destination, True) for destination in settings.destinations]
        if not targets:
            print(
                "deepsc-node echo: no destination configured; give AE@host:port "
                "(or set destinations / --destination NAME=AE@HOST:PORT)",
                file=sys.stderr,
            )
            return 2
    failures = 0
    for destination, named in targets:
        label = _label(destination, named)
        start = time.perf_counter()
        try:
            status = echo(
                destination, calling_ae, timeout,
                tls_context=tls_context_for(settings, destination),
            )
        except (AssociationFailedError, ValueError) as exc:
            elapsed = (time.perf_counter() - start) * 1000.0
            print(f"{label}: FAILED after {elapsed:.1f} ms: {exc}")
            failures += 1
            continue
        elapsed = (time.perf_counter() - start) * 1000.0
        if is_success(status):
            print(f"{label}: {describe(status)}, {elapsed:.1f} ms")
        else:
            print(f"{label}: FAILED: {describe(status)}, {elapsed:.1f} ms")
            failures += 1
    return 0 if failures == 0 else 1


def register(subparsers: Any) -> None:
    """Add the ``echo`` command to the ``deepsc-node`` parser.

    Parameters
    ----------
    subparsers: argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers()``.
    """
    parser = subparsers.add_parser(
        "echo",
        help="C-ECHO DICOM peers (default: every configured destination)",
        description="Check that DICOM peers answer: associate, C-ECHO, release.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "peers",
        nargs="*",
        metavar="PEER",
        help="AE@host:port or the name of a configured destination",
    )
    add_network_arguments(parser)
    parser.set_defaults(func=_echo_command)
