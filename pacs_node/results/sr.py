"""TID 1500 Measurement Report (Comprehensive 3D SR) of an inference result.

Content tree (PS3.16 TID 1500; see ``docs/results.md`` for every code)::

    Imaging Measurement Report (TID 1500)
      Language, device observer (TID 1001/1004), procedure reported,
      Image Library (TID 1600): the source CT images
      Imaging Measurements
        "Lesion <n>" x significant     TID 1410  outline on the lesion's largest
                       lesions                   slice (closed POLYLINE on the
                                                 source CT image), Area (mm2),
                                                 Long axis (mm), lung side/third
        "AI classification"            TID 1501  Impression = class code,
                                                 Comment = intended-use statement
        "Probability: <class>" x n     TID 1501  Finding = class code,
                                                 Probability (UCUM "1")
        "Lesion burden"                TID 1501  Presence = Present/Absent,
                                                 total volume, number of lesions,
                                                 lesion volume and involvement
                                                 per lung and for both lungs
        <segment label> x segments     TID 1411  Referenced Segment (SEG),
                                                 volume (+ mean HU for lesions)
        "Lesion <n>" x lesions         TID 1501  volume, mean HU, lung side and
                                                 third as finding site

A lesion's TID 1410 and TID 1501 groups share their Tracking Identifier and
Tracking Unique Identifier: they describe the same finding. The planar groups
come first because OHIF's SR viewport opens on the first measurement group
and can only draw groups with image coordinates (``docs/results.md``).

Every volume that describes a SEG segment is ``voxel count x voxel volume``
of the mask written into that segment.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    FindingSite,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    ReferencedSegment,
    SourceSeriesForSegmentation,
    TextContentItem,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from inference.manifest import Manifest, SegmentSpec
from inference.result import InferenceResult, LesionAnalysis
from pacs_node.results import codes
from pacs_node.results.common import (
    DEVICE_NAME,
    MANUFACTURER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    check_long_string,
    check_result,
    check_series_number,
    check_source_datasets,
    phi_safe_warnings,
    resolve_institution_name,
    result_character_set,
    software_version,
)
from pacs_node.results.library import image_library, insert_image_library
from pacs_node.results.sr_planar import (
    LESION_TRACKING_PREFIX,
    MAX_PLANAR_GROUPS,
    MIN_PLANAR_VOLUME_ML,
    check_lesion_site,
    lung_site,
    planar_groups,
    significant_lesions,
    tracking_identifier,
)
from pacs_node.results.seg import LESION_ROLE, RIGHT_LUNG_ROLE, PlannedSegment, plan_segments
from pacs_node.results.uids import check_uid_root, is_valid_uid, new_uid, stable_uid

LOGGER = logging.getLogger(__name__)

__all__ = [
    "MAX_LESION_GROUPS",
    "MAX_PLANAR_GROUPS",
    "MIN_PLANAR_VOLUME_ML",
    "significant_lesions",
    "OUTLINE_SR_SERIES_NUMBER",
    "OUTLINE_SR_SERIES_DESCRIPTION",
    "CLASSIFICATION_TRACKING_ID",
    "BURDEN_TRACKING_ID",
    "PROBABILITY_TRACKING_PREFIX",
    "LESION_TRACKING_PREFIX",
    "build_measurement_report",
]

#: Default cap on per-lesion measurement groups (largest lesions first); the
#: burden group always gives the true number of lesions.
MAX_LESION_GROUPS = 50
#: Series Number of the outline report
#: (:func:`pacs_node.results.outline_sr.build_outline_report`): base + 5.
OUTLINE_SR_SERIES_NUMBER = 9005
#: Series Description of the outline report.
OUTLINE_SR_SERIES_DESCRIPTION = "AI lesion measurements (research)"
#: Tracking Identifier of the classification group.
CLASSIFICATION_TRACKING_ID = "AI classification"
#: Tracking Identifier of the lesion-burden group.
BURDEN_TRACKING_ID = "Lesion burden"
#: Prefix of the Tracking Identifiers of the per-class probability groups.
PROBABILITY_TRACKING_PREFIX = "Probability: "


@dataclass(frozen=True)
class _Context:
    """What every group of one report shares."""

    root: str
    seg: Dataset
    series_instance_uid: str
    voxel_ml: float
    model_algorithm: AlgorithmIdentification


def _algorithm(spec: SegmentSpec | None, manifest: Manifest) -> AlgorithmIdentification:
    """TID 4019 for the model, or for the HU lung extraction."""
    if spec is not None and spec.source == "hu_lung_extraction":
        return AlgorithmIdentification(
            name="deepsc-node HU lung extraction",
            version=software_version(),
            family=codes.MORPHOLOGICAL_OPERATIONS,
        )
    return AlgorithmIdentification(
        name=manifest.model_name,
        version=manifest.model_version,
        parameters=[f"threshold={manifest.lesion_threshold:g}"],
        family=codes.ARTIFICIAL_INTELLIGENCE,
    )


def _mean_hu(value: float) -> Measurement:
    return Measurement(
        name=codes.ATTENUATION_COEFFICIENT,
        value=round(float(value), 2),
        unit=codes.HOUNSFIELD_UNIT,
        derivation=codes.MEAN,
    )


def _volume(value_ml: float, site: FindingSite | None = None) -> Measurement:
    return Measurement(
        name=codes.VOLUME,
        value=round(float(value_ml), 4),
        unit=codes.MILLILITER,
        finding_sites=[site] if site is not None else None,
    )


def _classification_groups(
    ctx: _Context, result: InferenceResult, manifest: Manifest
) -> list[MeasurementsAndQualitativeEvaluations]:
    class_codes = [
        codes.code_from_spec(spec.code, f"classes[{index}].code")
        for index, spec in enumerate(manifest.classes)
    ]
    predicted = class_codes[int(np.argmax(result.class_probabilities))]
    classification = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(ctx.root, CLASSIFICATION_TRACKING_ID),
        algorithm_id=ctx.model_algorithm,
        qualitative_evaluations=[
            QualitativeEvaluation(codes.IMPRESSION, predicted)
        ],
    )
    # TID 1501 allows TEXT qualitative evaluations after the coded ones.
    classification[0].ContentSequence.append(
        TextContentItem(
            name=codes.COMMENT,
            value=manifest.intended_use,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    groups = [classification]
    for spec, code, probability in zip(
        manifest.classes, class_codes, result.class_probabilities
    ):
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking_identifier(
                    ctx.root, f"{PROBABILITY_TRACKING_PREFIX}{spec.display}"
                ),
                finding_type=code,
                algorithm_id=ctx.model_algorithm,
                measurements=[
                    Measurement(
                        name=codes.PROBABILITY,
                        value=round(float(probability), 6),
                        unit=codes.NO_UNITS,
                    )
                ],
            )
        )
    return groups


def _burden_group(
    ctx: _Context, analysis: LesionAnalysis, lesion: PlannedSegment, lesion_voxels: int
) -> MeasurementsAndQualitativeEvaluations:
    try:
        regions = {name: analysis.region(name) for name in ("total", "right", "left")}
    except KeyError as exc:
        raise ValueError(
            f'Argument "result.analysis" has no involvement entry for region {exc}.'
        ) from exc
    measurements = [
        _volume(lesion_voxels * ctx.voxel_ml),
        Measurement(
            name=codes.NUMBER_OF_LESIONS, value=len(analysis.lesions), unit=codes.NO_UNITS
        ),
        Measurement(
            name=codes.LUNG_INVOLVEMENT,
            value=round(regions["total"].percent, 4),
            unit=codes.PERCENT,
            finding_sites=[lung_site()],
        ),
    ]
    for side in ("right", "left"):
        measurements.append(_volume(regions[side].lesion_volume_ml, lung_site(side)))
        measurements.append(
            Measurement(
                name=codes.LUNG_INVOLVEMENT,
                value=round(regions[side].percent, 4),
                unit=codes.PERCENT,
                finding_sites=[lung_site(side)],
            )
        )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(ctx.root, BURDEN_TRACKING_ID),
        finding_category=lesion.category,
        finding_type=lesion.type,
        finding_sites=[lung_site()],
        algorithm_id=ctx.model_algorithm,
        measurements=measurements,
        qualitative_evaluations=[
            QualitativeEvaluation(
                codes.PRESENCE, codes.PRESENT if lesion_voxels else codes.ABSENT
            )
        ],
    )


def _segment_group(
    ctx: _Context,
    planned: PlannedSegment,
    voxels: int,
    mean_hu: float | None,
    manifest: Manifest,
) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    item = ctx.seg.SegmentSequence[planned.number - 1]
    side = None
    if planned.role != LESION_ROLE:
        side = "right" if planned.role == RIGHT_LUNG_ROLE else "left"
    measurements = [_volume(voxels * ctx.voxel_ml)]
    if mean_hu is not None:
        measurements.append(_mean_hu(mean_hu))
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier(
            ctx.root, str(item.get("TrackingID", planned.label)), item.get("TrackingUID")
        ),
        referenced_segment=ReferencedSegment(
            sop_class_uid=ctx.seg.SOPClassUID,
            sop_instance_uid=ctx.seg.SOPInstanceUID,
            segment_number=planned.number,
            source_series=SourceSeriesForSegmentation(ctx.series_instance_uid),
        ),
        finding_category=planned.category,
        finding_type=planned.type,
        finding_sites=[lung_site(side)],
        algorithm_id=_algorithm(planned.spec, manifest),
        measurements=measurements,
    )


def _lesion_groups(
    ctx: _Context,
    analysis: LesionAnalysis,
    lesion: PlannedSegment,
    limit: int,
    tracking_uids: dict[int, str],
) -> list[MeasurementsAndQualitativeEvaluations]:
    groups = []
    for item in analysis.lesions[:limit]:
        check_lesion_site(item)
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking_identifier(
                    ctx.root, f"{LESION_TRACKING_PREFIX}{item.index}", tracking_uids[item.index]
                ),
                finding_category=lesion.category,
                finding_type=lesion.type,
                finding_sites=[lung_site(item.side, item.zone)],
                algorithm_id=ctx.model_algorithm,
                measurements=[
                    _volume(item.voxel_count * ctx.voxel_ml),
                    _mean_hu(item.mean_hu),
                ],
            )
        )
    if len(analysis.lesions) > limit:
        LOGGER.info(
            "report lists the %d largest of %d lesions", limit, len(analysis.lesions)
        )
    return groups


def _check_segmentation(
    seg: Dataset, source_datasets: Sequence[Dataset], plan: Sequence[PlannedSegment]
) -> None:
    if not isinstance(seg, Dataset):
        raise TypeError('Argument "seg" should be a pydicom Dataset (a DICOM-SEG).')
    if seg.get("SOPClassUID") != SegmentationStorage or not is_valid_uid(
        seg.get("SOPInstanceUID")
    ):
        raise ValueError('Argument "seg" should be a Segmentation Storage instance.')
    first = source_datasets[0]
    referenced = {
        str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])
    }
    if (
        seg.get("StudyInstanceUID") != first.StudyInstanceUID
        or seg.get("FrameOfReferenceUID") != first.FrameOfReferenceUID
        or referenced != {str(first.SeriesInstanceUID)}
    ):
        raise ValueError(
            'Argument "seg" does not belong to the source series (study, frame of '
            "reference or referenced series differ)."
        )
    labels = [str(item.SegmentLabel) for item in seg.get("SegmentSequence", [])]
    if labels != [p.label for p in plan]:
        raise ValueError(
            f'Argument "seg" has segments {labels}, not the manifest\'s '
            f"{[p.label for p in plan]}."
        )


def _check_analysis(result: InferenceResult, lesion_voxels: int) -> None:
    counted = sum(lesion.voxel_count for lesion in result.analysis.lesions)
    if counted != lesion_voxels:
        raise ValueError(
            f'Argument "result.analysis" counts {counted} lesion voxels but '
            f"result.lesion_mask holds {lesion_voxels}."
        )


def _nonplanar_groups(
    ctx: _Context,
    result: InferenceResult,
    manifest: Manifest,
    plan: Sequence[PlannedSegment],
    lesion_voxels: int,
    max_lesion_groups: int,
    tracking_uids: dict[int, str],
) -> list[
    MeasurementsAndQualitativeEvaluations | VolumetricROIMeasurementsAndQualitativeEvaluations
]:
    """Classification, burden, one TID 1411 group per segment, per-lesion groups."""
    lesion_segment = next(p for p in plan if p.role == LESION_ROLE)
    groups: list[
        MeasurementsAndQualitativeEvaluations | VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = []
    groups.extend(_classification_groups(ctx, result, manifest))
    groups.append(_burden_group(ctx, result.analysis, lesion_segment, lesion_voxels))
    for planned in plan:
        if planned.role == LESION_ROLE:
            voxels = lesion_voxels
            mean_hu = (
                sum(x.mean_hu * x.voxel_count for x in result.analysis.lesions) / voxels
                if voxels
                else None
            )
        else:
            label = 1 if planned.role == RIGHT_LUNG_ROLE else 2
            voxels, mean_hu = int(np.count_nonzero(result.lung_mask == label)), None
        groups.append(_segment_group(ctx, planned, voxels, mean_hu, manifest))
    groups.extend(
        _lesion_groups(ctx, result.analysis, lesion_segment, max_lesion_groups, tracking_uids)
    )
    return groups


def _build(
    source_datasets: Sequence[Dataset],
    seg: Dataset,
    result: InferenceResult,
    manifest: Manifest,
    *,
    uid_root: str,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str = MANUFACTURER,
    device_name: str = DEVICE_NAME,
    device_uid: str | None = None,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    procedure_reported: Code = codes.CT_OF_CHEST,
    max_lesion_groups: int = MAX_LESION_GROUPS,
    max_planar_groups: int = MAX_PLANAR_GROUPS,
    min_planar_volume_ml: float = MIN_PLANAR_VOLUME_ML,
    planar_only: bool = False,
) -> hd.sr.Comprehensive3DSR | None:
    """Build the measurement report, or with ``planar_only`` the outline report.

    See :func:`build_measurement_report` and
    :func:`pacs_node.results.outline_sr.build_outline_report`.
    """
    started = time.perf_counter()
    root = check_uid_root(uid_root)
    check_series_number(series_number, "series_number")
    check_series_number(instance_number, "instance_number")
    check_long_string(manufacturer, "manufacturer")
    check_long_string(device_name, "device_name")
    if device_uid is not None and not is_valid_uid(device_uid):
        raise ValueError('Argument "device_uid" should be a valid UID.')
    if not isinstance(procedure_reported, (Code, hd.sr.CodedConcept)):
        raise TypeError('Argument "procedure_reported" should be a pydicom Code.')
    if not isinstance(max_lesion_groups, int) or max_lesion_groups < 0:
        raise ValueError('Argument "max_lesion_groups" should be a non-negative integer.')
    if not isinstance(max_planar_groups, int) or max_planar_groups < 0:
        raise ValueError('Argument "max_planar_groups" should be a non-negative integer.')
    if not isinstance(min_planar_volume_ml, (int, float)) or not min_planar_volume_ml >= 0:
        raise ValueError('Argument "min_planar_volume_ml" should be a non-negative number.')
    serial = check_long_string(
        device_serial_number if device_serial_number is not None else root[:-1],
        "device_serial_number",
    )
    check_result(result, manifest)
    check_source_datasets(source_datasets, result.geometry)
    plan = plan_segments(manifest)
    _check_segmentation(seg, source_datasets, plan)
    lesion_voxels = int(np.count_nonzero(result.lesion_mask))
    _check_analysis(result, lesion_voxels)

    ctx = _Context(
        root=root,
        seg=seg,
        series_instance_uid=str(source_datasets[0].SeriesInstanceUID),
        voxel_ml=result.geometry.voxel_volume_ml,
        model_algorithm=_algorithm(None, manifest),
    )
    lesion_segment = next(p for p in plan if p.role == LESION_ROLE)
    # Derived from the SEG: the outline report of the same result gives each
    # lesion the same tracking UID as the measurement report.
    tracking_uids = {
        item.index: str(stable_uid(root, f"{seg.SOPInstanceUID}/lesion/{item.index}"))
        for item in result.analysis.lesions
    }
    chosen = significant_lesions(
        result.analysis, ctx.voxel_ml, max_planar_groups, float(min_planar_volume_ml)
    )
    groups: list[
        MeasurementsAndQualitativeEvaluations
        | PlanarROIMeasurementsAndQualitativeEvaluations
        | VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = []
    groups.extend(
        planar_groups(
            ctx.root, ctx.model_algorithm, result, source_datasets, lesion_segment, chosen,
            tracking_uids,
        )
    )
    if planar_only and not groups:
        LOGGER.info("no outline report for series %s: no significant lesion",
                    ctx.series_instance_uid)
        return None
    if not planar_only:
        groups.extend(_nonplanar_groups(ctx, result, manifest, plan, lesion_voxels,
                                        max_lesion_groups, tracking_uids))
    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid or stable_uid(root, "device", device_name),
            name=device_name,
            manufacturer_name=manufacturer,
            model_name=device_name,
            serial_number=serial,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure_reported,
        imaging_measurements=groups,
    )
    insert_image_library(report[0], image_library(source_datasets))
    with phi_safe_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*source_datasets] if planar_only else [*source_datasets, seg],
            content=report[0],
            series_instance_uid=new_uid(root),
            series_number=series_number,
            sop_instance_uid=new_uid(root),
            instance_number=instance_number,
            manufacturer=manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=(
                OUTLINE_SR_SERIES_DESCRIPTION if planar_only else SR_SERIES_DESCRIPTION
            ),
            coding_schemes=[codes.private_coding_scheme()],
            manufacturer_model_name=device_name,
            software_versions=software_version(),
            device_serial_number=serial,
            institution_name=resolve_institution_name(source_datasets, institution_name),
            specific_character_set=result_character_set(source_datasets),
        )
    LOGGER.info(
        "SR %s for series %s: %d measurement groups (%d planar), lesions %s, %.2f s",
        sr.SOPInstanceUID,
        ctx.series_instance_uid,
        len(groups),
        len(chosen),
        "present" if lesion_voxels else "absent",
        time.perf_counter() - started,
    )
    return sr


def build_measurement_report(
    source_datasets: Sequence[Dataset],
    seg: Dataset,
    result: InferenceResult,
    manifest: Manifest,
    *,
    uid_root: str,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str = MANUFACTURER,
    device_name: str = DEVICE_NAME,
    device_uid: str | None = None,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    procedure_reported: Code = codes.CT_OF_CHEST,
    max_lesion_groups: int = MAX_LESION_GROUPS,
    max_planar_groups: int = MAX_PLANAR_GROUPS,
    min_planar_volume_ml: float = MIN_PLANAR_VOLUME_ML,
) -> hd.sr.Comprehensive3DSR:
    """Encode ``result`` as a TID 1500 measurement report.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        The CT series in ``result.geometry`` slice order (as for
        :func:`~pacs_node.results.seg.build_segmentation`).
    seg: pydicom.Dataset
        The SEG built from the same result; its segments are referenced.
    result: inference.result.InferenceResult
        Masks, probabilities and lesion analysis.
    manifest: inference.manifest.Manifest
        Class and segment codes, model identity, intended use.
    uid_root: str
        Root of every UID generated here (series, instance, tracking UIDs
        and, unless ``device_uid`` is given, the device observer UID).
    series_number: int, optional
        Series Number of the SR series (default 9002).
    instance_number: int, optional
        Instance Number (default 1).
    manufacturer: str, optional
        Manufacturer, also the device observer's manufacturer.
    device_name: str, optional
        Device Observer Name and Manufacturer's Model Name.
    device_uid: str | None, optional
        Device Observer UID; ``None`` derives a stable UID from ``uid_root``
        and ``device_name``.
    device_serial_number: str | None, optional
        Device serial number; ``None`` uses ``uid_root``.
    institution_name: str | None, optional
        Institution Name; ``None`` copies the source's, if any.
    procedure_reported: pydicom.sr.coding.Code, optional
        TID 1500 "Procedure reported" (default SCT 169069000, CT of chest).
    max_lesion_groups: int, optional
        At most this many per-lesion groups, largest lesions first
        (default 50; 0 lists none).
    max_planar_groups: int, optional
        At most this many planar (TID 1410) groups, one per significant
        lesion, largest first (default 10; 0 writes none).
    min_planar_volume_ml: float, optional
        A lesion is significant from this volume (default 0.5 ml).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Series Description ``"AI report (research)"``; complete, preliminary,
        unverified; the source images and the SEG as evidence.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the datasets do not match ``result.geometry``, the result does not
        match the manifest or disagrees with its own analysis, or ``seg`` is
        not the SEG of these source images and this manifest.
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
        max_lesion_groups=max_lesion_groups,
        max_planar_groups=max_planar_groups,
        min_planar_volume_ml=min_planar_volume_ml,
    )
    if report is None:  # pragma: no cover - only the outline report can be empty
        raise RuntimeError("the measurement report was not built")
    return report

