"""Triage rules: defaults, custom TOML rules, validation that names the field, decisions.

Pure functions on result summaries shaped like ``ProcessedSeries.summary()``;
recording with the job is tested in tests/test_hl7.py (worker and watcher).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config import (
    DEFAULT_TRIAGE_RULES,
    HL7Destination,
    SettingsError,
    TriageRule,
    TriageRules,
    load_settings,
)
from pacs_node.triage import (
    NOT_ANALYSED_RULE,
    UNMATCHED_FLAG,
    rule_matches,
    triage_not_analysed,
    triage_result,
)


def summary(
    covid: float, cap: float, normal: float, volume: float = 10.0, percent: float = 1.5,
) -> dict[str, Any]:
    """A result summary with these class probabilities and lesion burden."""
    probabilities = {"covid19": covid, "cap": cap, "no_pneumonia": normal}
    return {
        "predicted_class": max(probabilities, key=lambda k: probabilities[k]),
        "class_probabilities": probabilities,
        "total_lesion_volume_ml": volume,
        "involvement": [
            {"region": "total", "lung_volume_ml": 4000.0, "lesion_volume_ml": volume,
             "percent": percent},
            {"region": "left", "lung_volume_ml": 2000.0, "lesion_volume_ml": volume,
             "percent": 2 * percent},
        ],
    }


def load(tmp_path: Path, text: str) -> TriageRules:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_settings(path, environ={}).triage


# -- defaults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "flag", "priority", "rule"),
    [
        (summary(0.91, 0.06, 0.03, 85.24, 3.41), "COVID-19 pattern", "urgent", "covid"),
        (summary(0.20, 0.70, 0.10), "pneumonia, CAP pattern", "high", "cap"),
        (summary(0.05, 0.05, 0.90, 0.0, 0.0), "no pneumonia detected", "routine",
         "no-pneumonia"),
    ],
)
def test_default_rules(result: dict[str, Any], flag: str, priority: str, rule: str) -> None:
    decision = triage_result(TriageRules(), result)
    assert (decision.flag, decision.priority, decision.rule) == (flag, priority, rule)
    assert decision.text.startswith(f"{flag}: {priority}; probabilities ")


def test_default_line_has_probabilities_and_lesion_burden() -> None:
    decision = triage_result(TriageRules(), summary(0.91, 0.06, 0.03, 85.24, 3.41))
    assert decision.text == (
        "COVID-19 pattern: urgent; probabilities covid19 91 %, cap 6 %, no_pneumonia 3 %; "
        "lesions 85.2 mL (3.4 % of lung volume)"
    )
    assert "\n" not in decision.text


def test_unmatched_result_and_not_analysed_get_their_configured_priority() -> None:
    rules = TriageRules(unmatched_priority="low", not_analysed_priority="high")
    other_model = {"predicted_class": "tumour", "class_probabilities": {"tumour": 0.8,
                                                                         "normal": 0.2}}
    decision = triage_result(rules, other_model)
    assert (decision.flag, decision.priority, decision.rule) == (UNMATCHED_FLAG, "low",
                                                                 "unmatched")
    not_analysed = triage_not_analysed(rules, "3 slices < minimum 20\nmore")
    assert (not_analysed.flag, not_analysed.priority, not_analysed.rule) == (
        "not analysed: 3 slices < minimum 20 more", "high", NOT_ANALYSED_RULE)
    assert TriageRules().not_analysed_priority == "routine"  # never pushed down by default
    assert len(triage_not_analysed(rules, "x" * 500).flag) == 128


# -- custom rules ---------------------------------------------------------------------------


CUSTOM = """
[triage]
not_analysed_priority = "low"

[[triage.rules]]
name = "extensive"
min_involvement_percent = 25
flag = "extensive involvement"
priority = "urgent"

[[triage.rules]]
name = "covid-suspect"
class = "covid19"
require_predicted = false
min_probability = 0.3
flag = "possible COVID-19 pattern"
priority = "high"

[[triage.rules]]
name = "big-lesions"
min_lesion_volume_ml = 50.0
flag = "large lesion volume"
priority = "high"

[[triage.rules]]
name = "confident-normal"
class = "no_pneumonia"
min_probability = 0.8
flag = "no pneumonia detected"
priority = "low"

[[triage.rules]]
name = "rest"
flag = "review"
priority = "routine"
"""


def test_custom_toml_rules_first_match_wins(tmp_path: Path) -> None:
    rules = load(tmp_path, CUSTOM)
    assert [r.name for r in rules.rules] == [
        "extensive", "covid-suspect", "big-lesions", "confident-normal", "rest"]
    assert rules.not_analysed_priority == "low"
    cases = {
        # 30 % involvement: the first rule, whatever the class
        "extensive": summary(0.05, 0.05, 0.90, 900.0, 30.0),
        # CAP predicted, but COVID-19 at 0.35 >= 0.3 (require_predicted = false)
        "covid-suspect": summary(0.35, 0.60, 0.05),
        # COVID-19 at 0.29: not enough; 60 mL of lesions
        "big-lesions": summary(0.29, 0.61, 0.10, 60.0),
        "confident-normal": summary(0.05, 0.05, 0.90),
        # normal at 0.75 < 0.8: falls through to the catch-all
        "rest": summary(0.15, 0.10, 0.75),
    }
    for expected, result in cases.items():
        assert triage_result(rules, result).rule == expected, expected


def test_rule_conditions_at_their_bounds() -> None:
    rule = TriageRule("r", "f", "high", class_key="covid19", min_probability=0.5,
                      min_lesion_volume_ml=10.0, min_involvement_percent=1.5)
    assert rule_matches(rule, summary(0.5, 0.3, 0.2, 10.0, 1.5))  # >= at every bound
    assert not rule_matches(rule, summary(0.49, 0.3, 0.21, 10.0, 1.5))
    assert not rule_matches(rule, summary(0.5, 0.3, 0.2, 9.99, 1.5))
    assert not rule_matches(rule, summary(0.5, 0.3, 0.2, 10.0, 1.49))
    # required class not predicted
    assert not rule_matches(TriageRule("r", "f", "high", class_key="cap"),
                            summary(0.6, 0.3, 0.1))
    # a class the model does not have never matches; a summary without lesions neither
    assert not rule_matches(TriageRule("r", "f", "high", class_key="tumour",
                                       require_predicted=False), summary(0.6, 0.3, 0.1))
    assert not rule_matches(TriageRule("r", "f", "high", min_lesion_volume_ml=0.0),
                            {"predicted_class": "cap", "class_probabilities": {"cap": 1.0}})
    assert rule.conditions == (
        "class covid19 predicted, p >= 0.5, lesions >= 10 mL, involvement >= 1.5 %")


def test_rules_from_the_environment_and_round_trip(tmp_path: Path) -> None:
    settings = load_settings(None, environ={
        "DEEPSC_TRIAGE__RULES": '[{"name": "all", "flag": "AI read", "priority": "High"}]',
        "DEEPSC_TRIAGE__UNMATCHED_PRIORITY": "low",
    })
    assert settings.triage.rules == (TriageRule("all", "AI read", "high"),)
    assert settings.triage.unmatched_priority == "low"
    assert load_settings(None, environ={}, overrides=settings.to_dict()) == settings
    default = load_settings(None, environ={})
    assert default.triage.rules == DEFAULT_TRIAGE_RULES
    assert load_settings(None, environ={}, overrides=default.to_dict()) == default


# -- invalid rules name the field ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ('name = "a"\nflag = "f"\npriority = "stat"', ['rule "a"', '"priority"', "stat"]),
        ('name = "a"\nflag = "f"\npriority = "high"\nmin_probability = 1.5',
         ['"min_probability"', "1.5"]),
        ('name = "a"\nflag = "f"\npriority = "high"\nmin_lesion_volume_ml = -1',
         ['"min_lesion_volume_ml"']),
        ('name = "a"\nflag = "f"\npriority = "high"\nmin_involvement_percent = 101',
         ['"min_involvement_percent"']),
        ('name = "a"\nflag = "f"\npriority = "high"\nclass = "covid 19"', ['"class"']),
        ('name = "a"\nflag = "f"\npriority = "high"\nrequire_predicted = "maybe"',
         ['"require_predicted"']),
        ('name = "a"\nflag = "f"\npriority = "high"\nmin_volume = 3',
         ['rule "a"', "unknown key(s) min_volume"]),
        ('name = "a"\npriority = "high"', ['rule "a"', "missing key(s) flag"]),
        ('name = "a b"\nflag = "f"\npriority = "high"', ['"name"']),
        ('name = "a"\nflag = ""\npriority = "high"', ['"flag"']),
    ],
)
def test_invalid_rule_is_rejected_naming_the_field(
    tmp_path: Path, rule: str, words: list[str]
) -> None:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, f"[[triage.rules]]\n{rule}\n")
    assert caught.value.keys == ("triage.rules",)
    for word in words:
        assert word in str(caught.value)


def test_duplicate_and_empty_rule_lists_and_bad_priorities_are_rejected(tmp_path: Path) -> None:
    twice = '[[triage.rules]]\nname = "a"\nflag = "f"\npriority = "high"\n' * 2
    with pytest.raises(SettingsError, match="unique rule names, got a twice"):
        load(tmp_path, twice)
    with pytest.raises(SettingsError, match="at least one rule"):
        load(tmp_path, "[triage]\nrules = []\n")
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, '[triage]\nnot_analysed_priority = "soon"\n')
    assert caught.value.keys == ("triage.not_analysed_priority",)
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, '[triage]\nrule = []\n')
    assert 'did you mean "triage.rules"' in str(caught.value)


# -- HL7 destinations -----------------------------------------------------------------------


def test_hl7_destinations_from_toml_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[[hl7_destinations]]\nname = "ris"\nhost = "127.0.0.1"\nport = 2575\n'
        'receiving_application = "RIS"\nreceiving_facility = "RAD"\ntimeout = 2.5\n'
    )
    (destination,) = load_settings(path, environ={}).hl7_destinations
    assert destination == HL7Destination("ris", "127.0.0.1", 2575, "RIS", "RAD", timeout=2.5)
    assert destination.sending_application == "DEEPSC-NODE"
    bad = {
        'receiving_application = "R|S"': '"receiving_application"',
        'timeout = 0': '"timeout"',
        'port = 70000': '"port"',
        'colour = "red"': "unknown key(s) colour",
    }
    base = {"name": '"ris"', "host": '"127.0.0.1"', "port": "2575",
            "receiving_application": '"RIS"'}
    for line, words in bad.items():
        key = line.split(" ")[0]
        table = {**base, key: line.split(" = ")[1]}
        path.write_text("[[hl7_destinations]]\n" + "\n".join(f"{k} = {v}" for k, v in
                                                           table.items()) + "\n")
        with pytest.raises(SettingsError) as caught:
            load_settings(path, environ={})
        assert caught.value.keys == ("hl7_destinations",)
        assert 'HL7 destination "ris"' in str(caught.value) and words in str(caught.value)
    path.write_text(
        '[[hl7_destinations]]\nname = "ris"\nhost = "a"\nport = 1\nreceiving_application = "R"\n'
        * 2
    )
    with pytest.raises(SettingsError, match="unique names"):
        load_settings(path, environ={})
