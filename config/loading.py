"""Load :class:`~config.settings.Settings` from file, environment and command line.

Precedence, lowest first: defaults < TOML file < ``DEEPSC_*`` environment
variables < command-line overrides. Tables (``selection``,
``export_retry``, ``timeouts``) merge key by key; lists (``destinations``,
``allowed_calling_aes``, ``providers``...) are replaced as a whole.

This module is the only place in the project that reads ``os.environ``.

Environment variables
    ``DEEPSC_<KEY>`` for a top-level key, ``DEEPSC_<TABLE>__<KEY>`` for a key
    in a table, e.g. ``DEEPSC_PORT``, ``DEEPSC_SELECTION__MIN_SLICES``,
    ``DEEPSC_EXPORT_RETRY__MAX_ATTEMPTS``. Lists are comma-separated or a
    JSON array: ``DEEPSC_DESTINATIONS="PACS=ORTHANC@10.0.0.5:4242,..."``,
    ``DEEPSC_ALLOWED_CALLING_AES="AE1,AE2@10.0.0.7"``. ``DEEPSC_CONFIG`` names
    the TOML file when no file is passed. Any other ``DEEPSC_*`` variable is
    an error (typos are not ignored), except the test-suite variables in
    :data:`NON_SETTINGS_VARIABLES`.
Relative paths
    In the file: relative to the file's directory. From the environment or
    the command line: relative to the current working directory.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import SettingsError, SettingsProblem
from config.settings import (
    PATH_FIELDS,
    SCALAR_FIELDS,
    TABLE_FIELDS,
    AssociationTimeouts,
    RetryPolicy,
    SelectionRules,
    Settings,
)
from config.http import HTTPSettings
from config.triage import TriageRules
from config.tls import TLS_PATH_FIELDS, TLSSettings, to_optional_path
from config.validators import show, to_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

LOGGER = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE_VARIABLE",
    "ENV_PREFIX",
    "NON_SETTINGS_VARIABLES",
    "env_variable",
    "known_keys",
    "load_settings",
]

#: Prefix of the environment variables read.
ENV_PREFIX = "DEEPSC_"
#: Environment variable naming the TOML file when none is passed.
CONFIG_FILE_VARIABLE = "DEEPSC_CONFIG"
#: ``DEEPSC_*`` variables that are not settings and are not refused:
#: the test suite's data location and PostgreSQL URL.
NON_SETTINGS_VARIABLES: frozenset[str] = frozenset(
    {"DEEPSC_SHARED_DATA", "DEEPSC_TEST_POSTGRES_URL"}
)


@dataclass(frozen=True)
class _Value:
    """A raw value and where it came from."""

    value: Any
    source: str
    base_dir: Path


def known_keys() -> tuple[str, ...]:
    """Every settings key, tables as dotted keys (``"selection.min_slices"``)."""
    keys = list(SCALAR_FIELDS) + list(PATH_FIELDS)
    for table, table_fields in TABLE_FIELDS.items():
        keys.extend(f"{table}.{name}" for name in table_fields)
    return tuple(keys)


def env_variable(key: str) -> str:
    """Environment variable of a settings key, e.g. ``DEEPSC_SELECTION__MIN_SLICES``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load and validate the settings.

    Parameters
    ----------
    config_file: pathlib.Path | None
        TOML file; ``None``: the file named by ``DEEPSC_CONFIG`` if set, else
        no file.
    environ: Mapping[str, str] | None
        Environment variables; ``None``: ``os.environ``.
    overrides: Mapping[str, Any] | None
        Command-line values by key; tables either nested
        (``{"selection": {"min_slices": 10}}``) or dotted
        (``{"selection.min_slices": 10}``). ``None`` values are ignored
        (an unset flag), except ``export_retry.max_attempts`` where it means
        "forever" only when given inside the nested ``export_retry`` table.

    Returns
    -------
    Settings
        The validated, frozen settings.

    Raises
    ------
    SettingsError
        Listing every invalid or unknown key with its source.
    """
    env = os.environ if environ is None else environ
    problems: list[SettingsProblem] = []
    merged: dict[str, _Value] = {}
    cwd = Path.cwd()

    if config_file is None and env.get(CONFIG_FILE_VARIABLE):
        config_file = to_path(env[CONFIG_FILE_VARIABLE], cwd)
    if config_file is not None:
        merged.update(_read_file(Path(config_file), problems))
    merged.update(_read_environ(env, cwd, problems))
    if overrides:
        merged.update(_read_overrides(overrides, cwd, problems))

    settings = _build(merged, problems)
    if problems or settings is None:
        raise SettingsError(problems)
    LOGGER.debug("settings loaded (%d keys set explicitly)", len(merged))
    return settings


def _read_file(path: Path, problems: list[SettingsProblem]) -> dict[str, _Value]:
    source = f"file {path}"
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        problems.append(SettingsProblem("config_file", source, "file not found"))
        return {}
    except OSError as exc:
        problems.append(SettingsProblem("config_file", source, f"cannot be read: {exc}"))
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(SettingsProblem("config_file", source, f"is not valid TOML: {exc}"))
        return {}
    return _flatten(document, source, path.resolve().parent, problems)


def _flatten(
    document: Mapping[str, Any], source: str, base_dir: Path, problems: list[SettingsProblem]
) -> dict[str, _Value]:
    values: dict[str, _Value] = {}
    known = known_keys()
    for key, value in document.items():
        if key in TABLE_FIELDS:
            if not isinstance(value, Mapping):
                problems.append(
                    SettingsProblem(key, source, f"should be a table, got {show(value)}")
                )
                continue
            for sub_key, sub_value in value.items():
                dotted = f"{key}.{sub_key}"
                if sub_key not in TABLE_FIELDS[key]:
                    problems.append(SettingsProblem(dotted, source, _unknown(dotted, known)))
                    continue
                values[dotted] = _Value(sub_value, source, base_dir)
        elif key in known:
            values[key] = _Value(value, source, base_dir)
        else:
            problems.append(SettingsProblem(key, source, _unknown(key, known)))
    return values


def _unknown(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"unknown key{hint}"


def _read_environ(
    env: Mapping[str, str], cwd: Path, problems: list[SettingsProblem]
) -> dict[str, _Value]:
    values: dict[str, _Value] = {}
    by_variable = {env_variable(key): key for key in known_keys()}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        if name == CONFIG_FILE_VARIABLE or name in NON_SETTINGS_VARIABLES:
            continue
        source = f"environment {name}"
        key = by_variable.get(name)
        if key is None:
            close = difflib.get_close_matches(name, list(by_variable), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            problems.append(
                SettingsProblem(name, source, f"unknown DEEPSC_* environment variable{hint}")
            )
            continue
        values[key] = _Value(env[name], source, cwd)
    return values


def _read_overrides(
    overrides: Mapping[str, Any], cwd: Path, problems: list[SettingsProblem]
) -> dict[str, _Value]:
    source = "command line"
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if "." in key:
            table, _, sub_key = key.partition(".")
            if value is None:
                continue
            nested.setdefault(table, {})
            if isinstance(nested[table], dict):
                nested[table][sub_key] = value
            else:
                problems.append(SettingsProblem(key, source, f'"{table}" is not a table'))
        elif isinstance(value, Mapping):
            nested.setdefault(key, {}).update(value)
        elif value is not None:
            nested[key] = value
    return _flatten(nested, source, cwd, problems)


def _convert(
    key: str, item: _Value, convert: Callable[[Any], Any], problems: list[SettingsProblem]
) -> tuple[bool, Any]:
    try:
        return True, convert(item.value)
    except ValueError as exc:
        problems.append(SettingsProblem(key, item.source, str(exc)))
        return False, None


def _to_path(value: Any, base_dir: Path) -> Path:
    return to_path(value, base_dir)


def _build(merged: dict[str, _Value], problems: list[SettingsProblem]) -> Settings | None:
    kwargs: dict[str, Any] = {}
    for key, convert in SCALAR_FIELDS.items():
        if key in merged:
            ok, value = _convert(key, merged[key], convert, problems)
            if ok:
                kwargs[key] = value
    for key in PATH_FIELDS:
        if key in merged:
            item = merged[key]
            ok, value = _convert(
                key, item, functools.partial(_to_path, base_dir=item.base_dir), problems
            )
            if ok:
                kwargs[key] = value
    classes: dict[str, type] = {
        "selection": SelectionRules,
        "export_retry": RetryPolicy,
        "timeouts": AssociationTimeouts,
        "tls": TLSSettings,
        "http": HTTPSettings,
        "triage": TriageRules,
    }
    for table, table_fields in TABLE_FIELDS.items():
        table_kwargs: dict[str, Any] = {}
        sources: list[str] = []
        for name, convert in table_fields.items():
            key = f"{table}.{name}"
            if key in merged:
                if table == "tls" and name in TLS_PATH_FIELDS:
                    # Relative paths in a file are taken from the file's folder.
                    convert = functools.partial(to_optional_path, base_dir=merged[key].base_dir)
                ok, value = _convert(key, merged[key], convert, problems)
                if ok:
                    table_kwargs[name] = value
                    sources.append(merged[key].source)
        try:
            kwargs[table] = classes[table](**table_kwargs)
        except ValueError as exc:
            # A cross-field rule (e.g. max_backoff < initial_backoff): the
            # message names the argument; report it with its source.
            match = re.match(r'Argument "(\w+)" ', str(exc))
            key = f"{table}.{match[1]}" if match else table
            source = (
                merged[key].source if key in merged else (sources[-1] if sources else "default")
            )
            problems.append(SettingsProblem(key, source, _strip(str(exc))))
    if problems:
        return None
    try:
        return Settings(**kwargs)
    except ValueError as exc:  # pragma: no cover - every key was checked above
        problems.append(SettingsProblem("settings", "combined sources", str(exc)))
        return None


def _strip(message: str) -> str:
    # 'Argument "max_backoff" should ...' -> 'should ...' (the key is named already)
    if message.startswith('Argument "'):
        return message.split('" ', 1)[1] if '" ' in message else message
    return message
