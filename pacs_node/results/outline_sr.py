"""The outline report: a TID 1500 SR with only the planar lesion groups.

OHIF 3.13 stops loading an SR's measurements at the first measurement group
without image coordinates (``docs/results.md``), so it draws nothing of the
full measurement report. This second report, in its own series, holds only
the planar (TID 1410) groups of :func:`pacs_node.results.sr.build_measurement_report`
and draws in OHIF without any viewer configuration.

By default it is also "rehydratable" by OHIF 3.13 (``ohif_rehydratable``): each
group's Tracking Identifier names the cornerstone3D ``PlanarFreehandROI`` tool
(``"Cornerstone3DTools@^0.1.0:PlanarFreehandROI:Lesion <n>"``) and its Area NUM
is INFERRED FROM a copy of the group's Image Region, which is where the
``@cornerstonejs/adapters`` PlanarFreehandROI adapter reads the outline. OHIF
then offers to track the report's measurements and, on "Yes", lists the lesions
in its measurement panel as editable contours (``docs/viewers.md``).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from inference.manifest import Manifest
from inference.result import InferenceResult
from pacs_node.results import codes
from pacs_node.results.common import DEVICE_NAME, MANUFACTURER
from pacs_node.results.sr import OUTLINE_SR_SERIES_NUMBER, _build
from pacs_node.results.sr_planar import MAX_PLANAR_GROUPS, MIN_PLANAR_VOLUME_ML

LOGGER = logging.getLogger(__name__)

__all__ = ["OHIF_PLANAR_FREEHAND_TRACKING_PREFIX", "build_outline_report"]

#: Tracking Identifier prefix under which OHIF 3.13 (cornerstone3D adapters,
#: ``PlanarFreehandROI``) loads a group into its measurement panel.
OHIF_PLANAR_FREEHAND_TRACKING_PREFIX = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI:"
_IMAGING_MEASUREMENTS = "126010"
_TRACKING_IDENTIFIER = "112039"
_AREA = codes.AREA.value


def build_outline_report(
    source_datasets: Sequence[Dataset],
    seg: Dataset,
    result: InferenceResult,
    manifest: Manifest,
    *,
    uid_root: str,
    series_number: int = OUTLINE_SR_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str = MANUFACTURER,
    device_name: str = DEVICE_NAME,
    device_uid: str | None = None,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    procedure_reported: Code = codes.CT_OF_CHEST,
    max_planar_groups: int = MAX_PLANAR_GROUPS,
    min_planar_volume_ml: float = MIN_PLANAR_VOLUME_ML,
    ohif_rehydratable: bool = True,
) -> hd.sr.Comprehensive3DSR | None:
    """A TID 1500 report with only the planar (TID 1410) lesion groups.

    For viewers that draw an SR only when every measurement group has image
    coordinates (OHIF 3.13, see the module docstring). The groups are the same
    as in :func:`~pacs_node.results.sr.build_measurement_report` for the same
    ``seg`` (same tracking
    identifiers and UIDs, derived from the SEG's SOP Instance UID), in the same
    order, with the same image library, observer and flags.

    Parameters
    ----------
    source_datasets, seg, result, manifest, uid_root, instance_number, \
manufacturer, device_name, device_uid, device_serial_number, institution_name, \
procedure_reported, max_planar_groups, min_planar_volume_ml:
        As :func:`~pacs_node.results.sr.build_measurement_report` (``seg`` is checked and gives the
        tracking UIDs; the outline report does not reference it).
    series_number: int, optional
        Series Number (default 9005: its own series, since viewers show one
        SR per series).
    ohif_rehydratable: bool, optional
        Whether OHIF 3.13 can load the groups into its measurement panel
        (default ``True``): Tracking Identifiers
        ``OHIF_PLANAR_FREEHAND_TRACKING_PREFIX + "Lesion <n>"`` and an INFERRED
        FROM copy of the Image Region under each Area NUM (TID 300 includes TID 320).
        With ``False`` the groups are exactly those of the measurement report
        (Tracking Identifiers ``"Lesion <n>"``): OHIF only draws them.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR | None
        Series Description ``"AI lesion measurements (research)"``; ``None`` when
        no lesion is significant (nothing to outline).

    Raises
    ------
    TypeError, ValueError
        As :func:`~pacs_node.results.sr.build_measurement_report`.
    """
    report = _build(
        source_datasets,
        seg,
        result,
        manifest,
        uid_root=uid_root,
        series_number=series_number,
        instance_number=instance_number,
        manufacturer=manufacturer,
        device_name=device_name,
        device_uid=device_uid,
        device_serial_number=device_serial_number,
        institution_name=institution_name,
        procedure_reported=procedure_reported,
        max_planar_groups=max_planar_groups,
        min_planar_volume_ml=min_planar_volume_ml,
        planar_only=True,
    )
    if report is not None and ohif_rehydratable:
        _make_ohif_rehydratable(report)
    return report


def _make_ohif_rehydratable(report: Dataset) -> None:
    """Lets OHIF load the planar groups as editable PlanarFreehandROI measurements.

    Each group's Tracking Identifier gets :data:`OHIF_PLANAR_FREEHAND_TRACKING_PREFIX`
    in front of ``"Lesion <n>"``, and its Area NUM an INFERRED FROM copy of the
    group's Image Region (TID 300 includes TID 320, INFERRED FROM): the adapter reads the
    outline from the first NUM of the group.
    """
    for container in report.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != _IMAGING_MEASUREMENTS:
            continue
        for group in container.ContentSequence:
            region = next(item for item in group.ContentSequence if item.ValueType == "SCOORD")
            for item in group.ContentSequence:
                code = item.ConceptNameCodeSequence[0].CodeValue
                if code == _TRACKING_IDENTIFIER:
                    item.TextValue = f"{OHIF_PLANAR_FREEHAND_TRACKING_PREFIX}{item.TextValue}"
                elif item.ValueType == "NUM" and code == _AREA:
                    inferred = copy.deepcopy(region)
                    inferred.RelationshipType = "INFERRED FROM"
                    children = list(getattr(item, "ContentSequence", []))
                    item.ContentSequence = [*children, inferred]
