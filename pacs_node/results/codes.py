"""Coded concepts used in the DICOM-SEG and the TID 1500 report.

Every concept the results package writes is defined here once, with where it
comes from. Standard concepts come from DICOM PS3.16 (``DCM``), SNOMED CT
(``SCT``), NCI Thesaurus (``NCIt``) and UCUM. The two quantities for which
neither DICOM nor SNOMED CT has a concept (the number of lesions and the
percentage of a lung occupied by lesions) use the private coding scheme
``99DEEPSC``, which every SR declares in its Coding Scheme Identification
Sequence (PS3.3 C.12.1.1.3.1; private designators start with ``99``,
PS3.16 section 8.2).

The segment and class codes are *not* here: they come from the model's
``manifest.json`` (:mod:`inference.manifest`).
"""
from __future__ import annotations

import logging

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from inference.manifest import CodeSpec

LOGGER = logging.getLogger(__name__)

__all__ = [
    "PRIVATE_SCHEME",
    "private_coding_scheme",
    "ARTIFICIAL_INTELLIGENCE",
    "MORPHOLOGICAL_OPERATIONS",
    "CT_OF_CHEST",
    "LUNG",
    "RIGHT",
    "LEFT",
    "ZONE_MODIFIERS",
    "SIDE_LATERALITY",
    "VOLUME",
    "AREA",
    "LONG_AXIS",
    "ATTENUATION_COEFFICIENT",
    "MEAN",
    "PROBABILITY",
    "IMPRESSION",
    "COMMENT",
    "PRESENCE",
    "PRESENT",
    "ABSENT",
    "NUMBER_OF_LESIONS",
    "LUNG_INVOLVEMENT",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "LESION",
    "MILLILITER",
    "MILLIMETER",
    "SQUARE_MILLIMETER",
    "HOUNSFIELD_UNIT",
    "PERCENT",
    "NO_UNITS",
    "code_from_spec",
]

#: Designator of the project's private coding scheme.
PRIVATE_SCHEME = "99DEEPSC"


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """A new Coding Scheme Identification Sequence item declaring ``99DEEPSC``.

    Returns
    -------
    highdicom.coding_schemes.CodingSchemeIdentificationItem
        Designator, name, version and responsible organisation of the
        project's private coding scheme (PS3.3 C.12.1.1.3.1).
    """
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="deepsc-node private codes",
        version="1",
        responsible_organization="deepsc-node project",
    )


# --- algorithm and procedure -------------------------------------------------
#: (123110, DCM, "Artificial Intelligence"), CID 7162 algorithm family.
ARTIFICIAL_INTELLIGENCE: Code = codes.cid7162.ArtificialIntelligence
#: (123104, DCM, "Morphological Operations"), CID 7162: the family of the
#: HU-threshold lung extraction (``hu_lung_extraction`` segments).
MORPHOLOGICAL_OPERATIONS: Code = codes.cid7162.MorphologicalOperations
#: (169069000, SCT, "Computed tomography of chest"), TID 1500 row 4
#: "Procedure reported" (DCID 100 is extensible).
CT_OF_CHEST = Code("169069000", "SCT", "Computed tomography of chest")

# --- anatomy -----------------------------------------------------------------
#: (39607008, SCT, "Lung").
LUNG: Code = codes.SCT.Lung
#: (24028007, SCT, "Right"), CID 244 laterality.
RIGHT: Code = codes.SCT.Right
#: (7771000, SCT, "Left"), CID 244 laterality.
LEFT: Code = codes.SCT.Left
#: Patient side (``inference.result.SIDES``) to its CID 244 laterality code.
SIDE_LATERALITY: dict[str, Code] = {"right": RIGHT, "left": LEFT}
#: Craniocaudal third of a lung (``inference.result.ZONES``) to its CID 212
#: "Generic Anatomic Location Modifier": Superior / Middle / Inferior.
ZONE_MODIFIERS: dict[str, Code] = {
    "upper": codes.SCT.Superior,
    "middle": codes.NCIt.Middle,
    "lower": codes.SCT.Inferior,
}

# --- findings ----------------------------------------------------------------
#: (49755003, SCT, "Morphologically Abnormal Structure"), CID 7150.
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = codes.SCT.MorphologicallyAbnormalStructure
#: (52988006, SCT, "Lesion"), CID 7151.
LESION: Code = codes.SCT.Lesion

# --- measurement and evaluation names ----------------------------------------
#: (118565006, SCT, "Volume"), CID 7469.
VOLUME: Code = codes.SCT.Volume
#: (42798000, SCT, "Area"), CID 7472: area of a planar (TID 1410) region.
AREA: Code = codes.SCT.Area
#: (103339001, SCT, "Long axis"), CID 7470: the longest in-plane diameter of
#: a planar region (the RECIST long axis). Viewers show the Code Meaning:
#: OHIF labels it "Long axis: <value> mm".
LONG_AXIS: Code = codes.SCT.LongAxis
#: (112031, DCM, "Attenuation Coefficient"), CID 7469; with derivation Mean.
ATTENUATION_COEFFICIENT: Code = codes.DCM.AttenuationCoefficient
#: (373098007, SCT, "Mean"), CID 7464 derivation.
MEAN: Code = codes.SCT.Mean
#: (122157, DCM, "Probability"), PS3.16 Annex D.
PROBABILITY: Code = codes.DCM.Probability
#: (121073, DCM, "Impression"): concept name of the classification, whose
#: value is the class code from the manifest.
IMPRESSION: Code = codes.DCM.Impression
#: (121106, DCM, "Comment"): concept name of the intended-use statement.
COMMENT: Code = codes.DCM.Comment
#: (121052, DCM, "Presence of property"): lesion presence, valued by CID 240.
PRESENCE: Code = codes.DCM.PresenceOfProperty
#: (52101004, SCT, "Present"), CID 240.
PRESENT: Code = codes.SCT.Present
#: (272519000, SCT, "Absent"), CID 240.
ABSENT: Code = codes.SCT.Absent
#: Private: number of connected lesion components (26-connectivity).
NUMBER_OF_LESIONS = Code("LESCOUNT", PRIVATE_SCHEME, "Number of lesions")
#: Private: ``100 * lesion volume in the lung / lung volume``.
LUNG_INVOLVEMENT = Code(
    "LUNGINV", PRIVATE_SCHEME, "Percentage of lung volume involved by lesions"
)

# --- units (UCUM, CID 7181) ----------------------------------------------------
MILLILITER = Code("ml", "UCUM", "milliliter")
MILLIMETER = Code("mm", "UCUM", "millimeter")
SQUARE_MILLIMETER: Code = codes.UCUM.SquareMillimeter
HOUNSFIELD_UNIT: Code = codes.UCUM.HounsfieldUnit
PERCENT: Code = codes.UCUM.Percent
NO_UNITS: Code = codes.UCUM.NoUnits


def code_from_spec(spec: CodeSpec, field: str) -> Code:
    """Turn a manifest :class:`~inference.manifest.CodeSpec` into a concept.

    Parameters
    ----------
    spec: inference.manifest.CodeSpec
        Value, coding scheme designator and meaning from ``manifest.json``.
    field: str
        Where the code sits in the manifest (``"classes[0].code"``), for the
        error message.

    Returns
    -------
    pydicom.sr.coding.Code
        The same concept (immutable; highdicom makes a fresh Code Sequence
        item from it wherever it is used).

    Raises
    ------
    TypeError
        If ``spec`` is not a ``CodeSpec``.
    ValueError
        If the code cannot be encoded: Code Value (SH) longer than 16
        characters, or Code Meaning (LO) longer than 64 characters (PS3.5
        6.2). No code is shortened silently: a meaning must be a synonym the
        coding scheme defines, e.g. "COVID-19" for SCT 840539006.
    """
    if not isinstance(spec, CodeSpec):
        raise TypeError(f'Argument "spec" ({field}) should be an inference.manifest.CodeSpec.')
    if len(spec.value) > 16:
        raise ValueError(
            f'manifest field "{field}.value" is longer than 16 characters (DICOM SH).'
        )
    if len(spec.meaning) > 64:
        raise ValueError(
            f'manifest field "{field}.meaning" ({spec.meaning!r}) is longer than 64 '
            "characters (DICOM LO Code Meaning); use a shorter synonym of the code."
        )
    return Code(value=spec.value, scheme_designator=spec.scheme, meaning=spec.meaning)
