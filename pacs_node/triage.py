"""Triage: a result becomes a flag, a priority and one line, recorded with the job.

:func:`triage_result` applies the ordered rules of ``Settings.triage``
(:class:`config.TriageRules`, first match wins, ``docs/triage.md``) to the
summary a worker records (``ProcessedSeries.summary()``: class
probabilities, predicted class, total lesion volume, involvement);
:func:`triage_not_analysed` gives a rejected or failed job the flag
``"not analysed: <reason>"``.

:class:`TriageRecorder` stores the decision with :func:`storage.record_triage`
and puts one HL7 ORU^R01 per ``[[hl7_destinations]]`` entry in the outbox
(:func:`storage.enqueue_hl7_message`), both in the caller's session: the
worker and the watcher call it in the transaction that changes the job's
state, so the state, the flag and the messages are committed together.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from config import HL7Destination, TriageRule, TriageRules
from pacs_node.hl7.message import build_oru_r01
from storage import (
    TriageRecord,
    enqueue_hl7_message,
    hl7_study_context,
    record_triage,
)

LOGGER = logging.getLogger(__name__)

__all__ = [
    "NOT_ANALYSED_RULE",
    "TriageDecision",
    "TriageRecorder",
    "UNMATCHED_FLAG",
    "UNMATCHED_RULE",
    "rule_matches",
    "triage_not_analysed",
    "triage_result",
]

#: Rule name recorded for rejected and failed jobs.
NOT_ANALYSED_RULE = "not-analysed"
#: Rule name and flag of a result that no rule matches.
UNMATCHED_RULE = "unmatched"
UNMATCHED_FLAG = "no triage rule matched"
#: Longest flag stored (``triage.flag`` is String(128)).
MAX_FLAG_LENGTH = 128


@dataclass(frozen=True)
class TriageDecision:
    """The triage of one job, before it is stored.

    Parameters
    ----------
    flag: str
        e.g. ``"COVID-19 pattern"`` or ``"not analysed: <reason>"``.
    priority: str
        ``"urgent"``, ``"high"``, ``"routine"`` or ``"low"``.
    rule: str
        Name of the rule that matched (``"not-analysed"``, ``"unmatched"``).
    text: str
        One human-readable line.
    """

    flag: str
    priority: str
    rule: str
    text: str


@dataclass(frozen=True)
class _Measures:
    probabilities: dict[str, float]
    predicted: str | None
    lesion_volume_ml: float | None
    involvement_percent: float | None


def _measures(summary: Mapping[str, Any]) -> _Measures:
    raw = summary.get("class_probabilities") or {}
    probabilities = {str(key): float(value) for key, value in dict(raw).items()}
    predicted = summary.get("predicted_class")
    if predicted is None and probabilities:
        predicted = max(probabilities, key=lambda key: probabilities[key])
    volume = summary.get("total_lesion_volume_ml")
    involvement = None
    for item in summary.get("involvement") or ():
        if isinstance(item, Mapping) and item.get("region") == "total":
            involvement = float(item["percent"])
    return _Measures(
        probabilities,
        None if predicted is None else str(predicted),
        None if volume is None else float(volume),
        involvement,
    )


def rule_matches(rule: TriageRule, summary: Mapping[str, Any]) -> bool:
    """Whether every condition of `rule` holds for a result summary.

    Parameters
    ----------
    rule: config.TriageRule
        The rule.
    summary: Mapping[str, Any]
        ``ProcessedSeries.summary()`` (or ``InferenceResult.to_dict()``).

    Returns
    -------
    bool
        ``False`` also when the summary lacks a value a condition needs
        (e.g. a class the model does not have).
    """
    measures = _measures(summary)
    probability: float | None
    if rule.class_key is not None:
        if rule.class_key not in measures.probabilities:
            return False
        if rule.require_predicted and measures.predicted != rule.class_key:
            return False
        probability = measures.probabilities[rule.class_key]
    else:
        probability = measures.probabilities.get(measures.predicted or "")
    if rule.min_probability is not None:
        if probability is None or probability < rule.min_probability:
            return False
    if rule.min_lesion_volume_ml is not None:
        volume = measures.lesion_volume_ml
        if volume is None or volume < rule.min_lesion_volume_ml:
            return False
    if rule.min_involvement_percent is not None:
        percent = measures.involvement_percent
        if percent is None or percent < rule.min_involvement_percent:
            return False
    return True


def _line(flag: str, priority: str, summary: Mapping[str, Any]) -> str:
    measures = _measures(summary)
    parts = [f"{flag}: {priority}"]
    if measures.probabilities:
        ordered = sorted(measures.probabilities.items(), key=lambda item: -item[1])
        parts.append(
            "probabilities " + ", ".join(f"{key} {100 * p:.0f} %" for key, p in ordered)
        )
    if measures.lesion_volume_ml is not None:
        burden = f"lesions {measures.lesion_volume_ml:.1f} mL"
        if measures.involvement_percent is not None:
            burden += f" ({measures.involvement_percent:.1f} % of lung volume)"
        parts.append(burden)
    return "; ".join(parts)


def triage_result(rules: TriageRules, summary: Mapping[str, Any]) -> TriageDecision:
    """Apply the rules in order to a result; the first match wins.

    Parameters
    ----------
    rules: config.TriageRules
        ``Settings.triage``.
    summary: Mapping[str, Any]
        ``ProcessedSeries.summary()``.

    Returns
    -------
    TriageDecision
        The matching rule's flag and priority, or ``"no triage rule
        matched"`` with ``rules.unmatched_priority``. The line reads e.g.
        ``"COVID-19 pattern: urgent; probabilities covid19 91 %, cap 6 %,
        no_pneumonia 3 %; lesions 85.2 mL (3.4 % of lung volume)"``.
    """
    for rule in rules.rules:
        if rule_matches(rule, summary):
            return TriageDecision(
                rule.flag, rule.priority, rule.name, _line(rule.flag, rule.priority, summary)
            )
    priority = rules.unmatched_priority
    return TriageDecision(
        UNMATCHED_FLAG, priority, UNMATCHED_RULE, _line(UNMATCHED_FLAG, priority, summary)
    )


def triage_not_analysed(rules: TriageRules, reason: str) -> TriageDecision:
    """The triage of a job the model did not analyse (rejected or failed).

    Parameters
    ----------
    rules: config.TriageRules
        ``Settings.triage`` (``not_analysed_priority``).
    reason: str
        The job's reason (no PHI), e.g. ``"3 slices < minimum 20"``.

    Returns
    -------
    TriageDecision
        Flag ``"not analysed: <reason>"`` (cut to 128 characters), rule
        ``"not-analysed"``.
    """
    reason = " ".join(str(reason).split()) or "unknown reason"
    flag = f"not analysed: {reason}"
    priority = rules.not_analysed_priority
    return TriageDecision(
        flag[:MAX_FLAG_LENGTH], priority, NOT_ANALYSED_RULE, f"{flag}: {priority}"
    )


def new_control_id() -> str:
    """A new MSH-10 Message Control ID: ``"DSC"`` + 17 hex digits (20 characters)."""
    return "DSC" + uuid.uuid4().hex[:17].upper()


class TriageRecorder:
    """Records the triage of a job and queues its HL7 messages, in the caller's session.

    Parameters
    ----------
    rules: config.TriageRules
        ``Settings.triage``.
    hl7_destinations: Sequence[config.HL7Destination]
        ``Settings.hl7_destinations``: each gets one ORU^R01 per job.
    """

    def __init__(
        self, rules: TriageRules, hl7_destinations: Sequence[HL7Destination] = ()
    ) -> None:
        if not isinstance(rules, TriageRules):
            raise TypeError(f'Argument "rules" should be TriageRules, got {type(rules).__name__}')
        self.rules = rules
        self.hl7_destinations = tuple(hl7_destinations)

    def record_result(
        self, session: Session, job_id: int, summary: Mapping[str, Any], now: datetime
    ) -> TriageRecord:
        """Triage a written job and queue its messages (call in the ``written`` transaction).

        Returns
        -------
        storage.TriageRecord
            The stored triage.
        """
        decision = triage_result(self.rules, summary)
        return self._record(session, job_id, decision, summary, now, notify=True)

    def record_not_analysed(
        self, session: Session, job_id: int, reason: str, now: datetime, *, notify: bool = True
    ) -> TriageRecord:
        """Triage a rejected or failed job (call in the transaction that records it).

        Parameters
        ----------
        notify: bool
            Queue HL7 messages too. The watcher passes ``False`` for series
            that the selection rules reject (scouts, dose reports...): one
            study has several, and the RIS gets the message of the series
            that was analysed.
        """
        decision = triage_not_analysed(self.rules, reason)
        return self._record(session, job_id, decision, None, now, notify=notify)

    def _record(
        self,
        session: Session,
        job_id: int,
        decision: TriageDecision,
        summary: Mapping[str, Any] | None,
        now: datetime,
        *,
        notify: bool,
    ) -> TriageRecord:
        record = record_triage(
            session,
            job_id,
            flag=decision.flag,
            priority=decision.priority,
            rule=decision.rule,
            text=decision.text,
            now=now,
        )
        if notify and self.hl7_destinations:
            context = hl7_study_context(session, job_id)
            for destination in self.hl7_destinations:
                control_id = new_control_id()
                message = build_oru_r01(
                    destination=destination,
                    context=context,
                    decision=decision,
                    summary=summary,
                    control_id=control_id,
                    now=now,
                )
                enqueue_hl7_message(
                    session,
                    job_id,
                    destination=destination.name,
                    control_id=control_id,
                    message=message,
                    now=now,
                )
                LOGGER.info(
                    "job %d (study %s): HL7 message %s queued for %s",
                    job_id,
                    context.study_instance_uid,
                    control_id,
                    destination.name,
                )
        return record
