"""The planar (TID 1410) lesion groups of the SR, and content items shared
with :mod:`pacs_node.results.sr`.

One group per significant lesion (:func:`significant_lesions`): the outline
of the lesion on its largest slice (:mod:`pacs_node.results.planar`) as a
closed POLYLINE "Image Region" on the source CT image, its Area and its Long
axis, the lesion's tracking identifier and UID, finding and finding site.
See ``docs/results.md`` for the choices, and for what OHIF draws.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    FindingSite,
    Measurement,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from scipy import ndimage

from inference.result import InferenceResult, Lesion, LesionAnalysis
from pacs_node.results import codes
from pacs_node.results.planar import PlanarOutline, planar_outline
from pacs_node.results.seg import PlannedSegment
from pacs_node.results.uids import new_uid

LOGGER = logging.getLogger(__name__)

__all__ = [
    "MAX_PLANAR_GROUPS",
    "MIN_PLANAR_VOLUME_ML",
    "LESION_TRACKING_PREFIX",
    "tracking_identifier",
    "lung_site",
    "check_lesion_site",
    "lesion_component",
    "significant_lesions",
    "ohif_safe_points",
    "planar_groups",
]

#: Default cap on planar (TID 1410) groups, one per significant lesion, largest
#: lesions first. Example: ``build_measurement_report(..., max_planar_groups=3)``.
MAX_PLANAR_GROUPS = 10
#: Default smallest volume (ml) of a significant lesion, one that gets a planar
#: group: 0.5 ml is a sphere of 10 mm diameter, the smallest measurable lesion
#: of RECIST 1.1. Example: ``build_measurement_report(..., min_planar_volume_ml=1.0)``.
MIN_PLANAR_VOLUME_ML = 0.5
#: Graphic Data lengths (points) that OHIF 3.13 would take for a rectangle: its
#: RectangleROI adapter claims "Image Region" POLYLINEs of 4 or 5 points, which
#: would make the whole report "rehydratable" and the rectangle wrong. An
#: outline that short (a rectangular region) gets a midpoint on its first edge.
_OHIF_RECTANGLE_POINT_COUNTS = (4, 5)
#: Prefix of the Tracking Identifiers of the per-lesion groups.
LESION_TRACKING_PREFIX = "Lesion "


def tracking_identifier(root: str, identifier: str, uid: str | None = None) -> TrackingIdentifier:
    """TID 1500 Tracking Identifier and Tracking UID (a new UID unless given)."""
    return TrackingIdentifier(uid=uid or new_uid(root), identifier=identifier)


def lung_site(side: str | None = None, zone: str | None = None) -> FindingSite:
    """Finding Site Lung, with laterality and craniocaudal third when given."""
    return FindingSite(
        anatomic_location=codes.LUNG,
        laterality=codes.SIDE_LATERALITY[side] if side else None,
        topographical_modifier=codes.ZONE_MODIFIERS[zone] if zone else None,
    )


def check_lesion_site(item: Lesion) -> None:
    """Refuse a lesion whose side or zone has no code."""
    if item.side not in codes.SIDE_LATERALITY or item.zone not in codes.ZONE_MODIFIERS:
        raise ValueError(
            f'Argument "result.analysis": lesion {item.index} has side {item.side!r} '
            f"and zone {item.zone!r}."
        )


def lesion_component(
    lesion_mask: np.ndarray, item: Lesion
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The voxels of one analysed lesion, cropped to its bounding box.

    Returns the cropped mask and the ``(k, i, j)`` index of its first voxel.
    The lesion is the 26-connected component inside ``item.bbox`` that has
    ``item.voxel_count`` voxels and spans the whole box.
    """
    k0, k1, i0, i1, j0, j1 = item.bbox
    crop = lesion_mask[k0:k1, i0:i1, j0:j1]
    labels, count = ndimage.label(crop, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if (
            box is not None
            and int(sizes[number]) == item.voxel_count
            and all(s.start == 0 and s.stop == n for s, n in zip(box, crop.shape))
        ):
            return labels == number, (k0, i0, j0)
    raise ValueError(
        f'Argument "result.analysis": lesion {item.index} (bbox {item.bbox}, '
        f"{item.voxel_count} voxels) is not a connected component of result.lesion_mask."
    )


def significant_lesions(
    analysis: LesionAnalysis, voxel_ml: float, limit: int, min_volume_ml: float
) -> list[Lesion]:
    """The lesions that get a planar group: the ``limit`` largest of at least
    ``min_volume_ml`` (``analysis.lesions`` is ordered by decreasing volume)."""
    chosen = [item for item in analysis.lesions if item.voxel_count * voxel_ml >= min_volume_ml]
    return chosen[:limit]


def ohif_safe_points(points: np.ndarray) -> np.ndarray:
    """The closed outline, with a collinear midpoint when OHIF would take it
    for a rectangle (see ``_OHIF_RECTANGLE_POINT_COUNTS``)."""
    if len(points) not in _OHIF_RECTANGLE_POINT_COUNTS:
        return points
    midpoint = (points[0] + points[1]) / 2.0
    return np.vstack([points[:1], midpoint[None, :], points[1:]])


def _planar_group(
    root: str,
    model_algorithm: AlgorithmIdentification,
    item: Lesion,
    outline: PlanarOutline,
    source: Dataset,
    lesion: PlannedSegment,
    tracking_uid: str,
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=ohif_safe_points(outline.points),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(
            root, f"{LESION_TRACKING_PREFIX}{item.index}", tracking_uid
        ),
        referenced_region=region,
        finding_category=lesion.category,
        finding_type=lesion.type,
        finding_sites=[lung_site(item.side, item.zone)],
        algorithm_id=model_algorithm,
        measurements=[
            Measurement(
                name=codes.AREA,
                value=round(outline.area_mm2, 2),
                unit=codes.SQUARE_MILLIMETER,
            ),
            Measurement(
                name=codes.LONG_AXIS,
                value=round(outline.longest_diameter_mm, 2),
                unit=codes.MILLIMETER,
            ),
        ],
    )


def planar_groups(
    root: str,
    model_algorithm: AlgorithmIdentification,
    result: InferenceResult,
    source_datasets: Sequence[Dataset],
    lesion: PlannedSegment,
    chosen: Sequence[Lesion],
    tracking_uids: dict[int, str],
) -> list[PlanarROIMeasurementsAndQualitativeEvaluations]:
    spacing = (result.geometry.spacing[1], result.geometry.spacing[2])
    groups = []
    for item in chosen:
        check_lesion_site(item)
        mask, (k0, i0, j0) = lesion_component(result.lesion_mask, item)
        outline = planar_outline(mask, spacing)
        outline = PlanarOutline(
            slice_index=outline.slice_index + k0,
            points=outline.points + np.array([j0, i0], dtype=np.float64),
            pixel_count=outline.pixel_count,
            area_mm2=outline.area_mm2,
            longest_diameter_mm=outline.longest_diameter_mm,
            diameter_endpoints=outline.diameter_endpoints + np.array([j0, i0], dtype=np.float64),
        )
        groups.append(
            _planar_group(
                root,
                model_algorithm,
                item,
                outline,
                source_datasets[outline.slice_index],
                lesion,
                tracking_uids[item.index],
            )
        )
    return groups
