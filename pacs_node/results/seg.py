"""DICOM-SEG (BINARY) of the lesion and lung masks of an inference result.

One segment per manifest segment, except that a lung segment is written as
two segments, "Right lung" and "Left lung" (the lung mask labels the sides,
and the TID 1500 report gives the involvement of each lung with a reference
to its own segment). Frames lie on the source CT's grid: same Frame of
Reference, one frame per slice and segment that holds at least one voxel,
each frame referencing its source image (Derivation Image Sequence).

A segment without any voxel (no lesion found) stays in the Segment Sequence
but has no frame: the SEG says "lesions were segmented and none was found",
and the report references the (empty) segment with a volume of 0 ml. See
``docs/results.md``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from inference.manifest import Manifest, SegmentSpec
from inference.result import InferenceResult
from pacs_node.results import codes
from pacs_node.results.common import (
    DEVICE_NAME,
    MANUFACTURER,
    SEG_SERIES_DESCRIPTION,
    SEG_SERIES_NUMBER,
    check_long_string,
    check_result,
    check_series_number,
    check_source_datasets,
    phi_safe_warnings,
    resolve_institution_name,
    result_character_set,
    software_version,
)
from pacs_node.results.seg_overlap import BinarySegmentation
from pacs_node.results.uids import adopt_dimension_organization_uid, check_uid_root, new_uid

LOGGER = logging.getLogger(__name__)

__all__ = [
    "LESION_ROLE",
    "RIGHT_LUNG_ROLE",
    "LEFT_LUNG_ROLE",
    "SEG_CONTENT_LABEL",
    "SEG_CONTENT_DESCRIPTION",
    "PlannedSegment",
    "plan_segments",
    "segmentation_arguments",
    "stack_masks",
    "build_segmentation",
]

#: Role of a segment: which part of the result fills it.
LESION_ROLE = "lesion"
RIGHT_LUNG_ROLE = "right_lung"
LEFT_LUNG_ROLE = "left_lung"

#: Content Label (CS) of the SEG.
SEG_CONTENT_LABEL = "AI_LESIONS"
#: Content Description (LO) of the SEG.
SEG_CONTENT_DESCRIPTION = "AI lesion segmentation. Research use only, not for diagnosis."

_LUNG_SOURCES = ("lung_probability", "hu_lung_extraction")
_COLORS = {
    LESION_ROLE: (230, 50, 50),
    RIGHT_LUNG_ROLE: (70, 150, 240),
    LEFT_LUNG_ROLE: (80, 200, 150),
}


@dataclass(frozen=True)
class PlannedSegment:
    """One segment of the SEG and where its voxels come from.

    Attributes
    ----------
    number: int
        Segment Number (1-based, consecutive).
    label: str
        Segment Label, e.g. ``"Lesion"``, ``"Right lung"``.
    role: str
        :data:`LESION_ROLE`, :data:`RIGHT_LUNG_ROLE` or :data:`LEFT_LUNG_ROLE`.
    spec: inference.manifest.SegmentSpec
        The manifest entry (source, codes).
    category: pydicom.sr.coding.Code
        Segmented Property Category, from ``spec``.
    type: pydicom.sr.coding.Code
        Segmented Property Type, from ``spec``.
    laterality: pydicom.sr.coding.Code | None
        Segmented Property Type Modifier for a lung side, else ``None``.
    """

    number: int
    label: str
    role: str
    spec: SegmentSpec
    category: Code
    type: Code
    laterality: Code | None = None


def plan_segments(manifest: Manifest) -> tuple[PlannedSegment, ...]:
    """The segments a SEG for ``manifest``'s model holds, in segment order.

    Parameters
    ----------
    manifest: inference.manifest.Manifest
        Its ``segments`` list gives the order, labels and codes.

    Returns
    -------
    tuple[PlannedSegment, ...]
        A lesion segment per ``lesion_probability`` entry, and a right and a
        left lung segment per lung entry (``lung_probability`` or
        ``hu_lung_extraction``), numbered from 1.

    Raises
    ------
    TypeError
        If ``manifest`` is not a ``Manifest``.
    ValueError
        If the manifest names the lesion or the lung mask twice, has no
        lesion segment, or has a code that cannot be encoded.
    """
    if not isinstance(manifest, Manifest):
        raise TypeError('Argument "manifest" should be an inference.manifest.Manifest.')
    planned: list[PlannedSegment] = []
    seen: set[str] = set()
    for index, spec in enumerate(manifest.segments):
        kind = "lung" if spec.source in _LUNG_SOURCES else LESION_ROLE
        if kind in seen:
            raise ValueError(
                f'Argument "manifest" lists more than one {kind} segment; the result '
                "holds one mask of each."
            )
        seen.add(kind)
        category = codes.code_from_spec(spec.category, f"segments[{index}].category")
        type_ = codes.code_from_spec(spec.type, f"segments[{index}].type")
        if kind == LESION_ROLE:
            planned.append(
                PlannedSegment(len(planned) + 1, spec.label, LESION_ROLE, spec, category, type_)
            )
            continue
        name = spec.label[:1].lower() + spec.label[1:]
        for role, side, laterality in (
            (RIGHT_LUNG_ROLE, "Right", codes.RIGHT),
            (LEFT_LUNG_ROLE, "Left", codes.LEFT),
        ):
            planned.append(
                PlannedSegment(
                    len(planned) + 1, f"{side} {name}", role, spec, category, type_, laterality
                )
            )
    if LESION_ROLE not in seen:
        raise ValueError('Argument "manifest" has no segment with source "lesion_probability".')
    return tuple(planned)


def _algorithm(
    spec: SegmentSpec, manifest: Manifest, result: InferenceResult
) -> hd.AlgorithmIdentificationSequence:
    if spec.source == "hu_lung_extraction":
        return hd.AlgorithmIdentificationSequence(
            name="deepsc-node HU lung extraction",
            family=codes.MORPHOLOGICAL_OPERATIONS,
            version=software_version(),
            source=DEVICE_NAME,
        )
    return hd.AlgorithmIdentificationSequence(
        name=manifest.model_name,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=manifest.model_version,
        source=DEVICE_NAME,
        parameters={
            "threshold": f"{manifest.lesion_threshold:g}",
            "execution_provider": result.provider,
        },
    )


def _segment_description(
    planned: PlannedSegment, manifest: Manifest, result: InferenceResult, uid_root: str
) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=planned.number,
        segment_label=planned.label,
        segmented_property_category=planned.category,
        segmented_property_type=planned.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(planned.spec, manifest, result),
        tracking_id=planned.label,
        tracking_uid=new_uid(uid_root),
        display_color=hd.color.CIELabColor.from_rgb(*_COLORS[planned.role]),
    )
    if planned.laterality is not None:
        # Segment Description Macro (PS3.3 C.8.20.2): the Segmented Property Type
        # Modifier Code Sequence sits inside the type's code item (CID 244);
        # dciodvfy rejects it at the segment level.
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [
            CodedConcept.from_code(planned.laterality)
        ]
    return description


def _occupied_slices(mask: np.ndarray) -> slice:
    """The slice range ``[first, last + 1)`` holding a non-zero voxel (empty if none)."""
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        return slice(0, 0)
    return slice(int(occupied[0]), int(occupied[-1]) + 1)


def stack_masks(result: InferenceResult, plan: Sequence[PlannedSegment]) -> np.ndarray:
    """``(slices, rows, columns, segments)`` uint8 array, segment-major in memory.

    Parameters
    ----------
    result: inference.result.InferenceResult
        Its ``lesion_mask`` and ``lung_mask`` (1 right, 2 left).
    plan: Sequence[PlannedSegment]
        From :func:`plan_segments`; gives the order of the last axis.

    Returns
    -------
    numpy.ndarray
        A ``numpy.moveaxis`` view of a ``(segments, slices, rows, columns)``
        array: each segment is a contiguous block and each frame a contiguous
        2D plane. The array starts zeroed (``calloc``: pages never written
        cost neither time nor memory) and only the slice range that holds a
        segment's voxels is written, so a lesion on 20 slices costs 20
        planes, not the whole series.
    """
    stacked = np.zeros((len(plan), *result.geometry.shape), dtype=np.uint8)
    lesion_range = _occupied_slices(result.lesion_mask)
    lung_range = _occupied_slices(result.lung_mask)
    for index, planned in enumerate(plan):
        if planned.role == LESION_ROLE:
            np.copyto(stacked[index, lesion_range], result.lesion_mask[lesion_range])
        else:
            label = 1 if planned.role == RIGHT_LUNG_ROLE else 2
            np.equal(
                result.lung_mask[lung_range], label,
                out=stacked[index, lung_range].view(np.bool_),
            )
    return np.moveaxis(stacked, 0, -1)


def segmentation_arguments(
    source_datasets: Sequence[Dataset],
    result: InferenceResult,
    manifest: Manifest,
    *,
    uid_root: str,
    series_number: int = SEG_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str = MANUFACTURER,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
) -> dict[str, Any]:
    """Check the inputs and give the keyword arguments of the SEG constructor.

    Parameters
    ----------
    source_datasets, result, manifest, uid_root, series_number, \
instance_number, manufacturer, device_serial_number, institution_name
        As :func:`build_segmentation`.

    Returns
    -------
    dict[str, Any]
        Every ``highdicom.seg.Segmentation`` argument except
        ``pixel_array`` (see :func:`stack_masks`), with new Series and SOP
        Instance UIDs under ``uid_root``.

    Raises
    ------
    TypeError, ValueError
        As :func:`build_segmentation`.
    """
    root = check_uid_root(uid_root)
    check_series_number(series_number, "series_number")
    check_series_number(instance_number, "instance_number")
    check_long_string(manufacturer, "manufacturer")
    serial = check_long_string(
        device_serial_number if device_serial_number is not None else root[:-1],
        "device_serial_number",
    )
    check_result(result, manifest)
    check_source_datasets(source_datasets, result.geometry)
    plan = plan_segments(manifest)
    return {
        "source_images": source_datasets,
        "segmentation_type": hd.seg.SegmentationTypeValues.BINARY,
        "segment_descriptions": [_segment_description(p, manifest, result, root) for p in plan],
        "series_instance_uid": new_uid(root),
        "series_number": series_number,
        "sop_instance_uid": new_uid(root),
        "instance_number": instance_number,
        "manufacturer": manufacturer,
        "manufacturer_model_name": DEVICE_NAME,
        "software_versions": software_version(),
        "device_serial_number": serial,
        "content_label": SEG_CONTENT_LABEL,
        "content_description": SEG_CONTENT_DESCRIPTION,
        "omit_empty_frames": True,
        "series_description": SEG_SERIES_DESCRIPTION,
        "content_qualification": hd.ContentQualificationValues.RESEARCH,
        "institution_name": resolve_institution_name(source_datasets, institution_name),
        "specific_character_set": result_character_set(source_datasets),
    }


def build_segmentation(
    source_datasets: Sequence[Dataset],
    result: InferenceResult,
    manifest: Manifest,
    *,
    uid_root: str,
    series_number: int = SEG_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str = MANUFACTURER,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
) -> hd.seg.Segmentation:
    """Encode the lesion and lung masks of ``result`` as a BINARY DICOM-SEG.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        The CT series, item ``k`` being slice ``k`` of ``result.geometry``
        (the volume builder's order; never re-sorted here). Pixel Data is not
        needed: metadata-only datasets (``stop_before_pixels=True``) work.
    result: inference.result.InferenceResult
        Masks on the source grid, from the model described by ``manifest``.
    manifest: inference.manifest.Manifest
        Segment labels and codes, model name and version.
    uid_root: str
        Root of the generated Series, SOP Instance, tracking and dimension
        organisation UIDs.
    series_number: int, optional
        Series Number of the SEG series (default 9001).
    instance_number: int, optional
        Instance Number (default 1).
    manufacturer: str, optional
        Manufacturer (default ``"deepsc-node"``).
    device_serial_number: str | None, optional
        Device Serial Number of the node; ``None`` uses ``uid_root``, which
        identifies the installation.
    institution_name: str | None, optional
        Institution Name; ``None`` copies the source's, if any.

    Returns
    -------
    highdicom.seg.Segmentation
        Same patient, study and frame of reference as the source; Series
        Description ``"AI lesions (research)"``; one segment per
        :func:`plan_segments` entry; empty frames omitted. Built as a
        :class:`~pacs_node.results.seg_overlap.BinarySegmentation` (same
        object as highdicom's, without its ``uint64`` check of the stack).

    .. versionchanged:: issue 6
        The mask stack writes only occupied slices and is checked by
        streaming; the encoded object is byte for byte the same.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the datasets do not match ``result.geometry`` slice by slice
        (ImagePositionPatient within 0.01 mm), the result does not match the
        manifest, or a parameter is out of range.
    """
    started = time.perf_counter()
    arguments = segmentation_arguments(
        source_datasets,
        result,
        manifest,
        uid_root=uid_root,
        series_number=series_number,
        instance_number=instance_number,
        manufacturer=manufacturer,
        device_serial_number=device_serial_number,
        institution_name=institution_name,
    )
    plan = plan_segments(manifest)
    pixel_array = stack_masks(result, plan)
    with phi_safe_warnings():
        seg = BinarySegmentation(pixel_array=pixel_array, **arguments)
    del pixel_array
    adopt_dimension_organization_uid(seg, new_uid(check_uid_root(uid_root)))
    LOGGER.info(
        "SEG %s for series %s: %d segments, %d frames, %.2f s",
        seg.SOPInstanceUID,
        source_datasets[0].SeriesInstanceUID,
        len(plan),
        int(seg.NumberOfFrames),
        time.perf_counter() - started,
    )
    return seg
