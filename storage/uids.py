"""DICOM UID validation (PS3.5 section 9.1) for values used in paths and rows.

A UID is 1-64 characters of numeric components separated by ``.``; a
component has no leading zero unless it is ``0`` itself. Values from peers
are checked here before they are joined into a path or stored.

Examples
--------
>>> validate_uid("1.2.840.10008.5.1.4.1.1.2", "sop_class_uid")
'1.2.840.10008.5.1.4.1.1.2'
>>> is_valid_uid("1.2.03")
False
"""

from __future__ import annotations

import logging
import re

from storage.errors import InvalidUIDError

LOGGER = logging.getLogger(__name__)

__all__ = ["MAX_UID_LENGTH", "UID_PATTERN", "is_valid_uid", "validate_uid"]

#: Longest UID (PS3.5 VR UI).
MAX_UID_LENGTH = 64
#: Syntax of a UID without the length rule.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LEADING_ZERO = re.compile(r"(^|\.)0[0-9]")


def validate_uid(uid: object, argument: str) -> str:
    """Return `uid` if it is a valid DICOM UID.

    Parameters
    ----------
    uid: object
        The value to check (a ``str``; pydicom's ``UID`` is a ``str``).
    argument: str
        Name used in the error message.

    Returns
    -------
    str
        The UID as a plain ``str``.

    Raises
    ------
    InvalidUIDError
        If `uid` is not a string, is empty, longer than 64 characters, has a
        character other than digits and dots, an empty component, or a
        component with a leading zero.
    """
    if not isinstance(uid, str):
        raise InvalidUIDError(argument, uid, "not a string")
    if not uid:
        raise InvalidUIDError(argument, uid, "empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidUIDError(argument, uid, f"longer than {MAX_UID_LENGTH} characters")
    if not UID_PATTERN.fullmatch(uid):  # fullmatch: "$" alone accepts a final "\n"
        raise InvalidUIDError(argument, uid, "digits and dots only, no empty component")
    if _LEADING_ZERO.search(uid):
        raise InvalidUIDError(argument, uid, "component with a leading zero")
    return str(uid)


def is_valid_uid(uid: object) -> bool:
    """Whether `uid` passes :func:`validate_uid`."""
    try:
        validate_uid(uid, "uid")
    except InvalidUIDError:
        return False
    return True
