"""``[[hl7_destinations]]``: RIS/worklist endpoints that receive HL7 v2 ORU^R01 over MLLP.

Every job that a worker finishes (written, rejected or failed) gets one
ORU^R01 message per destination with its triage flag and priority
(:mod:`pacs_node.hl7`). Example::

    [[hl7_destinations]]
    name = "ris"
    host = "ris.example.org"
    port = 2575
    receiving_application = "RIS"
    receiving_facility = "RADIOLOGY"
    timeout = 10.0

Retries use ``[export_retry]``, the policy of the DICOM export.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config.sections import check_field, positive_float, to_name
from config.validators import show, to_host, to_port, to_str_list

LOGGER = logging.getLogger(__name__)

__all__ = ["DEFAULT_SENDING_APPLICATION", "HL7Destination", "to_hl7_destinations"]

#: MSH-3 Sending Application when a destination does not set one.
DEFAULT_SENDING_APPLICATION = "DEEPSC-NODE"

#: An HD namespace ID: printable ASCII without the HL7 delimiters ``| ^ & ~ \``.
_HD_RE = re.compile(r"^[ !-%'-\[\]_-{}]{0,40}$")
_KEYS = (
    "name",
    "host",
    "port",
    "receiving_application",
    "receiving_facility",
    "sending_application",
    "sending_facility",
    "timeout",
)


def _hd(value: Any) -> str:
    if not isinstance(value, str) or not _HD_RE.fullmatch(value.strip()):
        raise ValueError(
            "should be at most 40 printable ASCII characters without | ^ & ~ \\, "
            f"got {show(value)}"
        )
    return value.strip()


def _required_hd(value: Any) -> str:
    text = _hd(value)
    if not text:
        raise ValueError("should not be empty")
    return text


@dataclass(frozen=True)
class HL7Destination:
    """An HL7 v2 receiver (RIS, worklist) reached over MLLP.

    Parameters
    ----------
    name: str
        Unique name used in the database and logs, e.g. ``"ris"``.
    host: str
        Host name or IP address.
    port: int
        TCP port of the MLLP listener.
    receiving_application: str
        MSH-5 Receiving Application, e.g. ``"RIS"``.
    receiving_facility: str
        MSH-6 Receiving Facility. Default ``""``.
    sending_application: str
        MSH-3 Sending Application. Default ``"DEEPSC-NODE"``.
    sending_facility: str
        MSH-4 Sending Facility. Default ``""``.
    timeout: float
        Seconds for the TCP connect and for the ACK. Default 10.

    Raises
    ------
    ValueError
        ``'Argument "<field>" should ...'`` if a value is invalid.
    """

    name: str
    host: str
    port: int
    receiving_application: str
    receiving_facility: str = ""
    sending_application: str = DEFAULT_SENDING_APPLICATION
    sending_facility: str = ""
    timeout: float = 10.0

    def __post_init__(self) -> None:
        check_field(self, "name", to_name)
        check_field(self, "host", to_host)
        check_field(self, "port", to_port)
        check_field(self, "receiving_application", _required_hd)
        check_field(self, "receiving_facility", _hd)
        check_field(self, "sending_application", _required_hd)
        check_field(self, "sending_facility", _hd)
        check_field(self, "timeout", positive_float)

    @classmethod
    def parse(cls, value: Any) -> HL7Destination:
        """Build from a TOML table or an :class:`HL7Destination`.

        Raises
        ------
        ValueError
            Naming the destination and the key at fault.
        """
        if isinstance(value, HL7Destination):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                'should be a table with "name", "host", "port" and "receiving_application", '
                f"got {show(value)}"
            )
        label = (
            f'HL7 destination "{value["name"]}"'
            if isinstance(value.get("name"), str)
            else "HL7 destination"
        )
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise ValueError(f"{label}: unknown key(s) {', '.join(unknown)}")
        missing = [k for k in ("name", "host", "port", "receiving_application") if k not in value]
        if missing:
            raise ValueError(f"{label}: missing key(s) {', '.join(missing)}")
        try:
            return cls(**dict(value))
        except ValueError as exc:
            raise ValueError(f"{label}: {str(exc).removeprefix('Argument ')}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (TOML keys)."""
        return {key: getattr(self, key) for key in _KEYS}


def to_hl7_destinations(value: Any) -> tuple[HL7Destination, ...]:
    """Validate the list of HL7 destinations (unique names).

    Raises
    ------
    ValueError
        If an entry is invalid or names repeat.
    """
    if isinstance(value, str) and value.strip().startswith("{"):
        value = "[" + value + "]"
    destinations = to_str_list(value, HL7Destination.parse, "HL7 destination table")
    names = [d.name for d in destinations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"should have unique names, got {', '.join(duplicates)} more than once")
    return destinations
