"""``deepsc-node serve``: run the node in the foreground until SIGTERM or SIGINT."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from config.cli import add_settings_arguments, settings_from_args
from config.errors import SettingsError

LOGGER = logging.getLogger(__name__)

__all__ = ["register", "serve"]

#: Seconds the node gets to stop after SIGTERM/SIGINT before jobs are left
#: ``running`` (they are re-queued at the next start).
DEFAULT_STOP_TIMEOUT = 30.0

#: ``sys.setswitchinterval`` of the serving process, in seconds (Python's
#: default is 0.005). Every association runs in its own threads, which poll
#: their sockets and queues every millisecond; while a worker thread runs
#: Python code (reading a series, encoding the SEG) each of those wake-ups
#: waits up to one switch interval for the GIL, and one C-ECHO needs dozens.
#: At 1 ms a C-ECHO beside a thread running Python and one running ONNX
#: Runtime took about half as long (loopback, 2 cores: median 122 -> 68 ms).
SWITCH_INTERVAL = 0.001

EPILOG = """\
examples:
  deepsc-node serve --config /etc/deepsc-node.toml
  deepsc-node serve --ae-title DEEPSC --port 11112 --data-dir /var/lib/deepsc \\
      --destination pacs=ORTHANC@10.0.0.5:4242

The node receives CT series by C-STORE, waits until a series has been quiet
for quiet_time seconds, applies the selection rules, runs the model and sends
a DICOM-SEG and a TID 1500 SR to every destination. Logs go to stderr.
SIGTERM or SIGINT (Ctrl-C) stop it cleanly: running associations finish,
the current jobs get --stop-timeout seconds; anything unfinished resumes at
the next start. Exit status: 0 after a clean stop, 2 for invalid settings,
1 if the node cannot start (the message says why, e.g. which manifest
field of the model is wrong).

Security: allowed_calling_aes (AE or AE@host) and require_called_ae decide who
may associate; the [tls] settings turn on DICOM TLS for the SCP (certificate,
private_key, ca_certificates, require_client_certificate) and for destinations
with tls = true (destination_ca_certificates, client_certificate), e.g.
  deepsc-node serve --config node.toml --set tls.certificate=/etc/deepsc/node.pem \\
      --set tls.private_key=/etc/deepsc/node.key --set tls.ca_certificates=/etc/deepsc/ca.pem
Every incoming association is recorded in the database: deepsc-node audit.

HTTP API, Prometheus metrics and worklist page (docs/api.md): on by default on
127.0.0.1:8080 (--http-bind, --http-port, --no-http); everything but /health
and /ready needs the token from http.token / DEEPSC_HTTP__TOKEN or the file
<data_dir>/http-token that the first start generates (mode 0600), e.g.
  curl -H "Authorization: Bearer $(cat deepsc-data/http-token)" localhost:8080/api/studies

RESEARCH USE ONLY, NOT FOR DIAGNOSIS.
"""


def http_line(node: Any) -> str:
    """The banner line of the HTTP API: its URL and where the token is (never the token)."""
    settings = node.settings
    if getattr(node, "http", None) is None:
        return "HTTP API: off"
    token = "from the settings" if settings.http.token else str(settings.data_dir / "http-token")
    return (
        f"HTTP API: http://{settings.http.bind_address}:{node.http_port}/ "
        f"(worklist: /worklist; token: {token})"
    )


def banner(node: Any) -> str:
    """The start-up lines printed on stdout.

    Parameters
    ----------
    node: pacs_node.node.Node
        A started node.

    Returns
    -------
    str
        AE title, address and port, model name and version, destinations and
        the research-use statement.
    """
    settings = node.settings
    manifest = node.manifest
    destinations = ", ".join(
        f"{d.name}={d.ae_title}@{d.host}:{d.port}" for d in settings.destinations
    )
    return "\n".join(
        [
            f"deepsc-node {settings.ae_title} listening on {settings.bind_address}:{node.port}"
            + (" (DICOM TLS)" if settings.tls.scp_enabled else ""),
            f"model: {manifest.model_name} {manifest.model_version}",
            f"data: {settings.data_dir}",
            f"destinations: {destinations or 'none (results are written, not sent)'}",
            http_line(node),
            f"intended use: {manifest.intended_use}",
            "RESEARCH USE ONLY, NOT FOR DIAGNOSIS.",
        ]
    )


def serve(args: argparse.Namespace) -> int:
    """Run the node until a signal arrives (the ``serve`` command).

    Parameters
    ----------
    args: argparse.Namespace
        Parsed command line (settings flags, ``stop_timeout``).

    Returns
    -------
    int
        Exit status: 0 clean stop, 1 cannot start, 2 invalid settings.
    """
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"deepsc-node serve: invalid settings\n{exc}", file=sys.stderr)
        return 2
    from pacs_node.ae import configure_pynetdicom
    from pacs_node.logs import setup_logging
    from pacs_node.node import Node, NodeStartError

    setup_logging(settings.log_level)
    configure_pynetdicom()
    sys.setswitchinterval(SWITCH_INTERVAL)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        LOGGER.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    node = Node(settings)
    try:
        try:
            node.start()
        except NodeStartError as exc:
            print(f"deepsc-node serve: cannot start: {exc}", file=sys.stderr)
            return 1
        print(banner(node), flush=True)
        while not stop.wait(1.0):
            pass
        node.stop(timeout=args.stop_timeout)
        return 0
    finally:
        node.stop(timeout=args.stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(subparsers: Any) -> None:
    """Add the ``serve`` command to the ``deepsc-node`` parser.

    Parameters
    ----------
    subparsers: argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers()``.
    """
    parser = subparsers.add_parser(
        "serve",
        help="run the node: receive, select, infer, send results (foreground)",
        description="Run the DICOM node in the foreground until SIGTERM or SIGINT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT,
        metavar="SECONDS",
        help=f"time the current jobs get after a stop signal (default {DEFAULT_STOP_TIMEOUT:g})",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=serve)
