"""deepsc-node config: one typed, validated, frozen settings object.

Sources, lowest precedence first: defaults < TOML file < ``DEEPSC_*``
environment < command line. :func:`load_settings` is the only place in the
project that reads ``os.environ``.
"""

import logging

from config.errors import ConfigError, SettingsError, SettingsProblem
from config.formatting import format_settings
from config.loading import env_variable, known_keys, load_settings
from config.settings import (
    DEFAULT_PROVIDERS,
    DEFAULT_UID_ROOT,
    RESULT_OBJECT_KINDS,
    AssociationTimeouts,
    CallingAE,
    Destination,
    RetryPolicy,
    SelectionRules,
    Settings,
    bundled_model_dir,
)
from config.http import HTTPSettings
from config.hl7 import HL7Destination
from config.tls import TLSSettings
from config.triage import DEFAULT_TRIAGE_RULES, PRIORITIES, TriageRule, TriageRules

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AssociationTimeouts",
    "CallingAE",
    "ConfigError",
    "DEFAULT_PROVIDERS",
    "DEFAULT_TRIAGE_RULES",
    "DEFAULT_UID_ROOT",
    "Destination",
    "HTTPSettings",
    "HL7Destination",
    "PRIORITIES",
    "RESULT_OBJECT_KINDS",
    "RetryPolicy",
    "SelectionRules",
    "Settings",
    "SettingsError",
    "SettingsProblem",
    "TLSSettings",
    "TriageRule",
    "TriageRules",
    "bundled_model_dir",
    "env_variable",
    "format_settings",
    "known_keys",
    "load_settings",
]
