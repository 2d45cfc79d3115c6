"""Render settings as TOML text (``deepsc-node config --check``).

The text is valid TOML that :func:`config.load_settings` reads back to equal
settings, unless a secret was hidden (``hide_secrets=True``, the default:
the password of ``database_url`` and any key in ``SECRET_FIELDS``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from config.settings import TABLE_FIELDS, Settings

LOGGER = logging.getLogger(__name__)

__all__ = ["format_settings"]


def _value(value: Any) -> str:
    """One TOML value (str, bool, int, float, list of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def format_settings(settings: Settings, hide_secrets: bool = True) -> str:
    """Render `settings` as commented TOML.

    Parameters
    ----------
    settings: Settings
        The settings to show.
    hide_secrets: bool
        Hide secret values (see :meth:`Settings.to_dict`). Default ``True``.

    Returns
    -------
    str
        TOML text with every key, including defaults.

    Raises
    ------
    TypeError
        If `settings` is not a :class:`Settings`.
    """
    if not isinstance(settings, Settings):
        raise TypeError(f'Argument "settings" should be Settings, got {type(settings).__name__}')
    data = settings.to_dict(hide_secrets=hide_secrets)
    lines = [
        "# deepsc-node effective settings (defaults included).",
        "# Research use only, not for diagnosis.",
        "",
    ]
    for key, value in data.items():
        if key in TABLE_FIELDS or key in ("destinations", "hl7_destinations"):
            continue
        if key == "allowed_calling_aes":
            entries = [e["ae_title"] + (f"@{e['host']}" if "host" in e else "") for e in value]
            if not entries:
                lines.append("# allowed_calling_aes: empty, any calling AE is accepted")
            lines.append(f"allowed_calling_aes = {_value(entries)}")
            continue
        lines.append(f"{key} = {_value(value)}")
    if not data["destinations"]:
        lines.append("# destinations: none configured, results are not sent")
        lines.append("destinations = []")
    if not data["hl7_destinations"]:
        lines.append("hl7_destinations = []")
    for table in TABLE_FIELDS:
        lines.extend(["", f"[{table}]"])
        for key, value in data[table].items():
            if table == "triage" and key == "rules":
                continue
            if table == "export_retry" and key == "max_attempts" and value is None:
                value = "forever"
            if value is None:
                lines.append(f"# {key}: not set")
                continue
            lines.append(f"{key} = {_value(value)}")
    for rule in data["triage"]["rules"]:
        lines.extend(["", "[[triage.rules]]"])
        lines.extend(f"{key} = {_value(value)}" for key, value in rule.items())
    for name in ("destinations", "hl7_destinations"):
        for destination in data[name]:
            lines.extend(["", f"[[{name}]]"])
            for key, value in destination.items():
                lines.append(f"{key} = {_value(value)}")
    return "\n".join(lines) + "\n"
