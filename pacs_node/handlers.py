"""pynetdicom event handlers of the node's SCP: C-ECHO, C-STORE, association checks.

Handlers are plain functions ``handle_x(event, *deps)`` bound with their
dependencies (see :func:`pacs_node.ae.start_scp`)::

    evt_handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver, holds]),
        (evt.EVT_REQUESTED, handle_association_request, [policy]),
        (evt.EVT_ACCEPTED, handle_association_accepted),
        (evt.EVT_REJECTED, handle_association_rejected),
        (evt.EVT_RELEASED, handle_association_closed),
        (evt.EVT_ABORTED, handle_association_closed),
    ]

The C-STORE handler decodes only the header, validates the identifiers,
hands a :class:`~pacs_node.receive.ReceivedInstance` to the receiver and
returns its status. It never runs inference and never sends a traceback to
the peer.
"""
from __future__ import annotations

import enum
import ipaddress
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, cast

from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta

from config import CallingAE
from config.validators import to_ae_title
from pacs_node.dataset_checks import PIXEL_DATA, inspect_encoding, pixel_data_problem
from pacs_node.holds import SeriesHolds, association_label
from pacs_node.receive import (
    DispositionValues,
    ReceivedInstance,
    ReceiveOutcome,
    Receiver,
    decode_header,
    inflate,
    sanitize_uid,
    validate_uid,
)
from pacs_node.request_checks import request_problem
from pacs_node.status import MAX_ERROR_COMMENT_LENGTH, StoreStatus, VerificationStatus, category
from pacs_node.tls import association_socket, peer_certificate_subject

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.association import Association
    from pynetdicom.events import Event

LOGGER = logging.getLogger(__name__)

__all__ = [
    "AssociationPolicy",
    "RejectReasonValues",
    "association_counts",
    "handle_association_accepted",
    "handle_association_closed",
    "handle_association_rejected",
    "handle_association_request",
    "handle_echo",
    "handle_store",
    "host_matches",
    "rejection_reason",
]

#: Identifying attributes checked in every received data set: keyword,
#: (group, element) tag and the status sent when the value is missing,
#: empty or not a valid UID. SOP Class/Instance UID identify the object
#: (DCMTK storescp answers Cannot Understand when they are absent); Study
#: and Series Instance UID are Type 1 in every composite IOD, so their
#: absence means the data set does not match its SOP class.
_IDENTIFIERS: tuple[tuple[str, int, StoreStatus], ...] = (
    ("SOPClassUID", 0x00080016, StoreStatus.ERROR_CANNOT_UNDERSTAND),
    ("SOPInstanceUID", 0x00080018, StoreStatus.ERROR_CANNOT_UNDERSTAND),
    ("StudyInstanceUID", 0x0020000D, StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    ("SeriesInstanceUID", 0x0020000E, StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
)
_NAMES = {
    "SOPClassUID": "SOP Class UID",
    "SOPInstanceUID": "SOP Instance UID",
    "StudyInstanceUID": "Study Instance UID",
    "SeriesInstanceUID": "Series Instance UID",
}


def _identifier(header: Dataset, tag: int) -> str | None:
    """The value of a UI element as text, read from its raw bytes.

    Bypasses pydicom's value conversion, whose validation warnings would
    log an invalid value (which might be anything a peer put there) verbatim.

    Returns
    -------
    str | None
        Without trailing NULs and spaces (non-ASCII bytes become U+FFFD, which
        no valid UID contains); ``None`` when the element is absent.
    """
    element = header.get_item(tag)
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        raw = element.value or b""
        return raw.decode("ascii", errors="replace").rstrip("\0 ")
    value = element.value
    return value if isinstance(value, str) or value is None else str(value)


def _status(status: int, comment: str = "", offending: int | None = None) -> Dataset:
    """The status data set of a C-STORE response (PS3.7 C.4)."""
    rsp = Dataset()
    rsp.Status = int(status)
    if comment and status != StoreStatus.SUCCESS:
        rsp.ErrorComment = comment[:MAX_ERROR_COMMENT_LENGTH]
    if offending is not None and status != StoreStatus.SUCCESS:
        rsp.OffendingElement = [offending]
    return rsp


def _peer(event: Event) -> tuple[str, str]:
    """Calling AE title (stripped) and IP address of the peer of `event`."""
    requestor = event.assoc.requestor
    title = requestor.ae_title or getattr(requestor.primitive, "calling_ae_title", "") or ""
    return str(title).strip(), str(requestor.address)


def _file_bytes(event: Event, calling_ae: str) -> bytes:
    """The received data set as a Part 10 file, without re-encoding it."""
    meta = event.file_meta
    own_ae = str(event.assoc.acceptor.ae_title).strip()
    meta.SourceApplicationEntityTitle = own_ae
    meta.SendingApplicationEntityTitle = calling_ae
    meta.ReceivingApplicationEntityTitle = own_ae
    prefix = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    stream = cast(C_STORE, event.request).DataSet
    if not isinstance(stream, BytesIO):
        raise TypeError("the C-STORE request has no data set")  # checked by _store first
    with stream.getbuffer() as view:
        return b"".join((prefix, view))


def handle_echo(event: Event) -> int:
    """Answer a C-ECHO request (Verification Service Class, PS3.4 Annex A).

    **Event** ``evt.EVT_C_ECHO``. **Uses** ``event.assoc.requestor``
    (logging only). **Returns** ``0x0000`` Success, always.

    Parameters
    ----------
    event: pynetdicom.events.Event
        The C-ECHO request event.

    Returns
    -------
    int
        :attr:`~pacs_node.status.VerificationStatus.SUCCESS`.
    """
    calling_ae, address = _peer(event)
    LOGGER.debug("C-ECHO from AE %r at %s", calling_ae, address)
    return int(VerificationStatus.SUCCESS)


def handle_store(event: Event, receiver: Receiver, holds: SeriesHolds | None = None) -> Dataset:
    """Validate one received instance and hand it to `receiver`.

    Bind with ``(evt.EVT_C_STORE, handle_store, [receiver, holds])``.

    **Event**

    ``evt.EVT_C_STORE`` (Storage Service Class, PS3.4 Annex B).

    **Attributes used**

    * ``event.request``: *Affected SOP Class UID*, *Affected SOP Instance
      UID* and the encoded *Data Set* (read from its start; the header only,
      pixel data stays encoded);
    * ``event.context.transfer_syntax``: how the data set is encoded;
    * ``event.file_meta``: File Meta Information of the stored file;
    * ``event.assoc.requestor`` (calling AE title, address) and
      ``event.assoc.acceptor`` (our AE title).

    **Checks, in order, and statuses returned**

    ``0xC210`` Cannot Understand (pynetdicom: cannot decode)
        The header of the data set cannot be decoded, or the data set is
        truncated: it ends inside an element of the header or of the pixel
        data (:func:`pacs_node.dataset_checks.inspect_encoding`); Error
        Comment "Data set truncated in element (gggg,eeee)".
    ``0xC000`` Error: Cannot Understand
        SOP Class UID (0008,0016) or SOP Instance UID (0008,0018) missing,
        empty or not a valid UID (``^[0-9]+(\\.[0-9]+)*$``, no leading
        zeros, at most 64 characters). Offending Element names the tag.
    ``0xA900`` Error: Data Set Does Not Match SOP Class
        SOP Class UID or SOP Instance UID differ from the request's Affected
        SOP Class/Instance UID; or Study Instance UID (0020,000D) or Series
        Instance UID (0020,000E) missing, empty or invalid; or the pixel
        data contradicts the Image Pixel module: missing although Rows and
        Columns are present (or in a CT image), native pixel data whose
        length is not Rows x Columns x frames x samples x BitsAllocated / 8
        (:func:`pacs_node.dataset_checks.pixel_data_problem`; Offending
        Element (7FE0,0010)).
    status of the receiver
        Otherwise: :meth:`Receiver.receive` decides (``0x0000`` Success,
        ``0xB000``... warnings, ``0xA700`` out of resources, ...).
    ``0xA700`` Refused: Out of Resources
        The receiver raised ``OSError`` or ``MemoryError`` (e.g. disk full).
    ``0xC211`` Cannot Understand (pynetdicom: handler exception)
        The receiver raised anything else, or returned something that is
        not a :class:`~pacs_node.receive.ReceiveOutcome`.

    After a success or warning status of the receiver, `holds` (if any)
    learns that this association delivered an instance of the series
    (:meth:`pacs_node.holds.SeriesHolds.delivered`).

    Every non-success status carries an Error Comment (0000,0902) of at
    most 64 characters without PHI. Each refusal is logged at WARNING with
    the calling AE and the sanitised series and instance UIDs; an
    unexpected receiver failure is logged at ERROR with its traceback, on
    our side only.

    Parameters
    ----------
    event: pynetdicom.events.Event
        The C-STORE request event.
    receiver: pacs_node.receive.Receiver
        Keeps the instance.
    holds: pacs_node.holds.SeriesHolds | None
        Open associations per series, for the series watcher.

    Returns
    -------
    pydicom.Dataset
        Status (0000,0900), and Error Comment (0000,0902) / Offending
        Element (0000,0901) when not success.
    """
    response = _store(event, receiver, holds)
    _STATS.count(event.assoc, int(response.Status))
    return response


def _store(event: Event, receiver: Receiver, holds: SeriesHolds | None) -> Dataset:
    """Body of :func:`handle_store`."""
    calling_ae, address = _peer(event)
    request = cast(C_STORE, event.request)
    command_instance = request.AffectedSOPInstanceUID
    try:
        if not isinstance(request.DataSet, BytesIO):
            raise ValueError("no data set in the C-STORE request")
        data, syntax = request.DataSet, event.context.transfer_syntax
        if syntax.is_deflated:  # inflate once, for both readers below
            data, syntax = inflate(data), ExplicitVRLittleEndian
        header = decode_header(data, syntax)
        # Right after decode_header: it reads on from where that left the stream.
        encoding = inspect_encoding(data, syntax, header)
        values = {keyword: _identifier(header, tag) for keyword, tag, _ in _IDENTIFIERS}
    except Exception as exc:  # pydicom raises many types for malformed data
        LOGGER.warning(
            "C-STORE from AE %r at %s: refused instance %s: cannot decode data set (%s)",
            calling_ae, address, sanitize_uid(command_instance), type(exc).__name__,
        )
        return _status(StoreStatus.ERROR_CANNOT_DECODE, "Cannot decode the data set")

    series_log = sanitize_uid(values["SeriesInstanceUID"])
    instance_log = sanitize_uid(values["SOPInstanceUID"])
    if values["SOPInstanceUID"] in (None, ""):
        instance_log += f" (request: {sanitize_uid(command_instance)})"

    def refuse(status: StoreStatus, comment: str, offending: int | None) -> Dataset:
        LOGGER.warning(
            "C-STORE from AE %r at %s: refused instance %s of series %s: 0x%04X %s",
            calling_ae, address, instance_log, series_log, status, comment,
        )
        return _status(status, comment, offending)

    if encoding.truncated:
        tag = encoding.truncated_tag
        where = "" if tag is None else f" in element ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        return refuse(StoreStatus.ERROR_CANNOT_DECODE, f"Data set truncated{where}", tag)
    for keyword, tag, status in _IDENTIFIERS[:2]:
        ok, reason = validate_uid(values[keyword])
        if not ok:
            return refuse(status, f"{_NAMES[keyword]} {reason}", tag)
    if values["SOPClassUID"] != request.AffectedSOPClassUID:
        return refuse(
            StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class UID differs from Affected SOP Class UID",
            0x00080016,
        )
    if values["SOPInstanceUID"] != command_instance:
        return refuse(
            StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Instance UID differs from Affected SOP Instance UID",
            0x00080018,
        )
    for keyword, tag, status in _IDENTIFIERS[2:]:
        ok, reason = validate_uid(values[keyword])
        if not ok:
            return refuse(status, f"{_NAMES[keyword]} {reason}", tag)
    problem = pixel_data_problem(header, encoding, event.context.transfer_syntax)
    if problem is not None:
        return refuse(StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS, problem, PIXEL_DATA)

    instance = ReceivedInstance(
        sop_class_uid=str(values["SOPClassUID"]),
        sop_instance_uid=str(values["SOPInstanceUID"]),
        study_instance_uid=str(values["StudyInstanceUID"]),
        series_instance_uid=str(values["SeriesInstanceUID"]),
        transfer_syntax_uid=event.context.transfer_syntax,
        calling_ae_title=calling_ae,
        peer_address=address,
        dataset=header,
        encoded=_file_bytes(event, calling_ae),
    )
    try:
        outcome = receiver.receive(instance)
    except (OSError, MemoryError) as exc:
        LOGGER.error(
            "C-STORE from AE %r at %s: cannot store instance %s of series %s",
            calling_ae, address, instance_log, series_log, exc_info=True,
        )
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return _status(StoreStatus.REFUSED_OUT_OF_RESOURCES, f"Cannot store: {text}")
    except Exception:  # the peer gets a status; the traceback stays in our log
        LOGGER.error(
            "C-STORE from AE %r at %s: receiver failed on instance %s of series %s",
            calling_ae, address, instance_log, series_log, exc_info=True,
        )
        return _status(StoreStatus.ERROR_UNHANDLED_EXCEPTION, "Internal error while storing")
    if not isinstance(outcome, ReceiveOutcome):
        LOGGER.error(
            "receiver %s returned %s instead of a ReceiveOutcome (instance %s)",
            type(receiver).__name__, type(outcome).__name__, instance_log,
        )
        return _status(StoreStatus.ERROR_UNHANDLED_EXCEPTION, "Internal error while storing")
    if holds is not None and category(outcome.status) in ("Success", "Warning"):
        label = association_label(calling_ae, address, event.assoc.requestor.port)
        holds.delivered(event.assoc, instance.series_instance_uid, label)
    log = LOGGER.debug if category(outcome.status) == "Success" else LOGGER.warning
    log(
        "C-STORE from AE %r at %s: instance %s of series %s %s (0x%04X)",
        calling_ae, address, instance_log, series_log, DispositionValues(outcome.disposition).value,
        outcome.status,
    )
    return _status(outcome.status, outcome.comment)


# -- associations -------------------------------------------------------------


class RejectReasonValues(enum.IntEnum):
    """Reason/Diag. of an A-ASSOCIATE-RJ whose source is the service user (PS3.8 9.3.4)."""

    NO_REASON_GIVEN = 0x01
    """``1`` no-reason-given."""

    APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 0x02
    """``2`` application-context-name-not-supported."""

    CALLING_AE_TITLE_NOT_RECOGNIZED = 0x03
    """``3`` calling-AE-title-not-recognized."""

    CALLED_AE_TITLE_NOT_RECOGNIZED = 0x07
    """``7`` called-AE-title-not-recognized."""


#: A-ASSOCIATE-RJ Result (PS3.8 9.3.4): the node's rejections are permanent
#: (1): a retry with the same titles would be rejected again.
REJECT_RESULT_PERMANENT = 0x01
#: A-ASSOCIATE-RJ Source: DICOM UL service-user (1).
REJECT_SOURCE_SERVICE_USER = 0x01


@dataclass(frozen=True)
class AssociationPolicy:
    """Who may associate with the node's SCP.

    Parameters
    ----------
    ae_title: str
        The node's own AE title.
    allowed_calling_aes: tuple[config.CallingAE, ...]
        Peers allowed to associate; an entry with a ``host`` also requires
        the peer's IP address to equal it. Empty (default): anyone.
        Strings (``"AE"`` or ``"AE@host"``) are converted.
    require_called_ae: bool
        Reject requests whose Called AE Title is not `ae_title`. Default
        ``True``.

    Raises
    ------
    ValueError
        If `ae_title` or an allowed calling AE is not valid.
    """

    ae_title: str
    allowed_calling_aes: tuple[CallingAE, ...] = ()
    require_called_ae: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "ae_title", to_ae_title(self.ae_title))
        except ValueError as exc:
            raise ValueError(f'Argument "ae_title" {exc}') from None
        entries = []
        for value in self.allowed_calling_aes:
            try:
                entries.append(CallingAE.parse(value))
            except ValueError as exc:
                raise ValueError(f'Argument "allowed_calling_aes" {exc}') from None
        object.__setattr__(self, "allowed_calling_aes", tuple(entries))
        object.__setattr__(self, "require_called_ae", bool(self.require_called_ae))

    def check(
        self, called_ae: str, calling_ae: str, address: str
    ) -> tuple[RejectReasonValues | None, str]:
        """Decide on an association request.

        Parameters
        ----------
        called_ae: str
            Called AE Title of the A-ASSOCIATE-RQ.
        calling_ae: str
            Calling AE Title of the A-ASSOCIATE-RQ.
        address: str
            The peer's IP address.

        Returns
        -------
        tuple[RejectReasonValues | None, str]
            ``(None, "")`` to accept, else the reason to send in the
            A-ASSOCIATE-RJ and a sentence for the log.
        """
        called = str(called_ae).strip(" ")
        calling = str(calling_ae).strip(" ")
        if self.require_called_ae and called != self.ae_title:
            return (
                RejectReasonValues.CALLED_AE_TITLE_NOT_RECOGNIZED,
                f"called AE title {called!r} is not ours ({self.ae_title!r})",
            )
        if self.allowed_calling_aes:
            titles = [entry for entry in self.allowed_calling_aes if entry.ae_title == calling]
            if not titles:
                return (
                    RejectReasonValues.CALLING_AE_TITLE_NOT_RECOGNIZED,
                    f"calling AE title {calling!r} is not in the allow-list",
                )
            if not any(entry.host is None or host_matches(entry.host, address) for entry in titles):
                return (
                    RejectReasonValues.CALLING_AE_TITLE_NOT_RECOGNIZED,
                    f"calling AE title {calling!r} is not allowed from {address}",
                )
        return None, ""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        value = ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return value.ipv4_mapped
    return value


def host_matches(host: str, address: str) -> bool:
    """Whether the peer `address` is `host` (an allow-list entry's ``host``).

    Parameters
    ----------
    host: str
        An IP address (``10.0.0.7``, ``::1``) or a host name. A host name is
        looked up (``getaddrinfo``) at each check, so DNS changes apply
        without a restart; a name that does not resolve matches nothing.
    address: str
        The peer's IP address as the socket reports it (an IPv4-mapped IPv6
        address counts as its IPv4 address).

    Returns
    -------
    bool
        Whether one of `host`'s addresses equals `address`.
    """
    peer = _ip(address)
    if peer is None:
        return host == address
    literal = _ip(host)
    if literal is not None:
        return literal == peer
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        LOGGER.warning("allow-list host %r does not resolve: %s", host, exc)
        return False
    return any(_ip(str(info[4][0])) == peer for info in infos)


class _AssociationStats:
    """Per-association counts of C-STORE outcomes and rejection reasons, for logs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: weakref.WeakKeyDictionary[Association, list[int]] = (
            weakref.WeakKeyDictionary()
        )
        self._reasons: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()

    def count(self, assoc: Association, status: int) -> None:
        index = {"Success": 0, "Warning": 1}.get(category(status), 2)
        with self._lock:
            self._counts.setdefault(assoc, [0, 0, 0])[index] += 1

    def counts(self, assoc: Association) -> list[int]:
        # Not popped: the audit and the log both read them; the entry goes
        # with the association object (weak key).
        with self._lock:
            return list(self._counts.get(assoc, [0, 0, 0]))

    def set_reason(self, assoc: Association, reason: str) -> None:
        with self._lock:
            self._reasons[assoc] = reason

    def reason(self, assoc: Association) -> str | None:
        with self._lock:
            return self._reasons.get(assoc)


_STATS = _AssociationStats()

_DIAGNOSTIC_TEXT: dict[tuple[int, int], str] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def association_counts(assoc: Association) -> tuple[int, int, int]:
    """C-STORE outcomes on `assoc` so far: (success, warning, refused).

    Counted by :func:`handle_store`; all zero for an association it never served.
    """
    stored, warned, failed = _STATS.counts(assoc)
    return stored, warned, failed


def rejection_reason(assoc: Association) -> str:
    """Why `assoc` was rejected, in words (no PHI).

    The sentence of :meth:`AssociationPolicy.check` when the node's policy
    rejected it, else the meaning of the A-ASSOCIATE-RJ source and reason
    that pynetdicom sent (e.g. ``"local limit exceeded"``).
    """
    reason = _STATS.reason(assoc)
    if reason is None:
        primitive = assoc.acceptor.primitive
        key = (getattr(primitive, "result_source", 0), getattr(primitive, "diagnostic", 0))
        reason = _DIAGNOSTIC_TEXT.get(key, f"source {key[0]}, reason {key[1]}")
    return reason


def handle_association_request(event: Event, policy: AssociationPolicy) -> None:
    """Reject an association request that `policy` does not allow.

    **Event** ``evt.EVT_REQUESTED`` (an A-ASSOCIATE-RQ arrived; runs
    before pynetdicom negotiates). **Uses** ``event.assoc.requestor``
    (primitive: called and calling AE title; address). On rejection it
    sends A-ASSOCIATE-RJ with result *rejected-permanent*, source
    *service-user* and reason *called-AE-title-not-recognized* (7) or
    *calling-AE-title-not-recognized* (3), triggers ``evt.EVT_REJECTED``
    and stops the association, as pynetdicom does for its own checks.
    A request that pynetdicom could not negotiate
    (:func:`pacs_node.request_checks.request_problem`: no DICOM application
    context, no presentation context, one without abstract or transfer
    syntax) is rejected first, with reason *no-reason-given* (1), or
    *application-context-name-not-supported* (2).

    Parameters
    ----------
    event: pynetdicom.events.Event
        The request event.
    policy: AssociationPolicy
        Who may associate.
    """
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    problem = request_problem(primitive)
    if problem is not None:
        reason: RejectReasonValues | None = (
            RejectReasonValues.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED
            if "application context" in problem
            else RejectReasonValues.NO_REASON_GIVEN
        )
        text = f"malformed A-ASSOCIATE-RQ: {problem}"
    else:
        called = str(getattr(primitive, "called_ae_title", "") or "")
        calling = str(getattr(primitive, "calling_ae_title", "") or "")
        reason, text = policy.check(called, calling, str(assoc.requestor.address))
    if reason is None:
        return
    _STATS.set_reason(assoc, text)
    assoc.acse.send_reject(REJECT_RESULT_PERMANENT, REJECT_SOURCE_SERVICE_USER, int(reason))
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def handle_association_accepted(event: Event) -> None:
    """Log an accepted association at INFO: calling AE, address, contexts.

    **Event** ``evt.EVT_ACCEPTED``. **Uses** ``event.assoc.requestor`` and
    ``event.assoc.accepted_contexts`` / ``rejected_contexts``.
    """
    calling_ae, address = _peer(event)
    assoc = event.assoc
    sock = association_socket(assoc)
    if isinstance(sock, ssl.SSLSocket):
        subject = peer_certificate_subject(sock)
        certificate = f"client certificate {subject}" if subject else "no client certificate"
        transport = f" over TLS ({certificate})"
    else:
        transport = ""
    LOGGER.info(
        "association from AE %r at %s:%s accepted%s (%d presentation contexts accepted, "
        "%d rejected)",
        calling_ae, address, assoc.requestor.port, transport,
        len(assoc.accepted_contexts), len(assoc.rejected_contexts),
    )


def handle_association_rejected(event: Event) -> None:
    """Log a rejected association at INFO: calling AE, address, reason.

    **Event** ``evt.EVT_REJECTED`` (by :func:`handle_association_request`
    or by pynetdicom itself, e.g. too many associations). **Uses**
    ``event.assoc.requestor`` and the A-ASSOCIATE-RJ primitive in
    ``event.assoc.acceptor.primitive``.
    """
    calling_ae, address = _peer(event)
    assoc = event.assoc
    reason = rejection_reason(assoc)
    LOGGER.info(
        "association from AE %r at %s:%s rejected: %s",
        calling_ae, address, assoc.requestor.port, reason,
    )


def handle_association_closed(event: Event) -> None:
    """Log the end of an association at INFO with its C-STORE counts.

    **Event** ``evt.EVT_RELEASED`` or ``evt.EVT_ABORTED``. **Uses**
    ``event.assoc.requestor`` and the counts kept by :func:`handle_store`.
    """
    calling_ae, address = _peer(event)
    stored, warned, failed = association_counts(event.assoc)
    how = "released" if event.event is evt.EVT_RELEASED else "aborted"
    LOGGER.info(
        "association from AE %r at %s %s: %d instances stored, %d with warning, %d refused",
        calling_ae, address, how, stored, warned, failed,
    )


#: Handlers that log association outcomes (no dependencies).
LOGGING_HANDLERS: tuple[tuple[evt.EventType, Callable[[Event], None]], ...] = (
    (evt.EVT_ACCEPTED, handle_association_accepted),
    (evt.EVT_REJECTED, handle_association_rejected),
    (evt.EVT_RELEASED, handle_association_closed),
    (evt.EVT_ABORTED, handle_association_closed),
)
