"""Named DIMSE status values of the services the node uses.

Storage Service Class (C-STORE), DICOM PS3.4 Annex B.2.3, and the general
status codes of PS3.7 Annex C.4 / C.5, plus the two codes that pynetdicom
itself returns for a failing ``evt.EVT_C_STORE`` handler (``0xC210``,
``0xC211``; see ``pynetdicom/service_class.py``). Use the names instead of
bare hex values::

    >>> from pacs_node.status import StoreStatus, category
    >>> StoreStatus.ERROR_CANNOT_UNDERSTAND
    <StoreStatus.ERROR_CANNOT_UNDERSTAND: 49152>
    >>> category(0xA700), category(0xB000), category(0x0000)
    ('Failure', 'Warning', 'Success')
    >>> describe(0xA905)
    '0xA905 Error: Data Set Does Not Match SOP Class'

Ranges: PS3.4 B.2.3 defines ``A7xx`` (Refused: Out of Resources), ``A9xx``
(Error: Data Set Does Not Match SOP Class) and ``Cxxx`` (Error: Cannot
Understand) as ranges; the node sends the base code of each range and says
what happened in Error Comment (0000,0902).
"""
from __future__ import annotations

import enum
import logging

LOGGER = logging.getLogger(__name__)

__all__ = [
    "StoreStatus",
    "VerificationStatus",
    "category",
    "describe",
    "is_failure",
    "is_success",
    "is_warning",
    "MAX_ERROR_COMMENT_LENGTH",
]

#: Longest Error Comment (0000,0902), VR LO: 64 characters (PS3.7 C.4).
MAX_ERROR_COMMENT_LENGTH = 64


class StoreStatus(enum.IntEnum):
    """Status (0000,0900) values of a C-STORE response (PS3.4 B.2.3, PS3.7 C.4)."""

    SUCCESS = 0x0000
    """``0x0000`` Success: the instance was stored."""

    WARNING_COERCION_OF_DATA_ELEMENTS = 0xB000
    """``0xB000`` Warning: Coercion of Data Elements (stored, some values changed)."""

    WARNING_ELEMENTS_DISCARDED = 0xB006
    """``0xB006`` Warning: Elements Discarded (stored without some elements)."""

    WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
    """``0xB007`` Warning: Data Set Does Not Match SOP Class (stored anyway)."""

    REFUSED_OUT_OF_RESOURCES = 0xA700
    """``0xA700`` Refused: Out of Resources (``A7xx``): e.g. disk full, cannot store.
    A transient failure; the peer may retry later."""

    ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """``0xA900`` Error: Data Set Does Not Match SOP Class (``A9xx``): the data set
    contradicts the request (SOP Class/Instance UID differ from the command) or
    lacks a Type 1 identifier of the IOD (Study/Series Instance UID)."""

    ERROR_CANNOT_UNDERSTAND = 0xC000
    """``0xC000`` Error: Cannot Understand (``Cxxx``): the data set does not identify
    itself (no valid SOP Class UID or SOP Instance UID), as DCMTK ``storescp``
    answers in the same case."""

    ERROR_CANNOT_DECODE = 0xC210
    """``0xC210`` Cannot Understand, pynetdicom's meaning: the data set could not
    be decoded."""

    ERROR_UNHANDLED_EXCEPTION = 0xC211
    """``0xC211`` Cannot Understand, pynetdicom's meaning: an unhandled exception
    in the ``evt.EVT_C_STORE`` handler (also what pynetdicom sends when a
    handler raises)."""

    REFUSED_NOT_AUTHORIZED = 0x0124
    """``0x0124`` Refused: Not Authorized (PS3.7 C.5.13)."""

    REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    """``0x0122`` Refused: SOP Class Not Supported (PS3.7 C.5.8)."""

    FAILURE_INVALID_SOP_INSTANCE = 0x0117
    """``0x0117`` Failure: Invalid SOP Instance (PS3.7 C.5.7)."""

    FAILURE_PROCESSING_FAILURE = 0x0110
    """``0x0110`` Failure: Processing Failure (PS3.7 C.4.3)."""


class VerificationStatus(enum.IntEnum):
    """Status values of a C-ECHO response (PS3.4 A.4)."""

    SUCCESS = 0x0000
    """``0x0000`` Success."""

    REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    """``0x0122`` Refused: SOP Class Not Supported."""

    DUPLICATE_INVOCATION = 0x0210
    """``0x0210`` Duplicate Invocation."""

    MISTYPED_ARGUMENT = 0x0212
    """``0x0212`` Mistyped Argument."""

    UNRECOGNIZED_OPERATION = 0x0211
    """``0x0211`` Unrecognized Operation."""


_GENERAL_FAILURES = frozenset(
    {0x0105, 0x0106, 0x0110, 0x0111, 0x0112, 0x0113, 0x0114, 0x0115, 0x0117, 0x0118}
    | {0x0119, 0x0120, 0x0121, 0x0122, 0x0123, 0x0124, 0x0210, 0x0211, 0x0212, 0x0213}
)

#: Meaning of each range of storage status codes (low, high, text).
_RANGES: tuple[tuple[int, int, str], ...] = (
    (0xA700, 0xA7FF, "Refused: Out of Resources"),
    (0xA900, 0xA9FF, "Error: Data Set Does Not Match SOP Class"),
    (0xC000, 0xCFFF, "Error: Cannot Understand"),
)

_TEXT: dict[int, str] = {
    StoreStatus.SUCCESS: "Success",
    StoreStatus.WARNING_COERCION_OF_DATA_ELEMENTS: "Warning: Coercion of Data Elements",
    StoreStatus.WARNING_ELEMENTS_DISCARDED: "Warning: Elements Discarded",
    StoreStatus.WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS: (
        "Warning: Data Set Does Not Match SOP Class"
    ),
    StoreStatus.ERROR_CANNOT_DECODE: "Error: Cannot Understand (data set not decodable)",
    StoreStatus.ERROR_UNHANDLED_EXCEPTION: "Error: Cannot Understand (SCP handler failed)",
    StoreStatus.REFUSED_NOT_AUTHORIZED: "Refused: Not Authorized",
    StoreStatus.REFUSED_SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class Not Supported",
    StoreStatus.FAILURE_INVALID_SOP_INSTANCE: "Failure: Invalid SOP Instance",
    StoreStatus.FAILURE_PROCESSING_FAILURE: "Failure: Processing Failure",
    0x0210: "Failure: Duplicate Invocation",
    0x0211: "Failure: Unrecognized Operation",
    0x0212: "Failure: Mistyped Argument",
}


def _check_code(status: int) -> int:
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f'Argument "status" should be an int, got {type(status).__name__}')
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f'Argument "status" should be in 0x0000-0xFFFF, got {status}')
    return int(status)


def category(status: int) -> str:
    """Category of a DIMSE status: Success, Warning, Failure, Cancel, Pending or Unknown.

    Follows PS3.7 C.1 as pynetdicom's ``code_to_category`` does: ``0x0000``
    success; ``0x0001`` and ``Bxxx`` warnings; ``Axxx``, ``Cxxx`` and the
    general failure codes failures; ``FE00`` cancel; ``FF00``/``FF01``
    pending.

    Parameters
    ----------
    status: int
        The Status (0000,0900) value.

    Returns
    -------
    str
        One of ``"Success"``, ``"Warning"``, ``"Failure"``, ``"Cancel"``,
        ``"Pending"``, ``"Unknown"``.

    Raises
    ------
    TypeError
        If `status` is not an int.
    ValueError
        If `status` is outside 0x0000-0xFFFF.
    """
    code = _check_code(status)
    if code == 0x0000:
        return "Success"
    if code in (0xFF00, 0xFF01):
        return "Pending"
    if code == 0xFE00:
        return "Cancel"
    if code == 0x0001 or 0xB000 <= code <= 0xBFFF or code == 0x0107 or code == 0x0116:
        return "Warning"
    if code in _GENERAL_FAILURES or 0xA000 <= code <= 0xAFFF or 0xC000 <= code <= 0xCFFF:
        return "Failure"
    return "Unknown"


def is_success(status: int) -> bool:
    """Whether `status` is Success (``0x0000``)."""
    return category(status) == "Success"


def is_warning(status: int) -> bool:
    """Whether `status` is a Warning (the instance was delivered, with a caveat)."""
    return category(status) == "Warning"


def is_failure(status: int) -> bool:
    """Whether `status` is anything other than Success or Warning (not delivered)."""
    return category(status) not in ("Success", "Warning")


def describe(status: int) -> str:
    """Human-readable ``"0xXXXX meaning"`` of a C-STORE / C-ECHO status.

    Parameters
    ----------
    status: int
        The Status (0000,0900) value.

    Returns
    -------
    str
        E.g. ``"0xA700 Refused: Out of Resources"``.

    Raises
    ------
    TypeError
        If `status` is not an int.
    ValueError
        If `status` is outside 0x0000-0xFFFF.
    """
    code = _check_code(status)
    text = _TEXT.get(code)
    if text is None:
        for low, high, meaning in _RANGES:
            if low <= code <= high:
                text = meaning
                break
        else:
            text = category(code)
    return f"0x{code:04X} {text}"
