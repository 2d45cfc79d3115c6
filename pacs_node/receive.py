"""The seam between the Storage SCP and whatever keeps received instances.

The C-STORE handler (:func:`pacs_node.handlers.handle_store`) decodes the
header of each instance, validates its identifiers and hands a
:class:`ReceivedInstance` to a :class:`Receiver`. The receiver stores the
bytes, records the instance and answers with a :class:`ReceiveOutcome`
whose status goes back to the peer. The SCP knows nothing about the
database or the file store; the storage-backed receiver knows nothing about
pynetdicom.

Examples
--------
A receiver that keeps nothing (the real ones live in the orchestration and,
for tests, ``tests/dicom_fixtures.py::DirectoryReceiver``)::

    class NullReceiver:
        def receive(self, instance: ReceivedInstance) -> ReceiveOutcome:
            return ReceiveOutcome(status=StoreStatus.SUCCESS, disposition="stored")
"""
from __future__ import annotations

import enum
import logging
import re
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from typing import Protocol, runtime_checkable

import pydicom
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from pacs_node.status import MAX_ERROR_COMMENT_LENGTH, category

LOGGER = logging.getLogger(__name__)

__all__ = [
    "DispositionValues",
    "decode_header",
    "inflate",
    "ReceiveOutcome",
    "ReceivedInstance",
    "Receiver",
    "sanitize_uid",
    "validate_uid",
]

#: A UID: digit components separated by dots (PS3.5 section 9.1).
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Longest UID (PS3.5 section 9.1, VR UI).
MAX_UID_LENGTH = 64


def validate_uid(value: object) -> tuple[bool, str]:
    """Check a value against the UID rules of PS3.5 section 9.1.

    A UID is 1-64 characters of digits and dots, made of components that
    are each ``0`` or a number without leading zeros, with no empty
    component. Returns ``(ok, reason)`` in the manner of pynetdicom's
    ``_validators.validate_ui`` rather than raising, so that a handler can
    turn the reason into a status.

    Parameters
    ----------
    value: object
        The candidate UID (``str`` or ``pydicom.uid.UID``; anything else
        fails).

    Returns
    -------
    tuple[bool, str]
        ``(True, "")`` when valid, else ``(False, reason)``; the reason is
        a short phrase such as ``"is empty"`` that contains no part of the
        value.

    Examples
    --------
    >>> validate_uid("1.2.840.10008.5.1.4.1.1.2")
    (True, '')
    >>> validate_uid("1.2.03")
    (False, 'has a component with a leading zero')
    """
    if not isinstance(value, str):
        return False, "is missing" if value is None else "is not text"
    if value == "":
        return False, "is empty"
    if len(value) > MAX_UID_LENGTH:
        return False, f"is longer than {MAX_UID_LENGTH} characters"
    if not _UID_RE.match(value):
        return False, "is not digits and dots"
    if any(len(part) > 1 and part.startswith("0") for part in value.split(".")):
        return False, "has a component with a leading zero"
    return True, ""


def sanitize_uid(value: object) -> str:
    """A UID as it may appear in logs: the value itself only when valid.

    Invalid values are reduced to their digits and dots (at most 64) and
    marked, so that text a peer put into a UID element (possibly PHI) never
    reaches a log.

    Parameters
    ----------
    value: object
        The candidate UID.

    Returns
    -------
    str
        The UID, ``"<missing>"``, ``"<empty>"`` or e.g. ``"1.2.03 (invalid)"``.

    Examples
    --------
    >>> sanitize_uid("1.2.3")
    '1.2.3'
    >>> sanitize_uid("Doe^John")
    '<invalid>'
    """
    ok, _ = validate_uid(value)
    if ok:
        return str(value)
    if value is None:
        return "<missing>"
    if not isinstance(value, str):
        return "<invalid>"
    if value == "":
        return "<empty>"
    kept = "".join(char for char in value if char.isdigit() or char == ".")[:MAX_UID_LENGTH]
    return f"{kept} (invalid)" if kept else "<invalid>"


def _stop_at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    """``stop_when`` for pydicom: stop at the first pixel data group element."""
    return tag >= 0x7FE00000


def inflate(stream: BytesIO) -> BytesIO:
    """The data set of a Deflated Explicit VR Little Endian `stream`, inflated.

    The result is Explicit VR Little Endian. A deflate stream cut short
    inflates to what it holds (truncation shows in the elements).
    """
    return BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream.getvalue()))


def decode_header(stream: BytesIO | bytes, transfer_syntax: UID | str) -> pydicom.Dataset:
    """Decode the elements of a data set that come before its pixel data.

    Parameters
    ----------
    stream: io.BytesIO | bytes
        The encoded data set (no File Meta Information) as received; a
        ``BytesIO`` is read from its start and left positioned after the
        header.
    transfer_syntax: pydicom.uid.UID | str
        Transfer syntax of the presentation context it was received on.

    Returns
    -------
    pydicom.Dataset
        Elements up to, not including, group 7FE0, decoded lazily (values
        are converted on first access, which may raise for a malformed
        element).

    Raises
    ------
    ValueError
        If `transfer_syntax` is not a transfer syntax known to pydicom.
    zlib.error
        If a deflated data set cannot be inflated.
    """
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        raise ValueError(f'Argument "transfer_syntax" should be a transfer syntax, got {syntax}')
    if isinstance(stream, (bytes, bytearray)):
        stream = BytesIO(stream)
    stream.seek(0)
    if syntax.is_deflated:
        # The header is near the start, but an inflater cannot skip: inflate all.
        stream = inflate(stream)
    return read_dataset(
        stream,
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=_stop_at_pixel_data,
    )


class DispositionValues(str, enum.Enum):
    """What a receiver did with an instance (:attr:`ReceiveOutcome.disposition`)."""

    STORED = "stored"
    """A new instance was stored and recorded."""

    DUPLICATE = "duplicate"
    """The same SOP Instance UID with the same content was already stored."""

    REPLACED = "replaced"
    """The SOP Instance UID was already stored with other content; the new
    content replaced it."""

    REFUSED = "refused"
    """Nothing was stored; the status says why."""


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance received by C-STORE, as the SCP hands it to a receiver.

    Built by the C-STORE handler from the event without decoding the pixel
    data; its UIDs are validated here, so a receiver may build file paths
    from them.

    Parameters
    ----------
    sop_class_uid: str
        SOP Class UID (0008,0016), equal to the request's Affected SOP Class UID.
    sop_instance_uid: str
        SOP Instance UID (0008,0018), equal to the request's Affected SOP
        Instance UID.
    study_instance_uid: str
        Study Instance UID (0020,000D).
    series_instance_uid: str
        Series Instance UID (0020,000E).
    transfer_syntax_uid: str
        Transfer syntax of the accepted presentation context, which is the
        one of :attr:`encoded`.
    calling_ae_title: str
        The peer's AE title, without padding.
    peer_address: str
        The peer's IP address (no port).
    dataset: pydicom.Dataset
        The header: every element before the pixel data group (7FE0,xxxx),
        decoded lazily by pydicom. Pixel data is not in it; it is only in
        :attr:`encoded`, still encoded.
    encoded: bytes
        The complete DICOM Part 10 file to store as-is: preamble, ``DICM``,
        File Meta Information (Media Storage SOP Class/Instance UID from the
        request, Transfer Syntax UID of the context, Source/Receiving AE
        Title = the node, Sending AE Title = the peer) and the data set
        bytes exactly as received.

    Raises
    ------
    ValueError
        If a UID is not valid (the message names the argument) or `encoded`
        is not a Part 10 byte string.
    TypeError
        If `dataset` is not a ``pydicom.Dataset`` or `encoded` not bytes.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    peer_address: str
    dataset: pydicom.Dataset = field(repr=False, compare=False)
    encoded: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in (
            "sop_class_uid",
            "sop_instance_uid",
            "study_instance_uid",
            "series_instance_uid",
            "transfer_syntax_uid",
        ):
            ok, reason = validate_uid(getattr(self, name))
            if not ok:
                raise ValueError(f'Argument "{name}" should be a valid UID; it {reason}.')
            object.__setattr__(self, name, str(getattr(self, name)))
        if not isinstance(self.dataset, pydicom.Dataset):
            raise TypeError(
                f'Argument "dataset" should be a pydicom Dataset, got {type(self.dataset).__name__}'
            )
        if not isinstance(self.encoded, bytes):
            raise TypeError(
                f'Argument "encoded" should be bytes, got {type(self.encoded).__name__}'
            )
        if len(self.encoded) < 132 or self.encoded[128:132] != b"DICM":
            raise ValueError(
                'Argument "encoded" should be a DICOM Part 10 file (preamble and "DICM" prefix).'
            )


@dataclass(frozen=True, kw_only=True)
class ReceiveOutcome:
    """A receiver's answer: the DIMSE status for the peer and what happened.

    Parameters
    ----------
    status: int
        Status (0000,0900) to return in the C-STORE response, e.g.
        :attr:`pacs_node.status.StoreStatus.SUCCESS`.
    disposition: str
        ``"stored"``, ``"duplicate"``, ``"replaced"`` or ``"refused"``;
        stored as the :class:`DispositionValues` member (a ``str``).
        ``"refused"`` goes with a failure status and the others with
        Success or a Warning.
    comment: str
        Error Comment (0000,0902) sent with a non-success status: at most 64
        characters of printable ASCII, no PHI. Default ``""``.

    Raises
    ------
    ValueError
        If `status` is outside 0x0000-0xFFFF, `comment` too long or not
        printable ASCII, `disposition` unknown, or the disposition
        contradicts the status.
    TypeError
        If `status` is not an int or `comment` not a str.
    """

    status: int
    disposition: str
    comment: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise TypeError(
                f'Argument "status" should be an int, got {type(self.status).__name__}'
            )
        if not 0 <= self.status <= 0xFFFF:
            raise ValueError(f'Argument "status" should be in 0x0000-0xFFFF, got {self.status}')
        try:
            disposition = DispositionValues(self.disposition)
        except ValueError:
            allowed = ", ".join(repr(v.value) for v in DispositionValues)
            raise ValueError(
                f'Argument "disposition" should be one of {allowed}, got {self.disposition!r}'
            ) from None
        object.__setattr__(self, "disposition", disposition)
        if not isinstance(self.comment, str):
            raise TypeError(
                f'Argument "comment" should be a str, got {type(self.comment).__name__}'
            )
        if len(self.comment) > MAX_ERROR_COMMENT_LENGTH:
            raise ValueError(
                f'Argument "comment" should be at most {MAX_ERROR_COMMENT_LENGTH} characters, '
                f"got {len(self.comment)}"
            )
        if any(not 0x20 <= ord(char) <= 0x7E for char in self.comment) or "\\" in self.comment:
            raise ValueError(
                'Argument "comment" should be printable ASCII without backslash (VR LO).'
            )
        delivered = category(self.status) in ("Success", "Warning")
        if delivered == (disposition is DispositionValues.REFUSED):
            raise ValueError(
                f'Argument "disposition" {disposition.value!r} contradicts status '
                f"0x{self.status:04X} ({category(self.status)})"
            )


@runtime_checkable
class Receiver(Protocol):
    """Keeps received instances; the Storage SCP's only dependency.

    Implementations must be thread-safe (pynetdicom runs each association
    in its own thread) and fast (the peer waits for the answer). They
    return a failure :class:`ReceiveOutcome` for expected failures (e.g.
    :attr:`~pacs_node.status.StoreStatus.REFUSED_OUT_OF_RESOURCES` when the
    database is unavailable) instead of raising. An exception that escapes
    is answered by the handler (``OSError`` -> ``0xA700``, anything else ->
    ``0xC211``) and logged with its traceback.
    """

    def receive(self, instance: ReceivedInstance) -> ReceiveOutcome:
        """Store and record `instance`; return the status for the peer."""
        ...  # pragma: no cover
