"""The typed, frozen settings object of a deepsc-node.

Every key, its default and its environment variable (``DEEPSC_`` + the key
upper-cased, ``__`` between a table and its key) is documented in
``docs/deepsc-node.example.toml``. Values are checked when the dataclasses
are built, so a :class:`Settings` object is always valid; use
:func:`config.load_settings` to build one from a file, the environment and
the command line with error messages that name the key and the source.

Examples
--------
>>> settings = Settings()
>>> settings.port
11112
>>> settings.selection.modalities
('CT',)
>>> settings.export_retry.delay(3)
20.0
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.sections import (
    DEFAULT_OBJECTS,
    RESULT_OBJECT_KINDS,
    RETRY_FIELDS,
    SELECTION_FIELDS,
    TIMEOUT_FIELDS,
    AssociationTimeouts,
    CallingAE,
    Destination,
    RetryPolicy,
    SelectionRules,
    check_field,
    positive_float,
)
from config.http import HTTP_FIELDS, HTTP_SECRET_FIELDS, HTTPSettings, http_table
from config.hl7 import HL7Destination, to_hl7_destinations
from config.tls import TLS_FIELDS, TLS_SECRET_FIELDS, TLSSettings, tls_table
from config.triage import TRIAGE_FIELDS, TriageRules, triage_table
from config.validators import (
    show,
    to_ae_title,
    to_bool,
    to_float,
    to_host,
    to_int,
    to_log_level,
    to_path,
    to_port,
    to_provider,
    to_str_list,
    to_text,
    to_uid_root,
)

LOGGER = logging.getLogger(__name__)

__all__ = [
    "AssociationTimeouts",
    "CallingAE",
    "DEFAULT_OBJECTS",
    "DEFAULT_PROVIDERS",
    "DEFAULT_UID_ROOT",
    "Destination",
    "HTTPSettings",
    "HL7Destination",
    "RESULT_OBJECT_KINDS",
    "RetryPolicy",
    "SelectionRules",
    "Settings",
    "TLSSettings",
    "TriageRules",
    "bundled_model_dir",
    "default_data_dir",
]

#: UID root used when ``uid_root`` is not set: a fixed project root under the
#: Medical Connections arc (1.2.826.0.1.3680043). It only keeps generated
#: UIDs well-formed; every site should register and set its own root.
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.10.1234."

#: ONNX Runtime providers tried in order when ``providers`` is not set; the
#: CPU provider is last so that a machine without CUDA still runs.
DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")

#: File name of the default SQLite database inside ``data_dir``.
DEFAULT_DATABASE_NAME = "deepsc-node.sqlite3"


def bundled_model_dir() -> Path:
    """Directory of the model shipped inside the installed ``inference`` package.

    The package is located without importing it (no numpy import at load).

    Raises
    ------
    ConfigError
        If the ``inference`` package is not installed.
    """
    spec = importlib.util.find_spec("inference")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the inference package is not installed: no bundled model")
    return Path(list(spec.submodule_search_locations)[0]) / "bundled_model"


def default_data_dir() -> Path:
    """``deepsc-data`` in the current working directory (made absolute)."""
    return Path.cwd() / "deepsc-data"


def _providers(value: Any) -> tuple[str, ...]:
    providers = to_str_list(value, to_provider, "provider name")
    if not providers:
        raise ValueError("should name at least one ONNX Runtime provider")
    if len(set(providers)) != len(providers):
        raise ValueError(f"should not repeat a provider, got {show(list(providers))}")
    if "CPUExecutionProvider" in providers and providers[-1] != "CPUExecutionProvider":
        raise ValueError(f'should list "CPUExecutionProvider" last, got {show(list(providers))}')
    return providers


def _destinations(value: Any) -> tuple[Destination, ...]:
    destinations = to_str_list(value, Destination.parse, "destination")
    names = [d.name for d in destinations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"should have unique names, got {', '.join(duplicates)} more than once")
    return destinations


def _database_url(value: Any) -> str:
    if value is None or value == "":
        return ""
    text = to_text(value)
    from sqlalchemy.engine import make_url  # imported late: only needed here
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(text)
    except ArgumentError:
        raise ValueError(
            f'should be an SQLAlchemy database URL such as "sqlite:////path/db.sqlite3", '
            f"got {show(value)}"
        ) from None
    return text


def _selection(value: Any) -> SelectionRules:
    if isinstance(value, SelectionRules):
        return value
    raise ValueError(f"should be SelectionRules, got {show(value)}")


def _retry(value: Any) -> RetryPolicy:
    if isinstance(value, RetryPolicy):
        return value
    raise ValueError(f"should be RetryPolicy, got {show(value)}")


def _timeouts(value: Any) -> AssociationTimeouts:
    if isinstance(value, AssociationTimeouts):
        return value
    raise ValueError(f"should be AssociationTimeouts, got {show(value)}")


#: Converters of the top-level keys that are not tables. Path keys take the
#: base directory for relative paths as second argument.
SCALAR_FIELDS: dict[str, Callable[[Any], Any]] = {
    "ae_title": to_ae_title,
    "port": to_port,
    "bind_address": to_host,
    "allowed_calling_aes": lambda v: to_str_list(v, CallingAE.parse, "calling AE"),
    "require_called_ae": to_bool,
    "destinations": _destinations,
    "hl7_destinations": to_hl7_destinations,
    "quiet_time": positive_float,
    "max_series_hold": lambda v: to_float(v, 0.0),
    "database_url": _database_url,
    "providers": _providers,
    "workers": lambda v: to_int(v, 1, 256),
    "log_level": to_log_level,
    "uid_root": to_uid_root,
    "result_series_number_base": lambda v: to_int(v, 1, 2_000_000_000),
}
#: Keys whose values are paths.
PATH_FIELDS: tuple[str, ...] = ("data_dir", "model_dir")
#: Tables (nested keys) and their converters.
TABLE_FIELDS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "selection": SELECTION_FIELDS,
    "export_retry": RETRY_FIELDS,
    "timeouts": TIMEOUT_FIELDS,
    "tls": TLS_FIELDS,
    "http": HTTP_FIELDS,
    "triage": TRIAGE_FIELDS,
}
#: Keys whose values are secret and hidden by ``to_dict(hide_secrets=True)``
#: (dotted for keys in a table). ``database_url`` is special: only its
#: password is hidden.
SECRET_FIELDS: frozenset[str] = frozenset(f"tls.{name}" for name in TLS_SECRET_FIELDS) | frozenset(
    f"http.{name}" for name in HTTP_SECRET_FIELDS
)


@dataclass(frozen=True)
class Settings:
    """Everything a deepsc-node needs to run; immutable and always valid.

    Build it with :func:`config.load_settings`. Defaults run a complete node
    on one machine with no other service. See ``docs/deepsc-node.example.toml``
    for each key.

    Parameters
    ----------
    ae_title: str
        The node's AE title. Default ``"DEEPSC"``.
    port: int
        Port the SCP listens on. Default 11112.
    bind_address: str
        Address the SCP listens on. Default ``"0.0.0.0"`` (all IPv4).
    allowed_calling_aes: tuple[CallingAE, ...]
        Peers allowed to associate; empty (default): any.
    require_called_ae: bool
        Reject associations whose Called AE Title is not `ae_title`.
        Default ``True``.
    destinations: tuple[Destination, ...]
        Where results go. Default none.
    quiet_time: float
        Seconds without a new instance after which a series is complete.
        Default 30.
    max_series_hold: float
        Longest time in seconds a series is kept from completing, counted
        from its last instance, while an association that delivered
        instances of it is still open (a stalled sender). After it the
        quiet timer alone decides, with a WARNING naming the series and the
        association. ``0`` switches the hold off. Default 600.
    selection: SelectionRules
        Which series are processed.
    data_dir: Path
        Instance and result files and the default database. Default
        ``./deepsc-data`` (absolute).
    database_url: str
        SQLAlchemy URL; empty: SQLite file ``deepsc-node.sqlite3`` in
        `data_dir`.
    model_dir: Path
        Model directory (``model.onnx`` + ``manifest.json``). Default: the
        bundled model.
    providers: tuple[str, ...]
        ONNX Runtime execution providers, in order of preference.
    workers: int
        Inference worker threads. Default 1.
    log_level: str
        Logging level name. Default ``"INFO"``.
    uid_root: str
        Prefix of every UID the node generates. Sites should set their own.
    export_retry: RetryPolicy
        Re-sending results to destinations.
    timeouts: AssociationTimeouts
        Association timeouts.
    result_series_number_base: int
        Series Number of result series: base + 1 (SEG), + 2 (SR), ...
        Default 9000.
    tls: TLSSettings
        DICOM TLS of the SCP and of destinations with ``tls = true``.
        Default: plain TCP.
    http: HTTPSettings
        The HTTP API, metrics and worklist page (:mod:`pacs_node.api`).
        Default: on, 127.0.0.1:8080, token generated into `data_dir`.
    triage: TriageRules
        Triage rules: flag and priority of each result (``[triage]``,
        ``[[triage.rules]]``; ``docs/triage.md``).
    hl7_destinations: tuple[HL7Destination, ...]
        RIS/worklist endpoints that get an HL7 ORU^R01 per finished job
        (``[[hl7_destinations]]``). Default none.
    """

    ae_title: str = "DEEPSC"
    port: int = 11112
    bind_address: str = "0.0.0.0"
    allowed_calling_aes: tuple[CallingAE, ...] = ()
    require_called_ae: bool = True
    destinations: tuple[Destination, ...] = ()
    quiet_time: float = 30.0
    max_series_hold: float = 600.0
    selection: SelectionRules = field(default_factory=SelectionRules)
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str = ""
    model_dir: Path = field(default_factory=bundled_model_dir)
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    workers: int = 1
    log_level: str = "INFO"
    uid_root: str = DEFAULT_UID_ROOT
    export_retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: AssociationTimeouts = field(default_factory=AssociationTimeouts)
    result_series_number_base: int = 9000
    tls: TLSSettings = field(default_factory=TLSSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    triage: TriageRules = field(default_factory=TriageRules)
    hl7_destinations: tuple[HL7Destination, ...] = ()

    def __post_init__(self) -> None:
        for name, convert in SCALAR_FIELDS.items():
            check_field(self, name, convert)
        for name in PATH_FIELDS:
            check_field(self, name, lambda v: to_path(v, Path.cwd()))
        check_field(self, "selection", _selection)
        check_field(self, "export_retry", _retry)
        check_field(self, "timeouts", _timeouts)
        check_field(self, "tls", tls_table)
        check_field(self, "http", http_table)
        check_field(self, "triage", triage_table)
        if not self.database_url:
            url = f"sqlite:///{self.data_dir / DEFAULT_DATABASE_NAME}"
            object.__setattr__(self, "database_url", url)

    @property
    def instances_dir(self) -> Path:
        """Received instances: ``data_dir / "instances"``."""
        return self.data_dir / "instances"

    @property
    def results_dir(self) -> Path:
        """Result objects the node wrote: ``data_dir / "results"``."""
        return self.data_dir / "results"

    def destination(self, name: str) -> Destination:
        """The destination called `name`.

        Raises
        ------
        KeyError
            If there is none.
        """
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise KeyError(name)

    def is_calling_ae_allowed(self, ae_title: str, host: str | None = None) -> bool:
        """Whether a peer may associate (always true when no allow-list is set).

        Parameters
        ----------
        ae_title: str
            The peer's calling AE title (surrounding spaces ignored).
        host: str | None
            The peer's address, checked against entries that name a host.
        """
        if not self.allowed_calling_aes:
            return True
        title = ae_title.strip(" ")
        return any(
            entry.ae_title == title and (entry.host is None or entry.host == host)
            for entry in self.allowed_calling_aes
        )

    def to_dict(self, hide_secrets: bool = False) -> dict[str, Any]:
        """Plain data (str, int, float, None, lists, dicts) for every key.

        Parameters
        ----------
        hide_secrets: bool
            Replace secret values with ``"<hidden>"`` and the password of
            ``database_url`` with ``***``.

        Returns
        -------
        dict[str, Any]
            Keys as in the TOML file; feeding it back as ``overrides`` to
            :func:`config.load_settings` gives equal settings (unless hidden).
        """
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if hasattr(value, "to_dict"):
                data[item.name] = value.to_dict()
            elif isinstance(value, tuple):
                data[item.name] = [v.to_dict() if hasattr(v, "to_dict") else v for v in value]
            elif isinstance(value, Path):
                data[item.name] = str(value)
            else:
                data[item.name] = value
        if hide_secrets:
            for dotted in SECRET_FIELDS:
                table, _, key = dotted.partition(".")
                if key and data.get(table, {}).get(key) is not None:
                    data[table][key] = "<hidden>"
            from sqlalchemy.engine import make_url

            data["database_url"] = make_url(self.database_url).render_as_string(hide_password=True)
        return data
