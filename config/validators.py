"""Value checks shared by the settings dataclasses and the loader.

Each ``to_*`` function takes a raw value (a native Python/TOML value, or a
string from the environment or the command line), returns the normalised
value, and raises ``ValueError`` with a message of the form
``'should be ..., got "..."'`` (the caller adds the key and the source).
Strings are parsed where another type is expected, so the same converter
serves TOML, environment variables and command-line flags.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

LOGGER = logging.getLogger(__name__)

__all__ = [
    "show",
    "to_ae_title",
    "to_bool",
    "to_float",
    "to_host",
    "to_int",
    "to_log_level",
    "to_optional_int",
    "to_path",
    "to_pattern",
    "to_port",
    "to_provider",
    "to_str_list",
    "to_uid_root",
    "to_code_string",
]

T = TypeVar("T")

#: Python logging level names accepted by ``log_level``.
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: RFC 1123 host name (labels of letters, digits and hyphens).
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
#: A UID root: numeric components without leading zeros, ending with ".".
_UID_ROOT_RE = re.compile(r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*\.$")
#: Longest accepted UID root, leaving at least 16 digits for the generated part.
MAX_UID_ROOT_LENGTH = 48
#: PS3.5 CS: upper-case letters, digits, space and underscore, at most 16 chars.
_CODE_STRING_RE = re.compile(r"^[A-Z0-9 _]{1,16}$")


def show(value: Any) -> str:
    """Render a value for an error message (strings in double quotes)."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Path):
        return f'"{value}"'
    return repr(value)


def to_int(value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Convert to an ``int`` within ``[minimum, maximum]``.

    Parameters
    ----------
    value: Any
        An ``int`` or a string of decimal digits (``bool`` is refused).
    minimum: int | None
        Smallest accepted value, if any.
    maximum: int | None
        Largest accepted value, if any.

    Returns
    -------
    int
        The value.

    Raises
    ------
    ValueError
        If the value is not an integer in range.
    """
    expected = _range_text("an integer", minimum, maximum)
    if isinstance(value, bool):
        raise ValueError(f"should be {expected}, got {show(value)}")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(f"should be {expected}, got {show(value)}")
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise ValueError(f"should be {expected}, got {show(value)}")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"should be {expected}, got {show(value)}")
    return number


def to_optional_int(value: Any, minimum: int, none_word: str) -> int | None:
    """Convert to an ``int >= minimum``, or ``None`` for `none_word` / ``None``.

    Raises
    ------
    ValueError
        If the value is neither.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == none_word):
        return None
    try:
        return to_int(value, minimum)
    except ValueError:
        raise ValueError(
            f'should be an integer >= {minimum} or "{none_word}", got {show(value)}'
        ) from None


def to_float(
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
) -> float:
    """Convert to a finite ``float`` within range.

    Parameters
    ----------
    value: Any
        An ``int``, ``float`` or numeric string (``bool`` is refused).
    minimum: float | None
        Smallest accepted value, if any.
    maximum: float | None
        Largest accepted value, if any.
    exclusive_minimum: bool
        Whether `minimum` itself is refused.

    Returns
    -------
    float
        The value.

    Raises
    ------
    ValueError
        If the value is not a number in range.
    """
    if exclusive_minimum and minimum is not None:
        expected = f"a number > {minimum:g}"
        if maximum is not None:
            expected += f" and <= {maximum:g}"
    else:
        expected = _range_text("a number", minimum, maximum)
    if isinstance(value, bool):
        raise ValueError(f"should be {expected}, got {show(value)}")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"should be {expected}, got {show(value)}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"should be {expected}, got {show(value)}")
    if minimum is not None and (number < minimum or (exclusive_minimum and number == minimum)):
        raise ValueError(f"should be {expected}, got {show(value)}")
    if maximum is not None and number > maximum:
        raise ValueError(f"should be {expected}, got {show(value)}")
    return number


def _range_text(kind: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} {minimum:g}-{maximum:g}"
    if minimum is not None:
        return f"{kind} >= {minimum:g}"
    if maximum is not None:
        return f"{kind} <= {maximum:g}"
    return kind


def to_port(value: Any) -> int:
    """Convert to a TCP port number 1-65535."""
    return to_int(value, 1, 65535)


def to_ae_title(value: Any) -> str:
    """Validate an Application Entity title (PS3.5 section 6.2, VR AE).

    Leading and trailing spaces are not significant and are removed. The
    rest must be 1-16 characters of the default character repertoire
    (printable ASCII) without backslash; all spaces is refused.

    Returns
    -------
    str
        The title without leading/trailing spaces.

    Raises
    ------
    ValueError
        If the value is not a valid AE title.
    """
    if not isinstance(value, str):
        raise ValueError(f"should be an AE title (text), got {show(value)}")
    title = value.strip(" ")
    if not title:
        raise ValueError(f"should be an AE title, not empty or all spaces, got {show(value)}")
    if len(title) > 16:
        raise ValueError(f"should be an AE title of at most 16 characters, got {show(value)}")
    if "\\" in title:
        raise ValueError(f"should be an AE title without backslash, got {show(value)}")
    if any(not (0x20 <= ord(char) <= 0x7E) for char in title):
        raise ValueError(
            "should be an AE title of printable ASCII characters (no control characters), "
            f"got {show(value)}"
        )
    return title


def to_host(value: Any) -> str:
    """Validate a host: an IPv4/IPv6 address or an RFC 1123 host name."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"should be a host name or IP address, got {show(value)}")
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _HOSTNAME_RE.fullmatch(host) and not re.fullmatch(r"[0-9.]+", host):
        return host
    raise ValueError(f"should be a host name or IP address, got {show(value)}")


def to_path(value: Any, base_dir: Path) -> Path:
    """Convert to an absolute path; relative paths are taken from `base_dir`.

    ``~`` is expanded. The path need not exist.
    """
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value.strip():
        path = Path(value.strip())
    else:
        raise ValueError(f"should be a path, got {show(value)}")
    path = path.expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return Path(_normalise(path))


def _normalise(path: Path) -> str:
    # Resolve "." and ".." lexically without touching the file system.
    parts: list[str] = []
    for part in path.parts[1:]:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return str(Path(path.parts[0], *parts))


def to_str_list(value: Any, item: Callable[[Any], T], what: str) -> tuple[T, ...]:
    """Convert to a tuple of items.

    Parameters
    ----------
    value: Any
        A list/tuple, a JSON array in a string (``'["a", "b"]'``), or a
        comma-separated string (``"a,b"``; empty string: empty list).
    item: Callable[[Any], T]
        Converter of one item (raises ``ValueError``).
    what: str
        Description of one item for messages, e.g. ``"AE title"``.

    Returns
    -------
    tuple[T, ...]
        The converted items.

    Raises
    ------
    ValueError
        If the value is not a list or an item is invalid.
    """
    items: Sequence[Any]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"should be a JSON array of {what}s, got {show(value)}: {exc}"
                ) from None
            if not isinstance(decoded, list):
                raise ValueError(f"should be a JSON array of {what}s, got {show(value)}")
            items = decoded
        else:
            items = [part.strip() for part in text.split(",")] if text else []
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(f"should be a list of {what}s, got {show(value)}")
    result: list[T] = []
    for index, raw in enumerate(items):
        try:
            result.append(item(raw))
        except ValueError as exc:
            raise ValueError(f"item {index + 1}: {exc}") from None
    return tuple(result)


def to_bool(value: Any) -> bool:
    """Convert to a bool: TOML ``true``/``false``, or (from the environment or
    the command line) ``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
    raise ValueError(f"should be true or false, got {show(value)}")


def to_text(value: Any) -> str:
    """Validate a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"should be a non-empty string, got {show(value)}")
    return value.strip()


def to_code_string(value: Any) -> str:
    """Validate a DICOM code string (VR CS) such as a modality or ImageType value.

    Lower-case input is upper-cased.
    """
    if not isinstance(value, str):
        raise ValueError(f"should be a DICOM code string, got {show(value)}")
    text = value.strip().upper()
    if not _CODE_STRING_RE.fullmatch(text):
        raise ValueError(
            "should be a DICOM code string (1-16 of A-Z, 0-9, space, underscore), "
            f"got {show(value)}"
        )
    return text


def to_pattern(value: Any) -> str:
    """Validate a regular expression (matched case-insensitively with ``re.search``)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"should be a regular expression, got {show(value)}")
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"should be a regular expression, got {show(value)}: {exc}") from None
    return value


def to_provider(value: Any) -> str:
    """Validate an ONNX Runtime execution provider name, e.g. ``CPUExecutionProvider``."""
    if not isinstance(value, str) or not re.fullmatch(
        r"[A-Za-z0-9]+ExecutionProvider", value.strip()
    ):
        raise ValueError(
            'should be an ONNX Runtime provider name ending in "ExecutionProvider", '
            f"got {show(value)}"
        )
    return value.strip()


def to_log_level(value: Any) -> str:
    """Validate a logging level name (case-insensitive); returns it upper-case."""
    if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
        return value.strip().upper()
    raise ValueError(f"should be one of {', '.join(LOG_LEVELS)}, got {show(value)}")


def to_uid_root(value: Any) -> str:
    """Validate a UID root (PS3.5 section 9.1) used as prefix of generated UIDs.

    Components are digits without leading zeros (``0`` itself allowed). A
    missing trailing ``.`` is added.

    Raises
    ------
    ValueError
        If the value is not a valid root of at most 48 characters.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f'should be a UID root such as "1.2.826.0.1.3680043.10.1234.", got {show(value)}'
        )
    root = value.strip()
    if not root.endswith("."):
        root += "."
    if not _UID_ROOT_RE.fullmatch(root):
        raise ValueError(
            "should be a UID root of numeric components without leading zeros, "
            f'such as "1.2.826.0.1.3680043.10.1234.", got {show(value)}'
        )
    if len(root) > MAX_UID_ROOT_LENGTH:
        raise ValueError(
            f"should be a UID root of at most {MAX_UID_ROOT_LENGTH} characters, got {show(value)}"
        )
    return root
