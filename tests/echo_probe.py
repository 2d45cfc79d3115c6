"""A C-ECHO probe in its own process: how fast does the node answer while busy?

Run as ``python -m tests.echo_probe --port 11112 --called-ae DEEPSC``. Every
``--interval`` seconds it opens an association, sends a C-ECHO, releases the
association, and prints one JSON line to stdout::

    {"at": 1.503, "latency": 0.012, "ok": true, "error": null}

``at`` is seconds since the probe started, ``latency`` the seconds from the
association request to the release (association + C-ECHO response +
release: what a monitoring ``echoscu`` waits for), ``ok`` whether the status
was 0x0000. It stops on SIGTERM or SIGINT after the echo in flight.

It is a separate process on purpose: the load generator's own threads (and
their GIL) must not delay the probe and be mistaken for a slow node.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from types import FrameType

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

LOGGER = logging.getLogger(__name__)

#: Calling AE title of the probe.
PROBE_AE = "ECHOPROBE"


def echo_once(
    host: str, port: int, called_ae: str, calling_ae: str, timeout: float
) -> tuple[float, bool, str | None]:
    """One association with one C-ECHO.

    Parameters
    ----------
    host, port: str, int
        The node.
    called_ae, calling_ae: str
        AE titles.
    timeout: float
        ACSE, DIMSE and network timeout (seconds).

    Returns
    -------
    tuple[float, bool, str | None]
        Seconds from the association request to the release, whether the
        C-ECHO status was success, and what went wrong otherwise.
    """
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    started = time.monotonic()
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return time.monotonic() - started, False, "association not established"
    try:
        status = assoc.send_c_echo()
        ok = bool(status) and int(status.Status) == 0x0000
        error = None if ok else f"C-ECHO status {status.get('Status') if status else 'none'}"
    finally:
        assoc.release()
    return time.monotonic() - started, ok, error


def main(argv: list[str] | None = None) -> int:
    """Probe until SIGTERM/SIGINT; one JSON line per echo on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--called-ae", default="DEEPSC")
    parser.add_argument("--calling-ae", default=PROBE_AE)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between echo starts")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before an echo fails")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    origin = time.monotonic()
    next_start = origin
    while not stop.is_set():
        at = time.monotonic() - origin
        try:
            latency, ok, error = echo_once(
                args.host, args.port, args.called_ae, args.calling_ae, args.timeout
            )
        except (OSError, RuntimeError) as exc:
            latency = time.monotonic() - origin - at
            ok, error = False, f"{type(exc).__name__}: {exc}"
        sample = {"at": round(at, 4), "latency": latency, "ok": ok, "error": error}
        print(json.dumps(sample), flush=True)
        next_start = max(next_start + args.interval, time.monotonic())
        stop.wait(max(0.0, next_start - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
