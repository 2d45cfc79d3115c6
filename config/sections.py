"""The tables of the settings: destinations, calling AEs, selection, retry, timeouts.

Frozen dataclasses that validate and normalise their fields when built
(``ValueError`` naming the argument). :mod:`config.settings` combines them
into :class:`~config.settings.Settings`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from config.validators import (
    show,
    to_ae_title,
    to_bool,
    to_code_string,
    to_float,
    to_host,
    to_int,
    to_optional_int,
    to_pattern,
    to_port,
    to_str_list,
)

LOGGER = logging.getLogger(__name__)

__all__ = [
    "AssociationTimeouts",
    "CallingAE",
    "DEFAULT_OBJECTS",
    "Destination",
    "RESULT_OBJECT_KINDS",
    "RETRY_FIELDS",
    "RetryPolicy",
    "SELECTION_FIELDS",
    "SelectionRules",
    "TIMEOUT_FIELDS",
    "check_field",
    "positive_float",
]

#: Result objects a destination may ask for (``objects``): "seg" (DICOM-SEG),
#: "sr" (TID 1500 SR), "sc" (the "AI summary" Secondary Capture series: key
#: images and a summary page) and "gsps" (a Grayscale Softcopy Presentation
#: State with the lesion outlines; produced only when a destination asks
#: for it). Objects are sent in this order.
#:
#: .. versionchanged:: issue 4
#:     "sc" and "gsps".
RESULT_OBJECT_KINDS: tuple[str, ...] = ("seg", "sr", "outline", "sc", "gsps")

#: Result objects sent to a destination when ``objects`` is not set, e.g.
#: ``objects = ["seg", "sr", "outline", "sc", "gsps"]`` to add the presentation
#: state.
#:
#: .. versionchanged:: issue 4
#:     "outline" (the planar-only report that OHIF draws) and "sc" are sent by
#:     default.
DEFAULT_OBJECTS: tuple[str, ...] = ("seg", "sr", "outline", "sc")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_COMPACT_DESTINATION_RE = re.compile(
    r"^(?P<name>[^=]+)=(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>[^:]+)$"
)


def check_field(obj: Any, name: str, convert: Callable[[Any], Any]) -> None:
    """Normalise attribute `name` of frozen `obj` with `convert`.

    Raises
    ------
    ValueError
        ``'Argument "<name>" should ...'`` if `convert` refuses the value.
    """
    try:
        value = convert(getattr(obj, name))
    except ValueError as exc:
        raise ValueError(f'Argument "{name}" {exc}') from None
    object.__setattr__(obj, name, value)


def to_name(value: Any) -> str:
    """Validate a name (destination, HL7 destination, triage rule): 1-64 of letters,
    digits, ``_ . -``."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value.strip()):
        raise ValueError(
            "should be a name of 1-64 letters, digits, '_', '.' or '-', " f"got {show(value)}"
        )
    return value.strip()


def to_object_kind(value: Any) -> str:
    """Validate a result object kind (one of :data:`RESULT_OBJECT_KINDS`)."""
    if isinstance(value, str) and value.strip().lower() in RESULT_OBJECT_KINDS:
        return value.strip().lower()
    raise ValueError(f"should be one of {', '.join(RESULT_OBJECT_KINDS)}, got {show(value)}")


def to_objects(value: Any) -> tuple[str, ...]:
    """Validate a non-empty list of distinct result object kinds."""
    kinds = to_str_list(value, to_object_kind, "result object kind")
    if not kinds:
        raise ValueError("should name at least one result object kind")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"should not repeat a kind, got {show(list(kinds))}")
    return kinds


@dataclass(frozen=True)
class CallingAE:
    """A peer allowed to associate with the node.

    Parameters
    ----------
    ae_title: str
        Calling AE title.
    host: str | None
        If set, the peer's IP address must also match: an IP address, or a
        host name whose addresses are looked up when a peer associates
        (``None``: any host).
    """

    ae_title: str
    host: str | None = None

    def __post_init__(self) -> None:
        check_field(self, "ae_title", to_ae_title)
        if self.host is not None:
            check_field(self, "host", to_host)

    @classmethod
    def parse(cls, value: Any) -> CallingAE:
        """Build from ``"AE"``, ``"AE@host"``, a table or a :class:`CallingAE`."""
        if isinstance(value, CallingAE):
            return value
        if isinstance(value, str):
            title, sep, host = value.strip().partition("@")
            return cls(title, host if sep else None)
        if isinstance(value, dict):
            unknown = set(value) - {"ae_title", "host"}
            if unknown or "ae_title" not in value:
                raise ValueError(
                    'should be "AE", "AE@host" or a table with "ae_title" and optional "host", '
                    f"got {show(value)}"
                )
            return cls(value["ae_title"], value.get("host"))
        raise ValueError(f'should be "AE", "AE@host" or a table, got {show(value)}')

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (``host`` left out when unset)."""
        return {"ae_title": self.ae_title} | ({"host": self.host} if self.host else {})


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives results by C-STORE.

    Parameters
    ----------
    name: str
        Unique name used in the database and logs, e.g. ``"pacs"``.
    ae_title: str
        Called AE title of the peer.
    host: str
        Host name or IP address.
    port: int
        TCP port.
    objects: tuple[str, ...]
        Which result objects to send (:data:`RESULT_OBJECT_KINDS`), default
        ``("seg", "sr", "outline", "sc")``.
    tls: bool
        Associate over DICOM TLS (``[tls]`` settings: CAs and client
        certificate). Default ``False``.
    """

    name: str
    ae_title: str
    host: str
    port: int
    objects: tuple[str, ...] = DEFAULT_OBJECTS
    tls: bool = False

    def __post_init__(self) -> None:
        check_field(self, "name", to_name)
        check_field(self, "ae_title", to_ae_title)
        check_field(self, "host", to_host)
        check_field(self, "port", to_port)
        check_field(self, "objects", to_objects)
        check_field(self, "tls", to_bool)

    @classmethod
    def parse(cls, value: Any) -> Destination:
        """Build from ``"NAME=AE@host:port"``, a table or a :class:`Destination`."""
        if isinstance(value, Destination):
            return value
        if isinstance(value, str):
            match = _COMPACT_DESTINATION_RE.match(value.strip())
            if match is None:
                raise ValueError(f'should be "NAME=AE@host:port", got {show(value)}')
            return cls(match["name"], match["ae"], match["host"], to_port(match["port"]))
        if isinstance(value, dict):
            required = {"name", "ae_title", "host", "port"}
            unknown = set(value) - required - {"objects", "tls"}
            if unknown:
                raise ValueError(f"has unknown key(s) {', '.join(sorted(unknown))}")
            missing = required - set(value)
            if missing:
                raise ValueError(f"is missing key(s) {', '.join(sorted(missing))}")
            return cls(
                value["name"],
                value["ae_title"],
                value["host"],
                to_port(value["port"]),
                to_objects(value.get("objects", DEFAULT_OBJECTS)),
                value.get("tls", False),
            )
        raise ValueError(f'should be "NAME=AE@host:port" or a table, got {show(value)}')

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {
            "name": self.name,
            "ae_title": self.ae_title,
            "host": self.host,
            "port": self.port,
            "objects": list(self.objects),
            "tls": self.tls,
        }


@dataclass(frozen=True)
class SelectionRules:
    """Which complete series are candidates for the model (rules as data).

    Parameters
    ----------
    modalities: tuple[str, ...]
        Accepted Modality (0008,0060) values. Default ``("CT",)``.
    min_slices: int
        Fewest images a series must have. Default 20.
    max_slice_thickness: float
        Largest accepted slice spacing/thickness in mm. Default 10.0 (8 mm
        chest CT is accepted).
    orientation_tolerance: float
        Largest angle in degrees between the slice normal and the patient
        foot-head axis for a series to count as axial. Default 10.0.
    image_type_exclude: tuple[str, ...]
        Images whose Image Type (0008,0008) contains any of these values are
        not used (e.g. ``LOCALIZER``). Default ``("LOCALIZER",)``.
    series_description_include: tuple[str, ...]
        Regular expressions (``re.search``, case-insensitive); if any are
        given, Series Description (0008,103E) must match one. Default ``()``.
    series_description_exclude: tuple[str, ...]
        Regular expressions; a series whose description matches one is not
        processed. Default ``("scout", "topogram", "localizer", "dose")``.
    """

    modalities: tuple[str, ...] = ("CT",)
    min_slices: int = 20
    max_slice_thickness: float = 10.0
    orientation_tolerance: float = 10.0
    image_type_exclude: tuple[str, ...] = ("LOCALIZER",)
    series_description_include: tuple[str, ...] = ()
    series_description_exclude: tuple[str, ...] = ("scout", "topogram", "localizer", "dose")

    def __post_init__(self) -> None:
        for name, convert in SELECTION_FIELDS.items():
            check_field(self, name, convert)
        if not self.modalities:
            raise ValueError('Argument "modalities" should name at least one modality')

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in ((f.name, getattr(self, f.name)) for f in fields(self))
        }


@dataclass(frozen=True)
class RetryPolicy:
    """How results are re-sent when a destination fails.

    The delay before attempt ``n + 1`` is
    ``min(max_backoff, initial_backoff * 2 ** (n - 1))`` seconds.

    Parameters
    ----------
    max_attempts: int | None
        Attempts per result object and destination before giving up;
        ``None`` (``"forever"`` in files): never give up. Default ``None``.
    initial_backoff: float
        Delay in seconds after the first failed attempt. Default 5.0.
    max_backoff: float
        Longest delay in seconds. Default 600.0.
    """

    max_attempts: int | None = None
    initial_backoff: float = 5.0
    max_backoff: float = 600.0

    def __post_init__(self) -> None:
        for name, convert in RETRY_FIELDS.items():
            check_field(self, name, convert)
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f'Argument "max_backoff" should be >= initial_backoff ({self.initial_backoff:g}), '
                f"got {self.max_backoff:g}"
            )

    def delay(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed attempts (``attempts >= 1``).

        Raises
        ------
        ValueError
            If `attempts` is smaller than 1.
        """
        if attempts < 1:
            raise ValueError(f'Argument "attempts" should be >= 1, got {attempts}')
        # Cap the exponent so that huge attempt counts do not overflow.
        return min(self.max_backoff, self.initial_backoff * 2.0 ** min(attempts - 1, 60))

    def gives_up(self, attempts: int) -> bool:
        """Whether no further attempt follows `attempts` failed ones."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (``max_attempts`` ``None`` stays ``None``)."""
        return {
            "max_attempts": self.max_attempts,
            "initial_backoff": self.initial_backoff,
            "max_backoff": self.max_backoff,
        }


@dataclass(frozen=True)
class AssociationTimeouts:
    """DICOM association timeouts in seconds (pynetdicom ``AE`` attributes).

    Parameters
    ----------
    acse: float
        Association request/release. Default 30.
    dimse: float
        Waiting for a DIMSE message. Default 60.
    network: float
        Idle association. Default 60.
    connection: float
        TCP connect of an outgoing association. Default 30.
    """

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0
    connection: float = 30.0

    def __post_init__(self) -> None:
        for name, convert in TIMEOUT_FIELDS.items():
            check_field(self, name, convert)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def positive_float(value: Any) -> float:
    """A finite number > 0 (durations in seconds, thicknesses in mm)."""
    return to_float(value, 0.0, exclusive_minimum=True)


SELECTION_FIELDS: dict[str, Callable[[Any], Any]] = {
    "modalities": lambda v: to_str_list(v, to_code_string, "modality"),
    "min_slices": lambda v: to_int(v, 1),
    "max_slice_thickness": positive_float,
    "orientation_tolerance": lambda v: to_float(v, 0.0, 89.0),
    "image_type_exclude": lambda v: to_str_list(v, to_code_string, "Image Type value"),
    "series_description_include": lambda v: to_str_list(v, to_pattern, "regular expression"),
    "series_description_exclude": lambda v: to_str_list(v, to_pattern, "regular expression"),
}
RETRY_FIELDS: dict[str, Callable[[Any], Any]] = {
    "max_attempts": lambda v: to_optional_int(v, 1, "forever"),
    "initial_backoff": positive_float,
    "max_backoff": positive_float,
}
TIMEOUT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "acse": positive_float,
    "dimse": positive_float,
    "network": positive_float,
    "connection": positive_float,
}
