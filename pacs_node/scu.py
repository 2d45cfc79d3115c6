"""Sending to DICOM peers: C-STORE of files or datasets, and C-ECHO.

:func:`send` makes one attempt over one association and reports every
item's outcome; it never raises for network failures (they are in the
report), and it does not retry (the exporter retries from the database).
:func:`echo` checks that a peer answers.

Presentation contexts
    One context per distinct (SOP Class, transfer syntax group) among the
    items: uncompressed little-endian items (Implicit/Explicit VR Little
    Endian, Deflated) propose Explicit and Implicit VR Little Endian (plus
    Deflated for a deflated item), which pynetdicom converts between;
    compressed and big-endian items propose exactly their own syntax, so
    their pixel data is sent as-is and never transcoded. At most 128
    contexts fit in one association (PS3.8 9.3.2.2); items needing more are
    reported as not sent.

Examples
--------
>>> from config import Destination
>>> report = send(Destination("pacs", "ORTHANC", "127.0.0.1", 1), [], calling_ae="DEEPSC")
>>> report.ok, report.per_item
(True, [])
"""
from __future__ import annotations

import copy
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config import AssociationTimeouts, Destination
from config.validators import to_ae_title, to_port
from pacs_node.ae import handle_connection_open
from pacs_node.errors import AssociationFailedError
from pacs_node.status import category, describe

LOGGER = logging.getLogger(__name__)

__all__ = [
    "AssociationFailedError",
    "ItemOutcome",
    "MAX_PRESENTATION_CONTEXTS",
    "SendReport",
    "echo",
    "parse_destination",
    "resolve_destination",
    "send",
]

#: Most presentation contexts in one A-ASSOCIATE-RQ (odd context IDs 1-255).
MAX_PRESENTATION_CONTEXTS = 128

_PEER_RE = re.compile(r"^(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:@\[\]]+):(?P<port>[0-9]+)$")

_CONTEXT_RESULT_TEXT = {
    0x01: "user rejection",
    0x02: "no reason given",
    0x03: "abstract syntax not supported",
    0x04: "transfer syntaxes not supported",
}


def parse_destination(text: str, *, name: str | None = None) -> Destination:
    """Parse ``AE@host:port`` (IPv6 in brackets: ``AE@[::1]:104``) into a Destination.

    Parameters
    ----------
    text: str
        The peer, e.g. ``"ORTHANC@127.0.0.1:4242"``.
    name: str | None
        Destination name; default: derived from the AE title.

    Returns
    -------
    config.Destination
        The peer.

    Raises
    ------
    ValueError
        If `text` is not ``AE@host:port`` or a part is invalid; the message
        says which part.

    Examples
    --------
    >>> parse_destination("PACS@10.0.0.5:104")
    Destination(name='PACS', ae_title='PACS', host='10.0.0.5', port=104, objects=('seg', 'sr', 'outline', 'sc'), tls=False)
    """
    if not isinstance(text, str):
        raise TypeError(f'Argument "text" should be a str, got {type(text).__name__}')
    match = _PEER_RE.match(text.strip())
    if match is None:
        raise ValueError(
            f'Argument "text" should be AE@host:port (e.g. PACS@10.0.0.5:104 or '
            f"PACS@[::1]:104), got {text!r}"
        )
    try:
        ae_title = to_ae_title(match["ae"])
    except ValueError as exc:
        raise ValueError(f'Argument "text": the AE title {exc}') from None
    try:
        port = to_port(int(match["port"]))
    except ValueError as exc:
        raise ValueError(f'Argument "text": the port {exc}') from None
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ae_title).strip("_.-") or "peer"
    try:
        return Destination(name, ae_title, match["host"], port)
    except ValueError as exc:
        raise ValueError(f'Argument "text": {exc}') from None


def resolve_destination(text: str, configured: Sequence[Destination] = ()) -> Destination:
    """A peer given on the command line: ``AE@host:port`` or a configured name.

    Parameters
    ----------
    text: str
        ``AE@host:port``, ``NAME=AE@host:port`` or the name of one of
        `configured`.
    configured: Sequence[config.Destination]
        The configured destinations.

    Returns
    -------
    config.Destination
        The peer.

    Raises
    ------
    ValueError
        If `text` is neither a valid peer nor a configured name; the message
        lists the configured names.
    """
    value = text.strip()
    if "@" in value:
        name, sep, peer = value.partition("=")
        if sep and "@" not in name:
            return parse_destination(peer, name=name.strip())
        return parse_destination(value)
    for destination in configured:
        if destination.name == value:
            return destination
    names = ", ".join(d.name for d in configured) or "none configured"
    raise ValueError(
        f"{text!r} is neither AE@host:port nor a configured destination ({names})"
    )


@dataclass(frozen=True)
class ItemOutcome:
    """What happened to one item of a :func:`send`.

    Parameters
    ----------
    sop_instance_uid: str
        SOP Instance UID of the item; ``""`` if it could not be read.
    status: int | None
        Status (0000,0900) of the C-STORE response; ``None`` when no
        response came (not sent, or the association failed).
    error: str
        Why the item was not delivered, or the peer's comment on a warning;
        ``""`` on plain success.
    source: str
        The file path, or ``"dataset[i]"`` for an in-memory dataset.
    """

    sop_instance_uid: str
    status: int | None
    error: str = ""
    source: str = ""

    @property
    def delivered(self) -> bool:
        """Whether the peer answered Success or a Warning (it has the instance)."""
        return self.status is not None and category(self.status) in ("Success", "Warning")

    @property
    def warning(self) -> bool:
        """Whether the peer answered with a Warning status (``0xB000``...)."""
        return self.status is not None and category(self.status) == "Warning"


@dataclass(frozen=True)
class SendReport:
    """Outcome of one :func:`send`.

    Parameters
    ----------
    destination: config.Destination
        Where the items went.
    per_item: list[ItemOutcome]
        One outcome per item, in the order given.
    association_error: str | None
        Why the association could not be made or broke down; ``None`` if
        it was made and released normally.
    """

    destination: Destination
    per_item: list[ItemOutcome] = field(default_factory=list)
    association_error: str | None = None

    @property
    def delivered(self) -> int:
        """Items the peer acknowledged (Success or Warning)."""
        return sum(item.delivered for item in self.per_item)

    @property
    def warnings(self) -> int:
        """Items acknowledged with a Warning."""
        return sum(item.warning for item in self.per_item)

    @property
    def failed(self) -> int:
        """Items not delivered."""
        return len(self.per_item) - self.delivered

    @property
    def ok(self) -> bool:
        """Whether every item was delivered and the association ended normally."""
        return self.association_error is None and self.failed == 0


@dataclass
class _Item:
    """An item planned for sending."""

    index: int
    payload: Path | Dataset
    source: str
    sop_class_uid: UID = UID("")
    sop_instance_uid: str = ""
    transfer_syntax: UID = UID("")
    error: str = ""

    @property
    def syntaxes(self) -> tuple[UID, ...]:
        """Transfer syntaxes to propose for this (readable) item."""
        syntax = self.transfer_syntax
        if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            return (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        if syntax == DeflatedExplicitVRLittleEndian:
            return (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        return (syntax,)


def _plan(index: int, payload: Path | Dataset) -> _Item:
    """Read what is needed to choose a presentation context for one item."""
    header: Dataset
    if isinstance(payload, (str, Path)):
        path = Path(payload)
        item = _Item(index, path, str(path))
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            item.error = f"cannot read file: {exc}"
            return item
        except Exception as exc:  # malformed files raise many types in pydicom
            item.error = f"cannot read file: {type(exc).__name__}: {exc}"
            return item
        meta_syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    elif isinstance(payload, Dataset):
        item = _Item(index, payload, f"dataset[{index}]")
        header = payload
        meta_syntax = getattr(getattr(payload, "file_meta", None), "TransferSyntaxUID", None)
        if meta_syntax is None:
            pixel = payload.get("PixelData")
            if pixel is not None and getattr(pixel, "is_undefined_length", False):
                item.error = "dataset has encapsulated pixel data but no Transfer Syntax UID"
                return item
            # Created from scratch without file meta: send it uncompressed.
            meta_syntax = ExplicitVRLittleEndian
            shallow = copy.copy(payload)
            shallow.file_meta = FileMetaDataset(getattr(payload, "file_meta", Dataset()))
            shallow.file_meta.TransferSyntaxUID = meta_syntax
            item.payload = shallow
    else:
        return _Item(
            index, Path(), f"item[{index}]",
            error=f"not a path or pydicom Dataset: {type(payload).__name__}",
        )
    sop_class = header.get("SOPClassUID")
    item.sop_instance_uid = str(header.get("SOPInstanceUID") or "")
    if not sop_class or not item.sop_instance_uid:
        item.error = "no SOP Class UID or SOP Instance UID"
    elif meta_syntax is None:
        item.error = "no Transfer Syntax UID in the file meta information"
    else:
        item.sop_class_uid = UID(str(sop_class))
        item.transfer_syntax = UID(str(meta_syntax))
    return item


def _context_for(assoc: Association, item: _Item) -> bool:
    """Whether `assoc` has an accepted context that can carry `item` unchanged."""
    syntax = item.transfer_syntax
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != item.sop_class_uid or not cx.transfer_syntax:
            continue
        accepted = UID(cx.transfer_syntax[0])
        if accepted == syntax:
            return True
        if (
            not accepted.is_compressed
            and not syntax.is_compressed
            and accepted.is_little_endian == syntax.is_little_endian
        ):
            return True
    return False


def _rejection(assoc: Association, item: _Item) -> str:
    """Why no context carries `item`, for the report."""
    reasons = sorted(
        {
            _CONTEXT_RESULT_TEXT.get(cx.result or 0, f"result {cx.result}")
            for cx in assoc.rejected_contexts
            if cx.abstract_syntax == item.sop_class_uid
        }
    )
    because = f" ({', '.join(reasons)})" if reasons else ""
    return (
        f"peer did not accept {item.sop_class_uid.name} with "
        f"{item.transfer_syntax.name}{because}"
    )


def _make_ae(calling_ae: str, timeouts: AssociationTimeouts) -> AE:
    try:
        title = to_ae_title(calling_ae)
    except ValueError as exc:
        raise ValueError(f'Argument "calling_ae" {exc}') from None
    ae = AE(title)
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.connection_timeout = timeouts.connection
    return ae


def _tls_args(
    destination: Destination, tls_context: ssl.SSLContext | None
) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom ``tls_args`` for `destination`: ``None`` unless ``destination.tls``.

    Without a context (:func:`pacs_node.tls.client_context`) the system's
    default CAs verify the peer. The host name (or IP address) of the
    destination is the name its certificate must carry.
    """
    if not destination.tls:
        return None
    context = tls_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    return context, destination.host.strip("[]")


def _associate(
    ae: AE, destination: Destination, tls_context: ssl.SSLContext | None = None
) -> tuple[Association | None, str | None]:
    """Request an association (TLS if ``destination.tls``); return it, or ``None`` and why not."""
    opened: list[bool] = []

    def on_open(event: Event) -> None:
        opened.append(True)
        handle_connection_open(event)

    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    tls_args = _tls_args(destination, tls_context)
    if tls_args is not None:
        peer += " (TLS)"
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
            tls_args=tls_args,
        )
    except OSError as exc:  # e.g. host name that does not resolve
        return None, f"cannot connect to {peer}: {exc}"
    if assoc.is_established:
        return assoc, None
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result_str", None) or "rejected"
        source = getattr(primitive, "source_str", None) or ""
        reason = getattr(primitive, "reason_str", None) or ""
        return None, f"association rejected by {peer}: {reason} ({result}, {source})"
    if not opened:
        if tls_args is not None:
            return None, (
                f"cannot connect to {peer} (connection refused, timed out or TLS handshake "
                "failed: check the CA, the certificate's host name and the client certificate)"
            )
        return None, f"cannot connect to {peer} (connection refused or timed out)"
    return None, f"association with {peer} aborted by the peer or timed out"


def send(
    destination: Destination,
    items: Sequence[Path | Dataset],
    *,
    calling_ae: str,
    timeouts: AssociationTimeouts | None = None,
    progress: Callable[[ItemOutcome], None] | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> SendReport:
    """C-STORE `items` to `destination` over one association, once.

    Parameters
    ----------
    destination: config.Destination
        The peer.
    items: Sequence[pathlib.Path | pydicom.Dataset]
        DICOM files and/or datasets (datasets need ``file_meta`` with a
        Transfer Syntax UID unless their pixel data is native).
    calling_ae: str
        Our AE title.
    timeouts: config.AssociationTimeouts | None
        ACSE, DIMSE, network and connection timeouts; default
        ``AssociationTimeouts()``.
    progress: Callable[[ItemOutcome], None] | None
        Called after each item (e.g. to advance a progress bar).
    tls_context: ssl.SSLContext | None
        Client TLS context for a destination with ``tls = true``
        (:func:`pacs_node.tls.client_context`); ignored otherwise.

    Returns
    -------
    SendReport
        One :class:`ItemOutcome` per item, in order, and the association
        error if any. Warnings (``0xB000``...) count as delivered.

    Raises
    ------
    ValueError
        If `calling_ae` is not a valid AE title.
    TypeError
        If `destination` is not a :class:`config.Destination`.
    """
    if not isinstance(destination, Destination):
        raise TypeError(
            f'Argument "destination" should be a config.Destination, '
            f"got {type(destination).__name__}"
        )
    timeouts = timeouts or AssociationTimeouts()
    ae = _make_ae(calling_ae, timeouts)
    planned = [_plan(index, payload) for index, payload in enumerate(items)]
    outcomes: dict[int, ItemOutcome] = {}

    def finish(item: _Item, status: int | None, error: str, log: bool = True) -> None:
        outcome = ItemOutcome(item.sop_instance_uid, status, error, item.source)
        outcomes[item.index] = outcome
        if log and not outcome.delivered:
            LOGGER.warning(
                "C-STORE of %s (%s) to %s: %s",
                item.sop_instance_uid or "<unknown>", item.source, destination.name,
                error or describe(status or 0),
            )
        if progress is not None:
            progress(outcome)

    contexts: dict[tuple[UID, tuple[UID, ...]], None] = {}
    sendable: list[_Item] = []
    for item in planned:
        if item.error:
            continue
        key = (item.sop_class_uid, item.syntaxes)
        if key not in contexts and len(contexts) >= MAX_PRESENTATION_CONTEXTS:
            item.error = (
                f"needs more than {MAX_PRESENTATION_CONTEXTS} presentation contexts in one "
                "association; send it separately"
            )
            continue
        contexts[key] = None
        sendable.append(item)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, list(syntaxes))

    if not sendable:
        for item in planned:
            finish(item, None, item.error)
        return _report(destination, planned, outcomes, None)

    assoc, association_error = _associate(ae, destination, tls_context)
    if assoc is None:
        for item in planned:  # one summary line, not one per item
            finish(item, None, item.error or f"not sent: {association_error}", log=bool(item.error))
        return _report(destination, planned, outcomes, association_error)

    try:
        for item in planned:
            if item.error:
                finish(item, None, item.error)
            elif not assoc.is_established:
                association_error = association_error or "association ended before all items"
                finish(item, None, f"not sent: {association_error}", log=False)
            elif not _context_for(assoc, item):
                finish(item, None, _rejection(assoc, item))
            else:
                status, error, broken = _store_one(assoc, item)
                finish(item, status, error)
                if broken:
                    # No response: aborted by the peer, or DIMSE timeout. Nothing more
                    # can be trusted on this association; pynetdicom may not have
                    # noticed the abort yet, so end it here.
                    association_error = f"{error} after {item.source}"
                    if assoc.is_established:
                        assoc.abort()
    finally:
        if assoc.is_established:
            assoc.release()
    return _report(destination, planned, outcomes, association_error)


def _store_one(assoc: Association, item: _Item) -> tuple[int | None, str, bool]:
    """C-STORE one item; return (status, error or comment, association broken)."""
    try:
        response = assoc.send_c_store(item.payload)
    except Exception as exc:  # reading/encoding raises many types; reported per item
        LOGGER.debug("C-STORE of %s failed", item.source, exc_info=True)
        return None, f"not sent: {type(exc).__name__}: {exc}", False
    if "Status" not in response:
        return None, "no response (association aborted or DIMSE timeout)", True
    status = int(response.Status)
    comment = str(response.get("ErrorComment", "") or "")
    if category(status) == "Success":
        return status, "", False
    return status, f"{describe(status)}" + (f": {comment}" if comment else ""), False


def _report(
    destination: Destination,
    planned: list[_Item],
    outcomes: dict[int, ItemOutcome],
    association_error: str | None,
) -> SendReport:
    report = SendReport(
        destination, [outcomes[item.index] for item in planned], association_error
    )
    log = LOGGER.info if association_error is None else LOGGER.warning
    log(
        "sent %d items to %s (%s@%s:%d): %d delivered (%d with warning), %d failed%s",
        len(report.per_item), destination.name, destination.ae_title, destination.host,
        destination.port, report.delivered, report.warnings, report.failed,
        f"; {association_error}" if association_error else "",
    )
    return report


def echo(
    destination: Destination,
    calling_ae: str,
    timeout: float = 10.0,
    *,
    tls_context: ssl.SSLContext | None = None,
) -> int:
    """C-ECHO `destination` once (associate, echo, release).

    Parameters
    ----------
    destination: config.Destination
        The peer.
    calling_ae: str
        Our AE title.
    timeout: float
        Seconds for each step: connect, association, response. Default 10.
    tls_context: ssl.SSLContext | None
        Client TLS context when ``destination.tls``; ignored otherwise.

    Returns
    -------
    int
        The C-ECHO response Status (``0x0000`` is Success).

    Raises
    ------
    AssociationFailedError
        If no association could be made (refused, rejected, timed out) or
        no response came.
    ValueError
        If `calling_ae` or `timeout` is invalid.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f'Argument "timeout" should be a positive number, got {timeout!r}')
    ae = _make_ae(calling_ae, AssociationTimeouts(timeout, timeout, timeout, timeout))
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc, error = _associate(ae, destination, tls_context)
    if assoc is None:
        raise AssociationFailedError(error)
    try:
        response = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in response:
        raise AssociationFailedError(
            f"no C-ECHO response from {destination.ae_title}@{destination.host}:"
            f"{destination.port} (timed out or aborted)"
        )
    return int(response.Status)
