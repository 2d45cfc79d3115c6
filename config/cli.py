"""Command-line side of the settings: common flags and ``deepsc-node config``.

Commands that need settings call :func:`add_settings_arguments` on their
sub-parser and :func:`settings_from_args` in their ``func``; flags override
the environment, which overrides the file.

``deepsc-node config --check [--config FILE] [flags]`` prints the effective
settings as TOML and exits 0, or prints every problem and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from config.errors import SettingsError, SettingsProblem
from config.formatting import format_settings
from config.loading import load_settings
from config.settings import Settings

LOGGER = logging.getLogger(__name__)

__all__ = ["add_settings_arguments", "overrides_from_args", "register", "settings_from_args"]

#: Flag destinations (``args.<dest>``) and the settings key each sets.
FLAG_KEYS: dict[str, str] = {
    "ae_title": "ae_title",
    "port": "port",
    "bind_address": "bind_address",
    "data_dir": "data_dir",
    "database_url": "database_url",
    "model_dir": "model_dir",
    "workers": "workers",
    "log_level": "log_level",
    "quiet_time": "quiet_time",
    "uid_root": "uid_root",
    "destinations": "destinations",
    "allowed_calling_aes": "allowed_calling_aes",
    "providers": "providers",
    "http_port": "http.port",
    "http_bind": "http.bind_address",
    "http_enabled": "http.enabled",
}


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and the settings flags to `parser`.

    Every flag defaults to ``None`` (not given), so unset flags do not hide
    the environment or the file.
    """
    group = parser.add_argument_group("settings (override DEEPSC_* and the file)")
    group.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    group.add_argument("--ae-title", dest="ae_title", metavar="AE")
    group.add_argument("--port", metavar="PORT")
    group.add_argument("--bind-address", dest="bind_address", metavar="HOST")
    group.add_argument("--data-dir", dest="data_dir", metavar="DIR")
    group.add_argument("--database-url", dest="database_url", metavar="URL")
    group.add_argument("--model-dir", dest="model_dir", metavar="DIR")
    group.add_argument("--workers", metavar="N")
    group.add_argument("--log-level", dest="log_level", metavar="LEVEL")
    group.add_argument("--quiet-time", dest="quiet_time", metavar="SECONDS")
    group.add_argument("--uid-root", dest="uid_root", metavar="ROOT")
    group.add_argument(
        "--destination",
        dest="destinations",
        action="append",
        metavar="NAME=AE@HOST:PORT",
        help="result destination (repeatable; replaces configured destinations)",
    )
    group.add_argument(
        "--allowed-calling-ae",
        dest="allowed_calling_aes",
        action="append",
        metavar="AE[@HOST]",
        help="allowed calling AE (repeatable)",
    )
    group.add_argument(
        "--provider",
        dest="providers",
        action="append",
        metavar="NAME",
        help="ONNX Runtime provider, in order of preference (repeatable)",
    )
    group.add_argument(
        "--http-port", dest="http_port", metavar="PORT", help="port of the HTTP API (http.port)"
    )
    group.add_argument(
        "--http-bind",
        dest="http_bind",
        metavar="HOST",
        help="address of the HTTP API (http.bind_address)",
    )
    group.add_argument(
        "--no-http",
        dest="http_enabled",
        action="store_const",
        const=False,
        default=None,
        help="do not serve the HTTP API, metrics and worklist (http.enabled = false)",
    )
    group.add_argument(
        "--set",
        dest="settings_set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help='any settings key, e.g. "selection.min_slices=10" (repeatable)',
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Collect the settings flags of `args` as ``load_settings`` overrides.

    Raises
    ------
    SettingsError
        If a ``--set`` item has no ``=``.
    """
    overrides: dict[str, Any] = {}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = value
    for item in getattr(args, "settings_set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(
                [SettingsProblem(item, "command line --set", "should be KEY=VALUE")]
            )
        overrides[key.strip()] = value
    return overrides


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load the settings for a command: file < environment < flags.

    Raises
    ------
    SettingsError
        If any key is invalid.
    """
    return load_settings(
        config_file=getattr(args, "config", None),
        environ=environ,
        overrides=overrides_from_args(args),
    )


def _config_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"deepsc-node: invalid settings\n{exc}", file=sys.stderr)
        return 2
    sys.stdout.write(format_settings(settings))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``config`` command to the ``deepsc-node`` parser.

    Parameters
    ----------
    subparsers: argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers()``.
    """
    parser = subparsers.add_parser(
        "config",
        help="check and print the effective settings",
        description="Load the settings (file < DEEPSC_* environment < flags), "
        "print them as TOML and exit 0, or list every problem and exit 2.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate and print the effective settings (the default action)",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=_config_command)
