"""Coded concepts of the bundled model's classes and segments.

The exporter writes these into ``manifest.json``; the DICOM encoders read
them back from the manifest (never from here), so a site model may use other
codes. Code meanings fit VR LO (64 characters), code values VR SH (16).

``no_pneumonia`` has no single SNOMED CT concept that means "no pneumonia
pattern on CT", so it uses the project's private coding scheme ``99DEEPSC``
(declared in the SR's Coding Scheme Identification Sequence).
"""
from __future__ import annotations

from typing import Any

__all__ = ["PRIVATE_SCHEME", "DEFAULT_CLASSES", "DEFAULT_SEGMENTS", "CLASS_KEYS"]

#: Private coding scheme designator of the project.
PRIVATE_SCHEME = "99DEEPSC"

#: Model classes in probability order (manifest ``classes``).
DEFAULT_CLASSES: tuple[dict[str, Any], ...] = (
    {
        "key": "covid19",
        "display": "COVID-19 pattern",
        "code": {"value": "840539006", "scheme": "SCT", "meaning": "COVID-19"},
    },
    {
        "key": "cap",
        "display": "Community-acquired pneumonia pattern",
        "code": {"value": "385093006", "scheme": "SCT", "meaning": "Community acquired pneumonia"},
    },
    {
        "key": "no_pneumonia",
        "display": "No pneumonia",
        "code": {"value": "NOPNEUMONIA", "scheme": PRIVATE_SCHEME,
                 "meaning": "No pneumonia pattern detected"},
    },
)

#: Class keys in probability order.
CLASS_KEYS: tuple[str, ...] = tuple(c["key"] for c in DEFAULT_CLASSES)

#: DICOM-SEG segments (manifest ``segments``).
DEFAULT_SEGMENTS: tuple[dict[str, Any], ...] = (
    {
        "label": "Lesion",
        "source": "lesion_probability",
        "category": {"value": "49755003", "scheme": "SCT",
                     "meaning": "Morphologically Abnormal Structure"},
        "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"},
    },
    {
        "label": "Lung",
        "source": "hu_lung_extraction",
        "category": {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
        "type": {"value": "39607008", "scheme": "SCT", "meaning": "Lung"},
    },
)
