"""The ``[triage]`` table of the settings: rules that turn a result into a flag and a priority.

Each result of the model is matched against an ordered list of rules
(TOML ``[[triage.rules]]``); the FIRST rule whose conditions all hold gives
the job its flag, priority and rule name (:mod:`pacs_node.triage` applies
them, ``docs/triage.md`` documents the matching). A job that is not analysed
(rejected or failed) gets the flag ``"not analysed: <reason>"`` with
``not_analysed_priority``; a result that no rule matches gets the flag
``"no triage rule matched"`` with ``unmatched_priority``.

Example::

    [triage]
    not_analysed_priority = "routine"

    [[triage.rules]]
    name = "covid"
    class = "covid19"
    min_probability = 0.5
    flag = "COVID-19 pattern"
    priority = "urgent"
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from config.sections import check_field, to_name
from config.validators import show, to_bool, to_float, to_str_list, to_text

LOGGER = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TRIAGE_RULES",
    "PRIORITIES",
    "TRIAGE_FIELDS",
    "TriageRule",
    "TriageRules",
    "to_priority",
    "triage_table",
]

#: Priorities, most urgent first (the worklist sorts by this order).
PRIORITIES: tuple[str, ...] = ("urgent", "high", "routine", "low")

_CLASS_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: TOML keys of one rule; ``class`` is stored as ``class_key``.
_RULE_KEYS: tuple[str, ...] = (
    "name",
    "flag",
    "priority",
    "class",
    "min_probability",
    "require_predicted",
    "min_lesion_volume_ml",
    "min_involvement_percent",
)


def to_priority(value: Any) -> str:
    """Validate a priority: ``urgent``, ``high``, ``routine`` or ``low`` (any case)."""
    if isinstance(value, str) and value.strip().lower() in PRIORITIES:
        return value.strip().lower()
    raise ValueError(f"should be one of {', '.join(PRIORITIES)}, got {show(value)}")


def _flag(value: Any) -> str:
    text = to_text(value)
    if len(text) > 100 or any(ord(c) < 0x20 for c in text):
        raise ValueError(f"should be one line of at most 100 characters, got {show(value)}")
    return text


def _class_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CLASS_KEY_RE.fullmatch(value.strip()):
        raise ValueError(
            "should be a class key of the model's manifest (letters, digits, '_', '.', '-'), "
            f"got {show(value)}"
        )
    return value.strip()


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


#: Converters of the fields of :class:`TriageRule` (dataclass field names).
RULE_FIELDS: dict[str, Callable[[Any], Any]] = {
    "name": to_name,
    "flag": _flag,
    "priority": to_priority,
    "class_key": _class_key,
    "min_probability": _optional(lambda v: to_float(v, 0.0, 1.0)),
    "require_predicted": to_bool,
    "min_lesion_volume_ml": _optional(lambda v: to_float(v, 0.0)),
    "min_involvement_percent": _optional(lambda v: to_float(v, 0.0, 100.0)),
}


@dataclass(frozen=True)
class TriageRule:
    """One triage rule: conditions on a result, and the flag and priority it gives.

    Every condition that is set must hold (see ``docs/triage.md``).

    Parameters
    ----------
    name: str
        Unique rule name, recorded with the job (``triage.rule``), e.g.
        ``"covid"``.
    flag: str
        The flag, one line of at most 100 characters, e.g.
        ``"COVID-19 pattern"``.
    priority: str
        ``"urgent"``, ``"high"``, ``"routine"`` or ``"low"``.
    class_key: str | None
        TOML key ``class``: a class key of the model's manifest (bundled
        model: ``covid19``, ``cap``, ``no_pneumonia``). ``None`` (default):
        any class.
    min_probability: float | None
        The probability of `class_key` (or, without `class_key`, of the
        predicted class) must be at least this (0-1). ``None``: no condition.
    require_predicted: bool
        With `class_key`: the class must also be the predicted (most probable)
        one. Default ``True``; ``False`` lets a rule fire on a class that is
        not the most probable one when its probability reaches
        `min_probability`.
    min_lesion_volume_ml: float | None
        Total lesion volume in mL must be at least this.
    min_involvement_percent: float | None
        Lesion volume as a percentage of both lungs' volume must be at least
        this (0-100).

    Raises
    ------
    ValueError
        ``'Argument "<field>" should ...'`` if a value is invalid.
    """

    name: str
    flag: str
    priority: str
    class_key: str | None = None
    min_probability: float | None = None
    require_predicted: bool = True
    min_lesion_volume_ml: float | None = None
    min_involvement_percent: float | None = None

    def __post_init__(self) -> None:
        for name, convert in RULE_FIELDS.items():
            check_field(self, name, convert)

    @classmethod
    def parse(cls, value: Any) -> TriageRule:
        """Build from a TOML table (``class`` for `class_key`) or a :class:`TriageRule`.

        Raises
        ------
        ValueError
            Naming the rule and the key at fault, e.g.
            ``'rule "covid": "min_probability" should be a number 0-1, got 1.5'``.
        """
        if isinstance(value, TriageRule):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                f'should be a table with "name", "flag", "priority" and conditions, '
                f"got {show(value)}"
            )
        label = f'rule "{value["name"]}"' if isinstance(value.get("name"), str) else "rule"
        unknown = sorted(set(value) - set(_RULE_KEYS))
        if unknown:
            raise ValueError(
                f"{label}: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(_RULE_KEYS)})"
            )
        missing = [key for key in ("name", "flag", "priority") if key not in value]
        if missing:
            raise ValueError(f"{label}: missing key(s) {', '.join(missing)}")
        kwargs = {("class_key" if key == "class" else key): item for key, item in value.items()}
        try:
            return cls(**kwargs)
        except ValueError as exc:
            text = str(exc).replace('Argument "class_key"', 'Argument "class"')
            raise ValueError(f"{label}: {text.removeprefix('Argument ')}") from None

    @property
    def conditions(self) -> str:
        """The conditions in words, e.g. ``"class covid19 predicted, p >= 0.5"``."""
        parts: list[str] = []
        if self.class_key is not None:
            parts.append(
                f"class {self.class_key}" + (" predicted" if self.require_predicted else "")
            )
        if self.min_probability is not None:
            parts.append(f"p >= {self.min_probability:g}")
        if self.min_lesion_volume_ml is not None:
            parts.append(f"lesions >= {self.min_lesion_volume_ml:g} mL")
        if self.min_involvement_percent is not None:
            parts.append(f"involvement >= {self.min_involvement_percent:g} %")
        return ", ".join(parts) or "always"

    def to_dict(self) -> dict[str, Any]:
        """TOML form (``class``; unset conditions left out)."""
        data: dict[str, Any] = {"name": self.name, "flag": self.flag, "priority": self.priority}
        optional = {
            "class": self.class_key,
            "min_probability": self.min_probability,
            "min_lesion_volume_ml": self.min_lesion_volume_ml,
            "min_involvement_percent": self.min_involvement_percent,
        }
        data.update({key: item for key, item in optional.items() if item is not None})
        if not self.require_predicted:
            data["require_predicted"] = False
        return data


#: The rules used when ``[[triage.rules]]`` is not set (bundled model's classes).
DEFAULT_TRIAGE_RULES: tuple[TriageRule, ...] = (
    TriageRule("covid", "COVID-19 pattern", "urgent", class_key="covid19"),
    TriageRule("cap", "pneumonia, CAP pattern", "high", class_key="cap"),
    TriageRule("no-pneumonia", "no pneumonia detected", "routine", class_key="no_pneumonia"),
)


def _rules(value: Any) -> tuple[TriageRule, ...]:
    if isinstance(value, str) and value.strip().startswith("{"):
        value = "[" + value + "]"  # one rule as a JSON object (environment)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"should be a JSON array of rule tables: {exc}") from None
    rules = to_str_list(value, TriageRule.parse, "rule table")
    if not rules:
        raise ValueError("should contain at least one rule")
    names = [rule.name for rule in rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"should have unique rule names, got {', '.join(duplicates)} twice")
    return rules


#: Keys of the ``[triage]`` table and their converters.
TRIAGE_FIELDS: dict[str, Callable[[Any], Any]] = {
    "rules": _rules,
    "not_analysed_priority": to_priority,
    "unmatched_priority": to_priority,
}


@dataclass(frozen=True)
class TriageRules:
    """The triage rules of a node (``[triage]`` table).

    Parameters
    ----------
    rules: tuple[TriageRule, ...]
        Ordered rules, first match wins. Default
        :data:`DEFAULT_TRIAGE_RULES`.
    not_analysed_priority: str
        Priority of jobs that were not analysed (rejected or failed), flag
        ``"not analysed: <reason>"``. Default ``"routine"``: a study the
        model could not read is not pushed down the worklist.
    unmatched_priority: str
        Priority of a result that no rule matches (flag ``"no triage rule
        matched"``). Default ``"routine"``.

    Raises
    ------
    ValueError
        ``'Argument "<field>" should ...'`` if a value is invalid.
    """

    rules: tuple[TriageRule, ...] = field(default=DEFAULT_TRIAGE_RULES)
    not_analysed_priority: str = "routine"
    unmatched_priority: str = "routine"

    def __post_init__(self) -> None:
        for name, convert in TRIAGE_FIELDS.items():
            check_field(self, name, convert)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (``rules`` as a list of TOML tables)."""
        return {
            "rules": [rule.to_dict() for rule in self.rules],
            "not_analysed_priority": self.not_analysed_priority,
            "unmatched_priority": self.unmatched_priority,
        }


def triage_table(value: Any) -> TriageRules:
    """Accept only :class:`TriageRules` (the loader builds it from the table)."""
    if isinstance(value, TriageRules):
        return value
    raise ValueError(f"should be TriageRules, got {show(type(value).__name__)}")
