"""PDU-level fuzzing of the node's SCP over raw sockets on 127.0.0.1 (issue 5, section 3).

The SCP is the node's (:func:`pacs_node.ae.build_ae` + :func:`pacs_node.ae.start_scp`
with the storage-backed receiver and the association audit, as
:mod:`pacs_node.node` wires it) with short timeouts: ACSE 0.5 s, DIMSE and
network 1 s. A raw TCP client sends it what no DICOM library would:

* **named cases** (:data:`CASES`): random bytes, unknown PDU types, PDUs
  cut short, length fields of 0 and 0xFFFFFFFF, A-ASSOCIATE-RQ with garbage
  items, P-DATA / A-RELEASE-RQ / A-ABORT / A-ASSOCIATE-AC before any
  association, garbage P-DATA inside an association, idle and half-open
  connections, connection resets. Each states what the SCP must answer.
* **hypothesis batches**: 1 to 4 concurrent connections, each a sequence of
  PDUs built from a grammar (right or wrong type, length, items and
  sub-items; valid or random bodies; cut anywhere), optionally after a
  valid association, ending with close, reset, half-close or an idle wait.

Properties after every case or batch: the SCP closes each connection within
``HANG_BOUND`` seconds of the client's last byte (no hang past the
timeouts), everything it sent is a well-formed PDU of a type an acceptor
may send, its active association count returns to 0, the threads and
sockets of the process return to their baseline (no leak), a pynetdicom
SCU still gets C-ECHO Success, and the node itself (``pacs_node``,
``storage``) logs nothing at ERROR.

Cases in CI: ``PDU_EXAMPLES`` batches; more with ``DEEPSC_FUZZ_EXAMPLES``
(see :mod:`tests.fuzz_fixtures`).
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pacs_node.ae import build_ae, configure_pynetdicom, start_scp, stop_scp
from pacs_node.audit import AssociationAudit
from pacs_node.receiver import StorageReceiver
from storage import InstanceStore
from storage.models import AssociationOutcome, AssociationRow
from tests.dicom_fixtures import encode_dataset
from tests.fuzz_fixtures import fuzz_settings
from tests.node_fixtures import migrated_database, wait_until
from tests.peers import free_port

#: Hypothesis batches per run in CI (about 1 s each).
PDU_EXAMPLES = 40

NODE_AE = "DEEPSC"
ACSE_TIMEOUT = 0.5
DIMSE_TIMEOUT = 1.0
NETWORK_TIMEOUT = 1.0
#: Longest the SCP may take to close a connection after the client's last
#: byte: its longest timeout, then the ARTIM timer (= ACSE timeout) after
#: an A-ABORT, plus slack for a loaded two-core machine.
HANG_BOUND = NETWORK_TIMEOUT + ACSE_TIMEOUT + 5.0
#: PDU types an acceptor may send (PS3.8 9.3): AC, RJ, P-DATA, RELEASE-RQ/RP, ABORT.
ACCEPTOR_PDU_TYPES = frozenset({0x02, 0x03, 0x04, 0x05, 0x06, 0x07})
#: Loggers of the node itself: nothing from them at ERROR.
NODE_LOGGERS = ("pacs_node", "storage", "config", "inference")

VERIFICATION = b"1.2.840.10008.1.1"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"


# -- PDU encoding (PS3.8 9.3) -------------------------------------------------------


def pdu(pdu_type: int, body: bytes, length: int | None = None, reserved: int = 0) -> bytes:
    """A PDU: type, reserved byte, 4-byte big-endian length (default: right) and body."""
    return struct.pack(">BBL", pdu_type, reserved, len(body) if length is None else length) + body


def item(item_type: int, value: bytes, length: int | None = None) -> bytes:
    """A variable item or sub-item: type, reserved, 2-byte length, value."""
    return struct.pack(">BBH", item_type, 0, len(value) if length is None else length) + value


def ae_field(title: bytes) -> bytes:
    """A 16-byte AE title field, space padded (or cut)."""
    return title[:16].ljust(16, b" ")


def presentation_context(
    pcid: int = 1, abstract: bytes = VERIFICATION,
    syntaxes: tuple[bytes, ...] = (ImplicitVRLittleEndian.encode(),)
) -> bytes:
    """A presentation context item of an A-ASSOCIATE-RQ."""
    value = bytes([pcid, 0, 0, 0]) + item(0x30, abstract)
    return item(0x20, value + b"".join(item(0x40, s) for s in syntaxes))


def user_information(max_length: int = 16384) -> bytes:
    """User information item: maximum length, implementation class UID and version."""
    return item(
        0x50,
        item(0x51, struct.pack(">L", max_length))
        + item(0x52, b"1.2.826.0.1.3680043.9.3811.2.0")
        + item(0x55, b"FUZZ"),
    )


def associate_rq(
    called: bytes = NODE_AE.encode(), calling: bytes = b"FUZZSCU",
    items: bytes | None = None, version: int = 1, length: int | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ (valid by default: Verification, Implicit VR Little Endian)."""
    if items is None:
        items = item(0x10, APPLICATION_CONTEXT) + presentation_context() + user_information()
    fixed = struct.pack(">HH", version, 0) + ae_field(called) + ae_field(calling) + bytes(32)
    return pdu(0x01, fixed + items, length)


def pdv(pcid: int, control: int, fragment: bytes, length: int | None = None) -> bytes:
    """A presentation data value item of a P-DATA-TF."""
    size = len(fragment) + 2 if length is None else length
    return struct.pack(">LBB", size, pcid, control) + fragment


def echo_command(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set (Implicit VR Little Endian, with its group length)."""
    command = Dataset()
    command.AffectedSOPClassUID = VERIFICATION.decode()
    command.CommandField = 0x0030
    command.MessageID = message_id
    command.CommandDataSetType = 0x0101
    body = encode_dataset(command, ImplicitVRLittleEndian)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def p_data(*pdvs: bytes, length: int | None = None) -> bytes:
    """A P-DATA-TF PDU."""
    return pdu(0x04, b"".join(pdvs), length)


RELEASE_RQ = pdu(0x05, bytes(4))
ABORT = pdu(0x07, bytes([0, 0, 0, 0]))


def parse_pdus(data: bytes) -> list[tuple[int, bytes]]:
    """Split what the SCP sent into ``(type, body)``; AssertionError if malformed."""
    pdus = []
    offset = 0
    while offset < len(data):
        assert len(data) - offset >= 6, f"the SCP sent a cut PDU header: {data[offset:]!r}"
        pdu_type, _, length = struct.unpack_from(">BBL", data, offset)
        assert pdu_type in ACCEPTOR_PDU_TYPES, f"the SCP sent PDU type {pdu_type:#04x}"
        body = data[offset + 6:offset + 6 + length]
        assert len(body) == length, f"the SCP sent a cut PDU of type {pdu_type:#04x}"
        pdus.append((pdu_type, body))
        offset += 6 + length
    return pdus


# -- the raw client ---------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """What one raw connection does.

    Attributes
    ----------
    name: str
        For messages.
    chunks: tuple[bytes, ...]
        Sent in order, each with one ``sendall``.
    ending: str
        ``"close"`` (FIN), ``"reset"`` (RST), ``"half-close"`` (FIN, then
        read until the SCP closes) or ``"wait"`` (stay open, read until the
        SCP closes).
    handshake: bool
        First associate properly (A-ASSOCIATE-RQ, read the A-ASSOCIATE-AC).
    """

    name: str
    chunks: tuple[bytes, ...] = field(repr=False)
    ending: str = "wait"
    handshake: bool = False

    def __repr__(self) -> str:
        sizes = "+".join(str(len(c)) for c in self.chunks) or "0"
        heads = ", ".join(c[:12].hex() for c in self.chunks[:4])
        return (f"Script({self.name!r}, {sizes} bytes [{heads}], {self.ending}"
                f"{', after association' if self.handshake else ''})")


@dataclass
class Report:
    """What happened on one raw connection."""

    script: Script
    received: bytes = b""
    closed_after: float | None = None
    """Seconds from the client's last byte to the SCP closing; None: not measured."""
    hung: bool = False
    """The SCP kept the connection open for ``HANG_BOUND`` seconds."""
    handshake_refused: bool = False

    @property
    def pdus(self) -> list[tuple[int, bytes]]:
        return parse_pdus(self.received)


def _read_pdu(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return header
        header += chunk
    length = struct.unpack(">L", header[2:6])[0]
    body = b""
    while len(body) < length:
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            break
        body += chunk
    return header + body


def run_script(port: int, script: Script) -> Report:
    """Run `script` on a new connection; measure how the SCP ends it."""
    report = Report(script)
    received = bytearray()
    sock = socket.create_connection(("127.0.0.1", port), timeout=HANG_BOUND)
    try:
        if script.handshake:
            sock.sendall(associate_rq())
            answer = _read_pdu(sock)
            received += answer
            if answer[:1] != b"\x02":
                report.handshake_refused = True
                report.received = bytes(received)
                return report
        for chunk in script.chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the SCP closed first: allowed
                break
        if script.ending in ("close", "reset"):
            if script.ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return report
        if script.ending == "half-close":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already closed by the SCP
        started = time.monotonic()
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                report.hung = True
                break
            except OSError:  # reset by the SCP: closed
                chunk = b""
            if not chunk:
                report.closed_after = time.monotonic() - started
                break
            received += chunk
    finally:
        sock.close()
        report.received = bytes(received)
    return report


# -- the SCP under test -------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Keeps ERROR records of the node's own loggers."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in NODE_LOGGERS or "Exception in handler" in str(
            record.msg
        ):
            self.records.append(record)


REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ThreadDeath:
    """An exception that ended a thread.

    pynetdicom's DUL thread dies, with the connection closed and the
    association ended, on (found by this module): ``InvalidEventError`` when
    the node answers an A-ASSOCIATE-RQ (Evt7/Evt8) that the DUL has meanwhile
    aborted (Sta13) because of bytes after the request; ``AttributeError``
    (no ``CommandField``) on a P-DATA whose command set is garbage. These
    are tolerated (the node survives and cleans up) and reported; a death
    with a frame in the node's own code is a crash.
    """

    exception: str
    message: str
    where: str
    inside_pynetdicom: bool

    @classmethod
    def of(cls, args: threading.ExceptHookArgs) -> ThreadDeath:
        frames = traceback.extract_tb(args.exc_traceback)
        ours = [f for f in frames if f.filename.startswith(str(REPO_ROOT))
                and "site-packages" not in f.filename]
        last = frames[-1] if frames else None
        return cls(
            args.exc_type.__name__,
            str(args.exc_value)[:200],
            f"{Path(last.filename).name}:{last.name}" if last else "?",
            not ours,
        )


def socket_count() -> int:
    """Open sockets of this process (``/proc/self/fd``)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


@dataclass
class FuzzedSCP:
    """The SCP, its port and the process's baseline of threads and sockets."""

    server: ThreadedAssociationServer
    port: int
    errors: ErrorLog
    session_factory: sessionmaker[Session]
    threads: int = 0
    sockets: int = 0
    deaths: list[ThreadDeath] = field(default_factory=list)
    """Uncaught exceptions of threads since the last :meth:`settle`."""
    pynetdicom_deaths: list[ThreadDeath] = field(default_factory=list)
    """All tolerated ones (inside pynetdicom), for the report."""

    def echo(self) -> int:
        """C-ECHO from a pynetdicom SCU; returns the status."""
        ae = AE("ECHOSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AE)
        assert assoc.is_established, "the SCP no longer accepts associations"
        try:
            response = assoc.send_c_echo()
            assert "Status" in response, "no C-ECHO response"
            return int(response.Status)
        finally:
            assoc.release()

    def open_audit_rows(self) -> list[tuple[int, str]]:
        """Audit rows of associations that have not ended (the node's own count)."""
        with self.session_factory() as session:
            rows = session.scalars(
                select(AssociationRow).where(
                    (AssociationRow.ended_at.is_(None))
                    | (AssociationRow.outcome == AssociationOutcome.ACCEPTED)
                )
            ).all()
            return [(row.id, str(row.outcome)) for row in rows]

    def settle(self, what: str) -> None:
        """No association, thread or socket left over; C-ECHO still answered."""
        wait_until(lambda: not self.server.active_associations, HANG_BOUND,
                   f"the SCP's associations to end after {what}")
        assert self.echo() == 0
        wait_until(lambda: not self.server.active_associations, HANG_BOUND,
                   f"the C-ECHO association to end after {what}")
        wait_until(lambda: threading.active_count() <= self.threads, HANG_BOUND,
                   f"threads back to {self.threads} after {what} "
                   f"(now {threading.active_count()})")
        wait_until(lambda: socket_count() <= self.sockets, HANG_BOUND,
                   f"sockets back to {self.sockets} after {what} (now {socket_count()})")
        wait_until(lambda: not self.open_audit_rows(), HANG_BOUND,
                   f"every association in the audit trail to have ended after {what}")
        assert not self.errors.records, (
            f"logged at ERROR after {what}: {self.errors.records[0].getMessage()}"
        )
        # pynetdicom's DUL thread dies on some input (see ThreadDeath); the
        # association still ends and nothing leaks (checked above). A thread
        # that dies in the node's own code is a crash.
        deaths, self.deaths[:] = list(self.deaths), []
        crashes = [death for death in deaths if not death.inside_pynetdicom]
        assert not crashes, f"a thread died in the node's code after {what}: {crashes[0]}"
        self.pynetdicom_deaths.extend(deaths)


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedSCP]:
    """The node's SCP (storage receiver, audit) with short timeouts on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("fuzz-pdu")
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    old_level = _config.LOG_HANDLER_LEVEL
    old_hook = threading.excepthook
    deaths: list[ThreadDeath] = []

    def record_death(args: threading.ExceptHookArgs) -> None:
        deaths.append(ThreadDeath.of(args))

    threading.excepthook = record_death
    configure_pynetdicom()
    try:
        with migrated_database(folder) as factory:
            ae = build_ae(NODE_AE, acse_timeout=ACSE_TIMEOUT, dimse_timeout=DIMSE_TIMEOUT,
                          network_timeout=NETWORK_TIMEOUT)
            port = free_port()
            receiver = StorageReceiver(InstanceStore(folder / "instances"), factory)
            server = start_scp(ae, "127.0.0.1", port, receiver, audit=AssociationAudit(factory))
            try:
                node = FuzzedSCP(server, port, errors, factory, deaths=deaths)
                assert node.echo() == 0
                wait_until(lambda: not server.active_associations, HANG_BOUND, "first echo")
                time.sleep(0.2)  # the request thread of the first echo ends
                node.threads, node.sockets = threading.active_count(), socket_count()
                yield node
            finally:
                stop_scp(server, timeout=2.0)
    finally:
        logging.getLogger().removeHandler(errors)
        _config.LOG_HANDLER_LEVEL = old_level
        threading.excepthook = old_hook


def check_report(report: Report) -> None:
    """The SCP ended the connection in time and sent only well-formed PDUs."""
    assert not report.hung, f"{report.script}: still open {HANG_BOUND} s after the last byte"
    if report.closed_after is not None:
        assert report.closed_after <= HANG_BOUND
    report.pdus  # noqa: B018 - parsing asserts well-formedness


# -- named cases ------------------------------------------------------------------------

ABORT_ONLY = frozenset({0x07})
REJECT_OR_ABORT = frozenset({0x03, 0x07})
NOTHING = frozenset[int]()
_VALID_RQ = associate_rq()
_NOISE = bytes((i * 7919 + 13) % 251 for i in range(600))


@dataclass(frozen=True)
class Case:
    """A named raw-socket case and the PDU types the SCP may answer with.

    Attributes
    ----------
    script: Script
        What the client does.
    allowed: frozenset[int]
        PDU types the SCP may send (after the A-ASSOCIATE-AC of a handshake).
    sequence: tuple[int, ...] | None
        The exact PDU types expected, when the answer is fully determined.
    """

    script: Script
    allowed: frozenset[int] = ABORT_ONLY
    sequence: tuple[int, ...] | None = None
    reject: tuple[int, int, int] | None = None
    """Result, source and reason of the A-ASSOCIATE-RJ expected, if one is."""


def _case(name: str, *chunks: bytes, ending: str = "wait", handshake: bool = False,
          allowed: frozenset[int] = ABORT_ONLY, sequence: tuple[int, ...] | None = None,
          reject: tuple[int, int, int] | None = None) -> Case:
    if reject is not None:
        sequence = (0x03,)
    if sequence is not None:
        allowed = frozenset(sequence) - {0x02}
    return Case(Script(name, chunks, ending, handshake), allowed, sequence, reject)


_ITEMS = item(0x10, APPLICATION_CONTEXT) + presentation_context() + user_information()

CASES = (
    # Sanity check of the raw client: a whole C-ECHO.
    _case("valid C-ECHO then release", p_data(pdv(1, 0x03, echo_command())), RELEASE_RQ,
          handshake=True, allowed=frozenset({0x04, 0x06}), sequence=(0x02, 0x04, 0x06)),
    # Not DICOM at all.
    _case("random bytes", _NOISE),
    _case("HTTP request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    _case("TLS client hello", bytes.fromhex("16030100a5010000a10303") + bytes(160)),
    _case("unknown PDU type 0x00", pdu(0x00, bytes(8))),
    _case("unknown PDU type 0x08", pdu(0x08, bytes(8))),
    _case("unknown PDU type 0xFF, length 0xFFFFFFFF", pdu(0xFF, b"", 0xFFFFFFFF)),
    _case("five bytes, then silence", b"\x01\x00\x00\x00\x00"),
    # A-ASSOCIATE-RQ broken in its framing.
    _case("A-ASSOCIATE-RQ cut in half, then silence", _VALID_RQ[:len(_VALID_RQ) // 2],
          allowed=NOTHING | ABORT_ONLY),
    _case("A-ASSOCIATE-RQ cut in half, then half-close", _VALID_RQ[:len(_VALID_RQ) // 2],
          ending="half-close", allowed=NOTHING | ABORT_ONLY),
    _case("A-ASSOCIATE-RQ with length 0", associate_rq(length=0)),
    _case("A-ASSOCIATE-RQ with length 0xFFFFFFFF, then silence",
          associate_rq(length=0xFFFFFFFF)),
    _case("A-ASSOCIATE-RQ with length 0xFFFFFFFF and 1 MiB of zeros",
          associate_rq(length=0xFFFFFFFF), bytes(1 << 20)),
    _case("A-ASSOCIATE-RQ with length 10 too short", associate_rq(length=len(_VALID_RQ) - 16)),
    _case("A-ASSOCIATE-RQ with length 10 too long, then silence",
          associate_rq(length=len(_VALID_RQ) - 6 + 10)),
    # A-ASSOCIATE-RQ whose items are garbage.
    _case("A-ASSOCIATE-RQ without items", associate_rq(items=b""), reject=(1, 1, 2)),
    _case("A-ASSOCIATE-RQ with an unknown item type",
          associate_rq(items=_ITEMS + item(0xAA, b"garbage")),
          allowed=REJECT_OR_ABORT | {0x02, 0x06}),
    _case("A-ASSOCIATE-RQ with an item longer than the PDU",
          associate_rq(items=item(0x10, APPLICATION_CONTEXT, 0xFFFF) + _ITEMS[25:])),
    _case("A-ASSOCIATE-RQ with a presentation context without transfer syntax",
          associate_rq(items=item(0x10, APPLICATION_CONTEXT)
                       + item(0x20, bytes([1, 0, 0, 0]) + item(0x30, VERIFICATION))
                       + user_information()),
          reject=(1, 1, 1)),
    _case("A-ASSOCIATE-RQ with a binary abstract syntax",
          associate_rq(items=item(0x10, APPLICATION_CONTEXT)
                       + presentation_context(abstract=b"\xff\xfe\x00\x01" * 8)
                       + user_information()),
          allowed=REJECT_OR_ABORT | {0x02}),
    _case("A-ASSOCIATE-RQ with 128 presentation contexts",
          associate_rq(items=item(0x10, APPLICATION_CONTEXT)
                       + b"".join(presentation_context(pcid=2 * i + 1) for i in range(128))
                       + user_information()),
          allowed=REJECT_OR_ABORT | {0x02}),
    _case("A-ASSOCIATE-RQ with maximum length 0xFFFFFFFF",
          associate_rq(items=item(0x10, APPLICATION_CONTEXT) + presentation_context()
                       + user_information(0xFFFFFFFF)),
          allowed=REJECT_OR_ABORT | {0x02}),
    _case("A-ASSOCIATE-RQ with non-ASCII AE titles",
          associate_rq(called=b"\xff" * 16, calling=b"\x00\x80" * 8), allowed=REJECT_OR_ABORT),
    _case("A-ASSOCIATE-RQ for another AE title", associate_rq(called=b"SOMEONE"),
          reject=(1, 1, 7)),
    _case("A-ASSOCIATE-RQ with another application context",
          associate_rq(items=item(0x10, b"1.2.3.4") + presentation_context()
                       + user_information()),
          reject=(1, 1, 2)),
    _case("A-ASSOCIATE-RQ with protocol version 0", associate_rq(version=0),
          allowed=REJECT_OR_ABORT | {0x02}),
    _case("A-ASSOCIATE-RQ, then another A-ASSOCIATE-RQ before the answer", _VALID_RQ, _VALID_RQ,
          allowed=ABORT_ONLY | {0x02}),
    # Right PDUs, wrong state.
    _case("P-DATA before association", p_data(pdv(1, 0x03, echo_command()))),
    _case("A-RELEASE-RQ before association", RELEASE_RQ),
    _case("A-ABORT before association", ABORT, allowed=NOTHING),
    _case("A-ASSOCIATE-AC sent to the acceptor", pdu(0x02, _VALID_RQ[6:])),
    _case("A-ASSOCIATE-RJ sent to the acceptor", pdu(0x03, bytes([0, 1, 1, 1]))),
    # Inside an association.
    _case("P-DATA with a PDV longer than the PDU",
          p_data(pdv(1, 0x03, echo_command(), length=0xFFFF)), handshake=True),
    _case("P-DATA on presentation context 99", p_data(pdv(99, 0x03, echo_command())),
          handshake=True, allowed=ABORT_ONLY | {0x04}),
    _case("P-DATA with a garbage command", p_data(pdv(1, 0x03, _NOISE[:200])), handshake=True,
          allowed=ABORT_ONLY | {0x04}),
    _case("P-DATA with length 0xFFFFFFFF, then silence",
          p_data(pdv(1, 0x03, echo_command()), length=0xFFFFFFFF), handshake=True),
    _case("P-DATA with an empty PDV", p_data(pdv(1, 0x03, b"", length=0)), handshake=True,
          allowed=ABORT_ONLY | {0x04}),
    _case("half a command fragment, then silence", p_data(pdv(1, 0x01, echo_command()[:20])),
          handshake=True),
    _case("A-ASSOCIATE-RQ inside an association", _VALID_RQ, handshake=True),
    _case("idle association", handshake=True),
    # Connections that end badly.
    _case("connect and say nothing", allowed=NOTHING | ABORT_ONLY),
    _case("connect and half-close", ending="half-close", allowed=NOTHING | ABORT_ONLY),
    _case("connect and reset", ending="reset", allowed=NOTHING),
    _case("reset in the middle of an A-ASSOCIATE-RQ", _VALID_RQ[:50], ending="reset",
          allowed=NOTHING),
    _case("half-close after association", ending="half-close", handshake=True,
          allowed=NOTHING | ABORT_ONLY),
    _case("reset after association", ending="reset", handshake=True, allowed=NOTHING),
    _case("reset in the middle of a P-DATA", p_data(pdv(1, 0x03, echo_command()))[:15],
          ending="reset", handshake=True, allowed=NOTHING),
)


@pytest.mark.parametrize("case", CASES, ids=[case.script.name for case in CASES])
def test_malformed_pdus_are_answered_in_time_without_leaks(scp: FuzzedSCP, case: Case) -> None:
    """Each named case: the documented answer, closed in time, nothing leaked, C-ECHO works."""
    report = run_script(scp.port, case.script)
    check_report(report)
    types = [pdu_type for pdu_type, _ in report.pdus]
    if case.script.handshake:
        assert not report.handshake_refused and types[:1] == [0x02], types
        types = types[1:]
    if case.sequence is not None:
        assert tuple(t for t, _ in report.pdus) == case.sequence
    assert set(types) <= case.allowed, (
        f"{case.script.name}: the SCP sent PDU types {[hex(t) for t in types]}, "
        f"expected only {sorted(hex(t) for t in case.allowed)}"
    )
    if case.reject is not None:
        assert tuple(report.pdus[0][1][1:4]) == case.reject, "A-ASSOCIATE-RJ result/source/reason"
    if case.script.name.startswith("valid C-ECHO"):
        # The C-ECHO-RSP command carries Status (0000,0900) US 0x0000.
        assert b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00" in report.pdus[1][1]
    scp.settle(case.script.name)


# -- hypothesis batches -----------------------------------------------------------------

_UIDS = st.sampled_from([
    VERIFICATION, APPLICATION_CONTEXT, b"1.2.840.10008.5.1.4.1.1.2",
    ImplicitVRLittleEndian.encode(), ExplicitVRLittleEndian.encode(), b"", b"1.2.3",
    b"\xff\xfe\x00", b"9" * 65,
])
_LENGTH_16 = st.one_of(st.none(), st.none(), st.sampled_from([0, 1, 0xFFFF]),
                       st.integers(0, 0xFFFF))
_LENGTH_32 = st.one_of(st.none(), st.none(), st.sampled_from([0, 1, 0xFFFFFFFF]),
                       st.integers(0, 0xFFFFFFFF))


def _sub_items() -> st.SearchStrategy[bytes]:
    sub_item = st.builds(
        item,
        st.one_of(st.sampled_from([0x30, 0x40, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57,
                                   0x58, 0x59]), st.integers(0, 255)),
        st.one_of(_UIDS, st.binary(max_size=40),
                  st.integers(0, 0xFFFFFFFF).map(lambda n: struct.pack(">L", n))),
        _LENGTH_16,
    )
    return st.lists(sub_item, max_size=4).map(b"".join)


def _items() -> st.SearchStrategy[bytes]:
    context_header = st.tuples(
        st.one_of(st.sampled_from([1, 3]), st.integers(0, 255)), st.integers(0, 255)
    ).map(lambda t: bytes([t[0], 0, t[1], 0]))
    one = st.one_of(
        st.builds(item, st.just(0x10), _UIDS, _LENGTH_16),
        st.builds(lambda h, s, n: item(0x20, h + s, n), context_header, _sub_items(),
                  _LENGTH_16),
        st.just(presentation_context()),
        st.builds(item, st.just(0x50), _sub_items(), _LENGTH_16),
        st.just(user_information()),
        st.builds(item, st.integers(0, 255), st.binary(max_size=40), _LENGTH_16),
    )
    return st.lists(one, max_size=5).map(b"".join)


def _pdus() -> st.SearchStrategy[bytes]:
    fragment = st.one_of(st.just(echo_command()), st.binary(max_size=120),
                         st.integers(0, 60).map(lambda n: echo_command()[:n]))
    return st.one_of(
        st.just(_VALID_RQ),
        st.builds(associate_rq, called=st.sampled_from([b"OTHER", b"", b"deepsc"])),
        st.builds(associate_rq,
                  called=st.one_of(st.just(NODE_AE.encode()), st.binary(max_size=16)),
                  calling=st.one_of(st.just(b"FUZZSCU"), st.binary(max_size=16)),
                  items=_items(), version=st.sampled_from([1, 1, 0, 2, 0xFFFF]),
                  length=_LENGTH_32),
        st.builds(lambda pdvs, n: p_data(*pdvs, length=n),
                  st.lists(st.builds(pdv, st.sampled_from([1, 1, 3, 99, 0]),
                                     st.sampled_from([0, 1, 2, 3, 0xFF]), fragment,
                                     st.one_of(st.none(), st.none(), st.integers(0, 0xFFFFFFFF))),
                           max_size=3),
                  _LENGTH_32),
        st.just(RELEASE_RQ),
        st.just(ABORT),
        st.builds(pdu, st.integers(0, 255), st.binary(max_size=40), _LENGTH_32),
        st.binary(min_size=1, max_size=300),
    )


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """A raw connection: PDUs from the grammar, maybe cut, in one or two writes."""
    data = b"".join(draw(st.lists(_pdus(), min_size=1, max_size=3)))
    if data and draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data) - 1))]
    chunks: tuple[bytes, ...] = (data,)
    if len(data) > 1 and draw(st.booleans()):
        cut = draw(st.integers(1, len(data) - 1))
        chunks = (data[:cut], data[cut:])
    ending = draw(st.sampled_from(["close", "reset", "half-close", "wait", "wait"]))
    return Script("fuzzed", chunks, ending, draw(st.booleans()))


def test_fuzzed_pdu_batches_never_hang_leak_or_crash_the_scp(scp: FuzzedSCP) -> None:
    """Concurrent connections with grammar-fuzzed PDUs: bounded, no leak, C-ECHO works."""
    seen: dict[str, int] = {}

    @fuzz_settings(PDU_EXAMPLES)
    @given(batch=st.lists(scripts(), min_size=1, max_size=4))
    def run(batch: list[Script]) -> None:
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            reports = list(pool.map(lambda s: run_script(scp.port, s), batch))
        for report in reports:
            check_report(report)
            types = tuple(t for t, _ in report.pdus)
            key = "closed silently" if not types else "+".join(f"{t:#04x}" for t in types[:3])
            seen[key] = seen.get(key, 0) + 1
        scp.settle(f"batch {batch}")

    run()
    print(f"PDU fuzz: connections by the SCP's answer {dict(sorted(seen.items()))}; "
          f"pynetdicom DUL threads that died (tolerated): "
          f"{sorted({(d.exception, d.where) for d in scp.pynetdicom_deaths})}")
    # The grammar reached the SCP's answers: accepted, and rejected or aborted. Which
    # of the last two a cut request gets depends on timing (a loaded machine lets
    # the ACSE timer abort what would have been rejected: seen once in a full-suite
    # run), so either counts, as in the named cases (REJECT_OR_ABORT).
    answers = "".join(seen)
    assert "0x02" in answers and ("0x03" in answers or "0x07" in answers), seen
