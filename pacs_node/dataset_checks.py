"""Structural checks of a received data set: complete, with the pixel data it declares.

The C-STORE handler (:func:`pacs_node.handlers.handle_store`) decodes only
the header of an instance (:func:`pacs_node.receive.decode_header`). Two
kinds of broken input would still pass that and be stored with Success,
only to fail much later in a job, after the peer was told all was well:

* a **truncated** data set: pydicom reads a cut-off value without complaint,
  and the pixel data element after the header may declare more bytes (or
  fragments) than arrived;
* **pixel data that contradicts the Image Pixel module**: Pixel Data
  missing although Rows and Columns are present, or native (uncompressed)
  pixel data whose length is not Rows x Columns x Number of Frames x
  Samples per Pixel x Bits Allocated / 8 (PS3.5 8.1.1, PS3.3 C.7.6.3),
  e.g. Bits Allocated 8 on 16-bit data, wrong Rows/Columns, or Rows =
  Columns = 65535 with a few bytes of pixel data.

:func:`inspect_encoding` walks the elements after the header without
copying or decoding pixel data (microseconds, whatever the size), and
:func:`pixel_data_problem` compares what it found with the header. The
handler answers ``0xC210`` (cannot decode) for a truncated data set and
``0xA900`` (data set does not match SOP class) for a pixel data
contradiction. Compressed pixel data cannot be checked against Rows/Columns
without decoding it; the volume builder does that later, behind size
limits (:mod:`inference.volume_checks`).

Examples
--------
>>> from io import BytesIO
>>> from pydicom.uid import ExplicitVRLittleEndian
>>> report = inspect_encoding(BytesIO(b""), ExplicitVRLittleEndian)
>>> report.truncated_tag is None, report.pixel_tag is None
(True, True)
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
)

from pacs_node.receive import decode_header, inflate

LOGGER = logging.getLogger(__name__)

__all__ = ["EncodingReport", "inspect_encoding", "pixel_data_problem"]

#: (7FE0,0010) Pixel Data; (7FE0,0008) Float and (7FE0,0009) Double Float Pixel Data.
PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR",
                       b"UT", b"SV", b"UV"})
#: SOP classes whose instances are images even when Rows/Columns were cut off.
_CT_IMAGE_CLASSES = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD


@dataclass(frozen=True)
class EncodingReport:
    """What follows the header of a data set.

    Parameters
    ----------
    truncated: bool
        The data ends inside an element (of the header or the pixel data).
    truncated_tag: int | None
        That element's tag, when known.
    pixel_tag: int | None
        Tag of the pixel data element found ((7FE0,0010), (7FE0,0008) or
        (7FE0,0009)), or ``None``.
    pixel_length: int | None
        Value length of native pixel data; ``None`` when encapsulated or absent.
    fragments: int
        Number of fragments of encapsulated pixel data (the Basic Offset
        Table item not counted).
    """

    truncated: bool = False
    truncated_tag: int | None = None
    pixel_tag: int | None = None
    pixel_length: int | None = None
    fragments: int = 0


def _cut(tag: int | None, pixel_tag: int | None = None, fragments: int = 0) -> EncodingReport:
    return EncodingReport(
        truncated=True, truncated_tag=tag, pixel_tag=pixel_tag, fragments=fragments
    )


def _body(data: BytesIO, syntax: UID) -> tuple[memoryview | bytes, int]:
    """The data set bytes (inflated if need be) and where its header ends."""
    if syntax.is_deflated:
        stream = inflate(data)
        decode_header(stream, ExplicitVRLittleEndian)  # leaves the stream after the header
        return stream.getbuffer(), stream.tell()
    return data.getbuffer(), data.tell()


def _header_problem(header: Dataset, end: int) -> EncodingReport | None:
    """A header element cut short, or bytes after the last one too few for an element.

    pydicom reads a value shorter than its declared length without
    complaint, and stops silently when fewer than 8 bytes are left for the
    next element header.
    """
    last_end = 0
    for tag in header.keys():
        element = header.get_item(tag)
        if not isinstance(element, RawDataElement):
            continue
        if element.length == _UNDEFINED:
            last_end = -1  # end unknown (sequence of undefined length)
            continue
        if isinstance(element.value, (bytes, bytearray)) and len(element.value) < element.length:
            return _cut(int(tag))
        last_end = element.value_tell + element.length
    if 0 < last_end < end and end - last_end < 8:
        return _cut(None)
    return None


def inspect_encoding(
    data: BytesIO, transfer_syntax: UID | str, header: Dataset | None = None
) -> EncodingReport:
    """Walk the elements after the header: complete? which pixel data?

    Call it right after :func:`pacs_node.receive.decode_header` on the same
    stream: for a non-deflated transfer syntax it starts where that left the
    stream (the first element of group 7FE0 or later); a deflated data set is
    inflated and its header skipped again here.

    Parameters
    ----------
    data: io.BytesIO
        The encoded data set as received, positioned after its header.
    transfer_syntax: pydicom.uid.UID | str
        Transfer syntax of the presentation context.
    header: pydicom.Dataset | None
        The decoded header, to find a header element cut short by the end of
        the data.

    Returns
    -------
    EncodingReport
        Malformed bytes raise nothing: a walk that runs out of data reports
        the element it was in as truncated.
    """
    syntax = UID(transfer_syntax)
    body, offset = _body(data, syntax)
    end = len(body)
    if header is not None and offset >= end:
        problem = _header_problem(header, end)
        if problem is not None:
            return problem
    order = "<" if syntax.is_little_endian else ">"
    while offset < end:
        if offset + 8 > end:
            return _cut(None)
        group, element = struct.unpack_from(f"{order}HH", body, offset)
        tag = group << 16 | element
        if syntax.is_implicit_VR:
            (length,) = struct.unpack_from(f"{order}L", body, offset + 4)
            offset += 8
        elif bytes(body[offset + 4:offset + 6]) in _LONG_VRS:
            if offset + 12 > end:
                return _cut(tag)
            (length,) = struct.unpack_from(f"{order}L", body, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from(f"{order}H", body, offset + 6)
            offset += 8
        if tag in _PIXEL_TAGS:
            if length == _UNDEFINED:
                return _walk_fragments(body, offset, end, tag)
            if offset + length > end:
                return _cut(tag, pixel_tag=tag)
            return EncodingReport(pixel_tag=tag, pixel_length=length)
        if length == _UNDEFINED:
            break  # not pixel data, undefined length: nothing more to learn cheaply
        if offset + length > end:
            return _cut(tag)
        offset += length
    return EncodingReport()


def _walk_fragments(body: memoryview | bytes, offset: int, end: int, tag: int) -> EncodingReport:
    """Items of encapsulated pixel data up to the sequence delimiter (little endian)."""
    items = 0
    while offset + 8 <= end:
        group, element, length = struct.unpack_from("<HHL", body, offset)
        item_tag = group << 16 | element
        offset += 8
        if item_tag == _SEQUENCE_DELIMITER:
            return EncodingReport(pixel_tag=tag, fragments=max(items - 1, 0))
        if item_tag != _ITEM or length == _UNDEFINED or offset + length > end:
            break
        items += 1
        offset += length
    return _cut(tag, pixel_tag=tag, fragments=max(items - 1, 0))


def _value(header: Dataset, keyword: str) -> object:
    """``header.get(keyword)``; ``_UNDECODABLE`` when pydicom cannot convert the element.

    pydicom converts an element on first access and raises for a malformed
    one (unknown VR, a length that is no multiple of the value size, ...)
    with exception types that share no base class; found by
    ``tests/test_fuzz_ingest.py`` (the handler answered 0xC211).
    """
    try:
        return header.get(keyword)
    except Exception:  # pydicom's conversion errors have no common base class
        return _UNDECODABLE


#: What :func:`_value` returns for an element pydicom cannot decode.
_UNDECODABLE = object()


def _count(header: Dataset, keyword: str, default: int | None = None) -> int | None:
    """An integer attribute of the header; `default` if absent or empty, -1 if not a number."""
    value = _value(header, keyword)
    if value is _UNDECODABLE:
        return -1
    if value is None or value == "":
        return default
    if not isinstance(value, (int, float, str)):  # e.g. several values
        return -1
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def pixel_data_problem(
    header: Dataset, report: EncodingReport, transfer_syntax: UID | str
) -> str | None:
    """Whether the pixel data contradicts the Image Pixel module of the header.

    Parameters
    ----------
    header: pydicom.Dataset
        The decoded header.
    report: EncodingReport
        From :func:`inspect_encoding` (not truncated).
    transfer_syntax: pydicom.uid.UID | str
        Transfer syntax of the data set.

    Returns
    -------
    str | None
        ``None`` when consistent or when there is nothing to check (no pixel
        data and neither Rows/Columns nor a CT image SOP class; float pixel
        data; compressed pixel data with at least one fragment). Else an
        Error Comment (at most 64 characters, counts only), e.g.
        ``"Pixel Data has 512 bytes, Image Pixel module needs 8589672450"``.
        Native pixel data may be one byte longer than needed (padding to an
        even length), as :func:`inference.volume.decode_frame` accepts.
    """
    rows = _count(header, "Rows")
    columns = _count(header, "Columns")
    if report.pixel_tag is None:
        if rows is not None and columns is not None:
            return "Pixel Data missing (Rows and Columns present)"
        if UID(str(_value(header, "SOPClassUID") or "").strip()) in _CT_IMAGE_CLASSES:
            return "Pixel Data missing in a CT image"
        return None
    if report.pixel_tag != PIXEL_DATA:
        return None
    if UID(transfer_syntax).is_compressed:
        return None if report.fragments > 0 else "Encapsulated Pixel Data has no fragment"
    if report.pixel_length is None:
        return "Native Pixel Data has an undefined length"
    counts = [
        _count(header, "Rows"),
        _count(header, "Columns"),
        _count(header, "NumberOfFrames", 1),
        _count(header, "SamplesPerPixel", 1),
        _count(header, "BitsAllocated"),
    ]
    known = [value for value in counts if value is not None and value >= 0]
    if len(known) != len(counts):
        return "Rows, Columns, BitsAllocated or NumberOfFrames missing/invalid"
    *dimensions, bits = known
    if bits != 1 and (bits == 0 or bits % 8):
        return f"BitsAllocated {bits} is not 1 or a multiple of 8"
    pixels = 1
    for value in dimensions:
        pixels *= value
    expected = (pixels + 7) // 8 if bits == 1 else pixels * bits // 8
    if str(_value(header, "PhotometricInterpretation") or "").strip() == "YBR_FULL_422":
        expected = expected // 3 * 2
    if report.pixel_length not in (expected, expected + 1):
        return f"Pixel Data has {report.pixel_length} bytes, Image Pixel module needs {expected}"[
            :64
        ]
    return None
