"""HL7 v2.5.1 ORU^R01 messages with a job's triage, and checking their ACKs.

Segments (separated by CR, default delimiters ``|^~\\&``, UTF-8, MSH-18
``UNICODE UTF-8``)::

    MSH  sending/receiving application and facility, ORU^R01^ORU_R01,
         Message Control ID (MSH-10), P, 2.5.1
    PID  PID-3 patient ID (type PI), PID-5 patient name (from the DICOM study)
    ORC  RE, placer order number = accession number, filler = job, CM
    OBR  OBR-2 accession, OBR-3 job, OBR-4 DSCTRIAGE^AI chest CT triage,
         OBR-7 study date, OBR-18 accession, OBR-22 now, OBR-24 CT,
         OBR-25 result status F
    NTE  "Research use only, not for diagnosis..."
    TQ1  TQ1-9 priority, HL7 table 0027: urgent -> S^Stat, high -> A^ASAP,
         routine and low -> R^Routine (for worklists that sort on it)
    OBX  113014^DICOM Study^DCM        HD  Study Instance UID
    OBX  FLAG^Triage flag^99DSC        ST  e.g. COVID-19 pattern
    OBX  PRIORITY^Triage priority^99DSC ST urgent | high | routine | low
    OBX  PROB^Class probability^99DSC  NM  one per class, OBX-4 = class key
    OBX  LESVOL^Total lesion volume^99DSC NM  mL
    OBX  LUNGINV^Lung involvement^99DSC   NM  %
    OBX  SUMMARY^Triage summary^99DSC  TX  the one human-readable line

A job that was not analysed carries the flag ``not analysed: <reason>``
and no probability or lesion OBX. Free text is escaped
(:func:`escape`: ``\\E\\ \\F\\ \\S\\ \\T\\ \\R\\``; line breaks become
spaces). The message holds PHI (patient ID and name): never log it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import hl7

from config import HL7Destination
from storage import HL7StudyContext

if TYPE_CHECKING:
    from pacs_node.triage import TriageDecision

LOGGER = logging.getLogger(__name__)

__all__ = [
    "ACCEPT_CODES",
    "AckResult",
    "HL7_PRIORITIES",
    "RESEARCH_NOTE",
    "SEGMENT_SEPARATOR",
    "build_oru_r01",
    "check_ack",
    "escape",
]

#: Segment separator of ER7 messages.
SEGMENT_SEPARATOR = "\r"
#: MSA-1 codes that mean the receiver took the message.
ACCEPT_CODES = frozenset({"AA", "CA"})
#: Local coding system of the node's observation identifiers.
CODING_SYSTEM = "99DSC"
#: TQ1-9 of each triage priority (HL7 table 0027, Priority).
HL7_PRIORITIES: Mapping[str, str] = {
    "urgent": "S^Stat^HL70027",
    "high": "A^ASAP^HL70027",
    "routine": "R^Routine^HL70027",
    "low": "R^Routine^HL70027",
}
#: The NTE of every message.
RESEARCH_NOTE = (
    "Research use only, not for diagnosis. Automated triage by deepsc-node; "
    "the model was trained on synthetic data."
)

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def escape(text: str | None) -> str:
    """Escape HL7 delimiters in free text (HL7 v2.5.1 section 2.7.4).

    ``\\`` becomes ``\\E\\``, ``|`` ``\\F\\``, ``^`` ``\\S\\``, ``&`` ``\\T\\``,
    ``~`` ``\\R\\``; CR, LF and other control characters become spaces (one
    field never spans segments).

    Examples
    --------
    >>> escape("a|b^c&d~e\\\\f")
    'a\\\\F\\\\b\\\\S\\\\c\\\\T\\\\d\\\\R\\\\e\\\\E\\\\f'
    """
    if not text:
        return ""
    value = "".join(" " if ord(c) < 0x20 or c == "\x7f" else c for c in str(text))
    for raw, escaped in _ESCAPES:
        value = value.replace(raw, escaped)
    return value


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def _segment(name: str, fields: Sequence[str]) -> str:
    # fields[0] is field 1; trailing empty fields are dropped.
    values = list(fields)
    while values and values[-1] == "":
        values.pop()
    return "|".join([name, *values])


def _person_name(dicom_name: str | None) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) as an HL7 XPN, each part escaped."""
    if not dicom_name:
        return ""
    alphabetic = dicom_name.split("=")[0]
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escape(part.strip()) for part in parts)
    xpn = [family, given, middle, suffix, prefix]
    while xpn and xpn[-1] == "":
        xpn.pop()
    return "^".join(xpn)


def _obx(set_id: int, value_type: str, code: str, text: str, value: str,
         units: str = "", sub_id: str = "", observed: str = "") -> str:
    fields = [""] * 14
    fields[0] = str(set_id)
    fields[1] = value_type
    fields[2] = f"{code}^{text}^{CODING_SYSTEM}" if "^" not in code else code
    fields[3] = sub_id
    fields[4] = value
    fields[5] = units
    fields[10] = "F"
    fields[13] = observed
    return _segment("OBX", fields)


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def build_oru_r01(
    *,
    destination: HL7Destination,
    context: HL7StudyContext,
    decision: TriageDecision,
    summary: Mapping[str, Any] | None,
    control_id: str,
    now: datetime,
) -> str:
    """The ORU^R01 (v2.5.1) reporting a job's triage to one destination.

    Parameters
    ----------
    destination: config.HL7Destination
        MSH-3..6 come from it.
    context: storage.HL7StudyContext
        Patient ID and name, accession number, Study Instance UID.
    decision: pacs_node.triage.TriageDecision
        Flag, priority and line.
    summary: Mapping[str, Any] | None
        ``ProcessedSeries.summary()``; ``None`` when not analysed.
    control_id: str
        MSH-10 (at most 20 characters).
    now: datetime.datetime
        MSH-7 and OBR-22 (timezone-aware).

    Returns
    -------
    str
        The ER7 message, segments separated by CR (no MLLP framing).
    """
    stamp = _timestamp(now)
    accession = escape(context.accession_number)
    filler = f"{context.job_id}^{escape(destination.sending_application)}"
    msh = _segment(
        "MSH",
        [
            "^~\\&",
            escape(destination.sending_application),
            escape(destination.sending_facility),
            escape(destination.receiving_application),
            escape(destination.receiving_facility),
            stamp,
            "",
            "ORU^R01^ORU_R01",
            control_id,
            "P",
            "2.5.1",
            "", "", "", "", "",
            "UNICODE UTF-8",
        ],
    )
    pid_fields = [""] * 5
    pid_fields[0] = "1"
    pid_fields[2] = f"{escape(context.patient_id)}^^^^PI" if context.patient_id else ""
    pid_fields[4] = _person_name(context.patient_name)
    pid = _segment("PID", pid_fields)
    orc = _segment("ORC", ["RE", accession, filler, "", "CM"])
    obr_fields = [""] * 25
    obr_fields[0] = "1"
    obr_fields[1] = accession
    obr_fields[2] = filler
    obr_fields[3] = f"DSCTRIAGE^AI chest CT triage (research use only)^{CODING_SYSTEM}"
    obr_fields[6] = escape(context.study_date) if context.study_date else stamp
    obr_fields[17] = accession
    obr_fields[21] = stamp
    obr_fields[23] = escape(context.modality or "CT")
    obr_fields[24] = "F"
    obr = _segment("OBR", obr_fields)
    nte = _segment("NTE", ["1", "L", escape(RESEARCH_NOTE)])
    tq1_fields = [""] * 9
    tq1_fields[0] = "1"
    tq1_fields[8] = HL7_PRIORITIES[decision.priority]
    tq1 = _segment("TQ1", tq1_fields)

    observations: list[tuple[str, str, str, str, str, str]] = [
        ("HD", "113014^DICOM Study^DCM", "", context.study_instance_uid, "", ""),
        ("ST", "FLAG", "Triage flag", escape(decision.flag), "", ""),
        ("ST", "PRIORITY", "Triage priority", decision.priority, "", ""),
    ]
    if summary is not None:
        probabilities = dict(summary.get("class_probabilities") or {})
        for key, probability in probabilities.items():
            observations.append(
                ("NM", "PROB", "Class probability", _number(float(probability), 4),
                 "1^^UCUM", escape(str(key)))
            )
        volume = summary.get("total_lesion_volume_ml")
        if volume is not None:
            observations.append(
                ("NM", "LESVOL", "Total lesion volume", _number(float(volume), 1),
                 "mL^milliliter^UCUM", "")
            )
        for item in summary.get("involvement") or ():
            if isinstance(item, Mapping) and item.get("region") == "total":
                observations.append(
                    ("NM", "LUNGINV", "Lung involvement", _number(float(item["percent"]), 1),
                     "%^percent^UCUM", "")
                )
    observations.append(("TX", "SUMMARY", "Triage summary", escape(decision.text), "", ""))
    obx = [
        _obx(index, value_type, code, text, value, units, sub_id, stamp)
        for index, (value_type, code, text, value, units, sub_id) in enumerate(
            observations, start=1
        )
    ]
    return SEGMENT_SEPARATOR.join([msh, pid, orc, obr, nte, tq1, *obx])


@dataclass(frozen=True)
class AckResult:
    """What an ACK said about one message.

    Parameters
    ----------
    accepted: bool
        MSA-1 is ``AA`` or ``CA`` and MSA-2 is the message's control ID.
    code: str | None
        MSA-1, if the ACK could be read.
    error: str | None
        Why it does not count as accepted (``None`` when accepted). May
        quote MSA-3 / ERR text of the receiver (no PHI of ours).
    """

    accepted: bool
    code: str | None
    error: str | None


def check_ack(text: str, control_id: str) -> AckResult:
    """Check an ACK against the message it answers.

    Parameters
    ----------
    text: str
        The ACK (ER7, without MLLP framing).
    control_id: str
        MSH-10 of the message sent.

    Returns
    -------
    AckResult
        Accepted for ``AA``/``CA`` with the right MSA-2; otherwise the reason:
        ``AE``/``AR``/``CE``/``CR`` (with MSA-3), a wrong control ID, or a
        garbled ACK.
    """
    cleaned = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        message = hl7.parse(cleaned)
        msa = message.segment("MSA")
    except (hl7.ParseException, KeyError, IndexError, ValueError) as exc:
        return AckResult(False, None, f"garbled ACK: {type(exc).__name__}")
    code = str(msa(1)).strip().upper() if len(msa) > 1 else ""
    acked = str(msa(2)).strip() if len(msa) > 2 else ""
    detail = str(msa(3)).strip() if len(msa) > 3 else ""
    if not code:
        return AckResult(False, None, "garbled ACK: no MSA-1")
    if acked != control_id:
        return AckResult(False, code, f"ACK for control ID {acked!r}, expected {control_id!r}")
    if code in ACCEPT_CODES:
        return AckResult(True, code, None)
    return AckResult(False, code, f"ACK {code}" + (f": {detail[:200]}" if detail else ""))
