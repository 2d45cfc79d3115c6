"""Hypothesis settings and DICOM byte mutators for the fuzz tests (issue 5, section 3).

The fuzz tests (``tests/test_fuzz_ingest.py``, ``tests/test_fuzz_pdu.py``)
start from real encoded data (synthetic CT slices from
:func:`tests.dicom_fixtures.make_ct_dataset`, slices of the real series in
``../shared/data/ct``) and break them the way broken scanners, archives and
networks do:

* **element level** (:func:`mutated_dataset`): for up to three top-level
  elements, preferably the ones the node reads (identifiers, Image Plane and
  Image Pixel modules, rescale, pixel data): a new declared length (0, odd,
  one off, doubled, ``0xFFFF``, ``0xFFFFFFFF``...), a new value of the
  same VR family (e.g. ``"nan\\\\1e400\\\\abc"`` for ImagePositionPatient,
  ``0`` or ``0xFFFF`` for Rows, a two-byte RescaleSlope), a new VR code
  (explicit VR only) or the element removed;
* **byte level**: bit flips, truncation, inserted and deleted byte runs.

How many cases
    Each test passes its CI budget to :func:`fuzz_settings`; the environment
    variable ``DEEPSC_FUZZ_EXAMPLES`` replaces it for a longer run, e.g.
    ``DEEPSC_FUZZ_EXAMPLES=5000 pytest -q -p no:cacheprovider tests/test_fuzz_ingest.py``.
    Cases are derandomized (the same cases on every run, so CI is
    reproducible) unless ``DEEPSC_FUZZ_RANDOM=1`` asks for fresh ones; a
    failure then prints a ``@reproduce_failure`` blob.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.filereader import data_element_generator
from pydicom.uid import UID

__all__ = [
    "GEOMETRY_TAGS",
    "EncodedSeed",
    "Element",
    "Mutant",
    "edit_element",
    "element_map",
    "fuzz_examples",
    "fuzz_settings",
    "mutated_dataset",
]

#: Elements the node reads from a received image: identifiers, Image Plane,
#: Image Pixel, CT Image (rescale), multi-frame markers, pixel data.
GEOMETRY_TAGS: frozenset[int] = frozenset(
    {
        0x00080005,  # SpecificCharacterSet
        0x00080008,  # ImageType
        0x00080016,  # SOPClassUID
        0x00080018,  # SOPInstanceUID
        0x00080060,  # Modality
        0x0020000D,  # StudyInstanceUID
        0x0020000E,  # SeriesInstanceUID
        0x00200032,  # ImagePositionPatient
        0x00200037,  # ImageOrientationPatient
        0x00200052,  # FrameOfReferenceUID
        0x00280002,  # SamplesPerPixel
        0x00280004,  # PhotometricInterpretation
        0x00280008,  # NumberOfFrames
        0x00280010,  # Rows
        0x00280011,  # Columns
        0x00280030,  # PixelSpacing
        0x00280100,  # BitsAllocated
        0x00280101,  # BitsStored
        0x00280102,  # HighBit
        0x00280103,  # PixelRepresentation
        0x00280120,  # PixelPaddingValue
        0x00281052,  # RescaleIntercept
        0x00281053,  # RescaleSlope
        0x7FE00010,  # PixelData
    }
)

#: VRs whose explicit encoding has a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
#: Text that number parsers, UID checks and geometry code trip over.
_TOKENS = (
    "", " ", "0", "-0", "1", "-1", "0.5", "2.5", "-2.5", "1e-320", "1e308", "-1e308", "1e400",
    "nan", "NaN", "inf", "-inf", "abc", "+", "1.5e", "0x10", "99999999999999999999", "\x00",
    "1.2.3", "../..", "\\", "1,5", "65535", "-32768", "\xff",
)
_VR_CODES = (
    b"AE", b"AT", b"CS", b"DS", b"FD", b"FL", b"IS", b"LO", b"OB", b"OW", b"SQ", b"SS", b"UI",
    b"UL", b"UN", b"US", b"UT", b"XX", b"\x00\x00", b"\xff\xff",
)
_UNDEFINED = 0xFFFFFFFF


class Mutant(bytes):
    """Mutated bytes that print as their size, digest and mutations.

    Hypothesis prints every drawn value of a failing case; a data set of
    half a megabyte would bury the report.
    """

    operations: tuple[str, ...] = ()

    def __repr__(self) -> str:
        digest = hashlib.sha256(self).hexdigest()[:12]
        return f"<{len(self)} bytes, sha256 {digest}...: {'; '.join(self.operations)}>"


def fuzz_examples(ci_examples: int) -> int:
    """Number of cases: ``DEEPSC_FUZZ_EXAMPLES`` if set, else `ci_examples`.

    Raises
    ------
    ValueError
        If ``DEEPSC_FUZZ_EXAMPLES`` is not a positive integer.
    """
    text = os.environ.get("DEEPSC_FUZZ_EXAMPLES", "").strip()
    if not text:
        return ci_examples
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"DEEPSC_FUZZ_EXAMPLES should be a positive integer, got {text!r}")
    return int(text)


def fuzz_settings(ci_examples: int) -> settings:
    """Hypothesis settings of a fuzz test: bounded, no deadline, reproducible.

    Parameters
    ----------
    ci_examples: int
        Cases in CI (see :func:`fuzz_examples`).

    Returns
    -------
    hypothesis.settings
        ``derandomize=True`` unless ``DEEPSC_FUZZ_RANDOM=1``; no example
        database (nothing written into the working tree).
    """
    fresh = os.environ.get("DEEPSC_FUZZ_RANDOM", "") == "1"
    return settings(
        max_examples=fuzz_examples(ci_examples),
        deadline=None,
        derandomize=not fresh,
        print_blob=fresh,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@dataclass(frozen=True)
class Element:
    """Where one top-level element of an encoded data set sits.

    Attributes
    ----------
    tag: int
        ``(group << 16) | element``.
    vr: str
        VR as encoded (explicit VR) or from the dictionary (implicit VR;
        ``"UN"`` when unknown).
    start: int
        Offset of its tag.
    value_start: int
        Offset of its value.
    end: int
        Offset after its value (the next element's tag, or the end).
    length_size: int
        Bytes of its length field (2 or 4).
    explicit: bool
        Whether its header has a VR field.
    """

    tag: int
    vr: str
    start: int
    value_start: int
    end: int
    length_size: int
    explicit: bool


@dataclass(frozen=True)
class EncodedSeed:
    """An encoded data set (no file meta) to mutate, and its element map.

    Attributes
    ----------
    name: str
        For messages.
    data: bytes
        The data set bytes.
    transfer_syntax: str
        Its transfer syntax UID.
    elements: tuple[Element, ...]
        From :func:`element_map` (empty for a deflated data set: byte-level
        mutations only).
    """

    name: str
    data: bytes = field(repr=False)
    transfer_syntax: str = field(repr=False)
    elements: tuple[Element, ...] = field(repr=False)

    @classmethod
    def of(cls, name: str, data: bytes, transfer_syntax: str) -> EncodedSeed:
        """A seed with its element map (none when deflated)."""
        syntax = UID(transfer_syntax)
        elements = () if syntax.is_deflated else element_map(data, syntax.is_implicit_VR)
        return cls(name, bytes(data), str(syntax), elements)


def element_map(data: bytes, implicit: bool) -> tuple[Element, ...]:
    """The top-level elements of a little-endian data set, with their offsets.

    Parameters
    ----------
    data: bytes
        An encoded data set without file meta.
    implicit: bool
        Implicit VR Little Endian (else Explicit VR Little Endian).

    Returns
    -------
    tuple[Element, ...]
        In encoded order.
    """
    stream = io.BytesIO(data)
    elements: list[Element] = []
    start = 0
    # The generator has read an element completely when it yields it, so the
    # stream position then is where the element ends.
    for raw in data_element_generator(stream, implicit, True, defer_size=None):
        tag, end = int(raw.tag), stream.tell()
        if implicit:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
            header, length_size = 8, 4
        else:
            vr = data[start + 4:start + 6].decode("latin-1")
            header, length_size = (12, 4) if vr in _LONG_VRS else (8, 2)
        elements.append(Element(tag, vr, start, start + header, end, length_size, not implicit))
        start = end
    return tuple(elements)


def edit_element(
    seed: EncodedSeed, tag: int, *, vr: bytes | None = None, value: bytes | None = None
) -> bytes:
    """`seed`'s data set with one element's VR code and/or value replaced (a fixed case).

    Parameters
    ----------
    seed: EncodedSeed
        Explicit or implicit VR little endian.
    tag: int
        A top-level element of the seed.
    vr: bytes | None
        New two-byte VR code (explicit VR only; the length field keeps its size).
    value: bytes | None
        New value (the length field is set to its length).

    Returns
    -------
    bytes
        The edited data set.

    Raises
    ------
    KeyError
        If the seed has no such element.
    """
    element = next((e for e in seed.elements if e.tag == tag), None)
    if element is None:
        raise KeyError(f"no element {tag:08X} in {seed.name}")
    data = bytearray(seed.data)
    if value is not None:
        size = len(value).to_bytes(element.length_size, "little")
        data[element.value_start - element.length_size:element.end] = size + value
    if vr is not None:
        data[element.start + 4:element.start + 6] = vr
    return bytes(data)


def _text_value() -> st.SearchStrategy[bytes]:
    token = st.one_of(
        st.sampled_from(_TOKENS),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(2**70), 2**70).map(str),
        st.text(st.characters(max_codepoint=255), max_size=10),
    )
    return (
        st.lists(token, max_size=7)
        .map("\\".join)
        .map(lambda text: text.encode("latin-1", errors="replace"))
    )


def _binary_value(vr: str) -> st.SearchStrategy[bytes]:
    fmt = _BINARY_FORMATS.get(vr)
    raw = st.binary(max_size=17)
    if fmt is None:
        return raw
    if fmt in "fd":
        number: st.SearchStrategy[float | int] = st.floats(allow_nan=True, allow_infinity=True)
    else:
        bits = struct.calcsize(fmt) * 8
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt.islower() else (0, 2**bits - 1)
        number = st.one_of(
            st.sampled_from([v for v in (0, 1, 7, 8, 12, 16, 32, 64, 255, 32767, 65535) if
                             low <= v <= high]),
            st.integers(low, high),
        )
    packed = st.lists(number, min_size=0, max_size=4).map(
        lambda values: struct.pack(f"<{len(values)}{fmt}", *values)
    )
    return st.one_of(packed, raw)


def _new_value(element: Element, original: bytes) -> st.SearchStrategy[bytes]:
    if element.vr in _TEXT_VRS:
        family = _text_value()
    elif element.vr in _BINARY_FORMATS:
        family = _binary_value(element.vr)
    else:
        family = st.binary(max_size=64)
    cut = st.integers(0, max(len(original) - 1, 0)).map(lambda n: original[:n])
    return st.one_of(family, cut, st.just(original + original[:3]))


def _lengths(element: Element) -> st.SearchStrategy[int]:
    declared = element.end - element.value_start
    limit = 0xFFFF if element.length_size == 2 else 0xFFFFFFFF
    special = [0, 1, 2, 3, declared - 1, declared + 1, declared * 2, 0xFFFF, _UNDEFINED,
               0xFFFFFFFE, 0x7FFFFFFF]
    return st.one_of(
        st.sampled_from([v for v in special if 0 <= v <= limit]), st.integers(0, limit)
    )


@st.composite
def _element_mutation(draw: st.DrawFn, data: bytearray, element: Element) -> str:
    kinds = ["length", "value", "drop"] + (["vr"] if element.explicit else [])
    kind = draw(st.sampled_from(kinds))
    length_at = element.value_start - element.length_size
    name = f"({element.tag >> 16:04X},{element.tag & 0xFFFF:04X}) {element.vr}"
    if kind == "length":
        length = draw(_lengths(element))
        data[length_at:element.value_start] = length.to_bytes(element.length_size, "little")
        return f"{name} length {length:#x}"
    if kind == "value":
        original = bytes(data[element.value_start:element.end])
        value = draw(_new_value(element, original))
        limit = 0xFFFF if element.length_size == 2 else 0xFFFFFFFF
        field_bytes = min(len(value), limit).to_bytes(element.length_size, "little")
        data[length_at:element.end] = field_bytes + value
        return f"{name} value {value[:40]!r}{'...' if len(value) > 40 else ''}"
    if kind == "drop":
        del data[element.start:element.end]
        return f"{name} removed"
    code = draw(st.sampled_from(_VR_CODES))
    data[element.start + 4:element.start + 6] = code
    return f"{name} VR {code!r}"


@st.composite
def _byte_mutation(draw: st.DrawFn, data: bytearray) -> str:
    if not data:
        return "nothing left"
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    position = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        mask = draw(st.integers(1, 255))
        data[position] ^= mask
        return f"byte {position} ^ {mask:#x}"
    if kind == "truncate":
        del data[position:]
        return f"truncated at {position}"
    if kind == "insert":
        inserted = draw(st.binary(min_size=1, max_size=16))
        data[position:position] = inserted
        return f"{inserted!r} inserted at {position}"
    count = draw(st.integers(1, 16))
    del data[position:position + count]
    return f"{count} bytes deleted at {position}"


@st.composite
def mutated_dataset(
    draw: st.DrawFn, seed: EncodedSeed, targets: Sequence[int] | frozenset[int] = GEOMETRY_TAGS
) -> bytes:
    """A mutation of `seed`'s data set bytes (at least one change).

    Parameters
    ----------
    seed: EncodedSeed
        What to start from.
    targets: Sequence[int] | frozenset[int]
        Tags drawn more often than the others (default :data:`GEOMETRY_TAGS`).

    Returns
    -------
    Mutant
        The mutated data set (no file meta); ``bytes`` that print as a
        summary of the mutations.
    """
    data = bytearray(seed.data)
    elements = seed.elements
    favoured = [i for i, element in enumerate(elements) if element.tag in set(targets)]
    chosen: list[int] = []
    if elements:
        index = st.sampled_from(range(len(elements)))
        if favoured:
            index = st.one_of(st.sampled_from(favoured), index)
        chosen = draw(st.lists(index, max_size=3, unique=True))
    operations = []
    # From the end backwards, so that the offsets of the others stay valid.
    for i in sorted(chosen, key=lambda i: elements[i].start, reverse=True):
        operations.append(draw(_element_mutation(data, elements[i])))
    for _ in range(draw(st.integers(0 if chosen else 1, 3))):
        operations.append(draw(_byte_mutation(data)))
    mutant = Mutant(data)
    mutant.operations = (seed.name, *operations)
    return mutant
