"""Read the node's SEG and SR back: masks on the source grid, report numbers.

Tolerant when decoding: these readers rely only on the standard structure
(Segment Sequence, functional groups, TID 1500 content items), so they read
any SEG on the source grid and any report with this package's content tree.
Used by the tests and by the end-to-end test to check that "the SR's volumes
agree with the SEG's voxel counts".
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from inference.geometry import Geometry
from pacs_node.results import codes

LOGGER = logging.getLogger(__name__)

__all__ = ["read_segmentation_mask", "read_report_measurements"]

_POSITION_TOLERANCE_MM = 0.01
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_MEASUREMENT_GROUP = ("125007", "DCM")
_TRACKING_IDENTIFIER = ("112039", "DCM")
_TRACKING_UID = ("112040", "DCM")
_IMAGE_REGION = ("111030", "DCM")
_REFERENCED_SEGMENT = ("121191", "DCM")
_FINDING = ("121071", "DCM")
_FINDING_SITE = ("363698007", "SCT")
_LATERALITY = ("272741003", "SCT")
_TOPOGRAPHICAL_MODIFIER = ("106233006", "SCT")
_DERIVATION = ("121401", "DCM")


def _key(code: Any) -> tuple[str, str]:
    return (str(code.value), str(code.scheme_designator))


def _segment_labels(seg: Dataset) -> dict[int, str]:
    labels: dict[int, str] = {}
    for item in seg.SegmentSequence:
        label = str(item.get("SegmentLabel", f"Segment {item.SegmentNumber}"))
        if label in labels.values():
            raise ValueError(f'Argument "seg" has two segments labelled {label!r}.')
        labels[int(item.SegmentNumber)] = label
    return labels


def _by_source_instances(
    seg: Dataset, labels: dict[int, str], uids: Sequence[str]
) -> dict[str, np.ndarray]:
    referenced = {
        str(instance.ReferencedSOPInstanceUID)
        for series in seg.get("ReferencedSeriesSequence", [])
        for instance in series.ReferencedInstanceSequence
    }
    unknown = [uid for uid in uids if uid not in referenced]
    if unknown:
        raise ValueError(
            f'Argument "source": {len(unknown)} SOP Instance UIDs are not source images '
            f"of the SEG (first: {unknown[0]})."
        )
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    numbers = sorted(labels)
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=list(uids),
        segment_numbers=numbers,
        combine_segments=False,
        assert_missing_frames_are_empty=True,
        dtype=np.uint8,
    )
    return {labels[n]: np.ascontiguousarray(pixels[..., i] > 0) for i, n in enumerate(numbers)}


def _functional_group(seg: Dataset, frame: int, keyword: str) -> Dataset:
    per_frame = seg.PerFrameFunctionalGroupsSequence[frame]
    if keyword in per_frame:
        return getattr(per_frame, keyword)[0]
    shared = seg.SharedFunctionalGroupsSequence[0]
    if keyword in shared:
        return getattr(shared, keyword)[0]
    raise ValueError(f'Argument "seg": frame {frame + 1} has no {keyword}.')


def _by_geometry(seg: Dataset, labels: dict[int, str], geometry: Geometry) -> dict[str, np.ndarray]:
    n_slices, rows, columns = geometry.shape
    if (int(seg.Rows), int(seg.Columns)) != (rows, columns):
        raise ValueError('Argument "seg": frame size differs from the source geometry.')
    orientation = [float(v) for v in _functional_group(seg, 0, "PlaneOrientationSequence")
                   .ImageOrientationPatient]
    spacing = [float(v) for v in _functional_group(seg, 0, "PixelMeasuresSequence").PixelSpacing]
    if not np.allclose(orientation, geometry.image_orientation, atol=1e-4) or not np.allclose(
        spacing, geometry.spacing[1:], atol=1e-3
    ):
        raise ValueError(
            'Argument "seg": plane orientation or pixel spacing differs from the source geometry.'
        )
    masks = {label: np.zeros(geometry.shape, dtype=bool) for label in labels.values()}
    n_frames = int(seg.get("NumberOfFrames", 1))
    pixels = np.asarray(seg.pixel_array).reshape(n_frames, rows, columns)
    positions = np.array([
        [float(v) for v in _functional_group(seg, f, "PlanePositionSequence").ImagePositionPatient]
        for f in range(n_frames)
    ])
    indices = geometry.patient_to_index(positions)
    slices = np.rint(indices[:, 0]).astype(int)
    offsets = geometry.index_to_patient(
        np.column_stack([slices, np.zeros(n_frames), np.zeros(n_frames)])
    ) - positions
    tolerance = max(_POSITION_TOLERANCE_MM, 0.02 * geometry.spacing[0])
    bad = (np.linalg.norm(offsets, axis=1) > tolerance) | (slices < 0) | (
        slices >= n_slices
    )
    if np.any(bad):
        frame = int(np.argmax(bad))
        raise ValueError(
            f'Argument "seg": frame {frame + 1} is not on a slice of the source geometry.'
        )
    for frame in range(n_frames):
        number = int(_functional_group(seg, frame, "SegmentIdentificationSequence")
                     .ReferencedSegmentNumber)
        if number not in labels:
            raise ValueError(f'Argument "seg": frame {frame + 1} refers to segment {number}, '
                             "which the Segment Sequence does not describe.")
        masks[labels[number]][slices[frame]] |= pixels[frame] > 0
    return masks


def read_segmentation_mask(
    seg: Dataset, source: Geometry | Sequence[str]
) -> dict[str, np.ndarray]:
    """Decode every segment of a BINARY SEG onto the source grid.

    Parameters
    ----------
    seg: pydicom.Dataset
        A Segmentation Storage instance (a pydicom dataset or a
        ``highdicom.seg.Segmentation``); it is not modified.
    source: inference.geometry.Geometry | Sequence[str]
        Either the source geometry (frames are placed by their Plane Position
        and must lie on a slice within 0.01 mm), or the source SOP Instance
        UIDs in slice order (frames are placed by their source image
        references, with highdicom's ``get_pixels_by_source_instance``).

    Returns
    -------
    dict[str, numpy.ndarray]
        Segment Label to a ``bool`` array ``[slice, row, column]``; a segment
        without frames gives an all-``False`` array.

    Raises
    ------
    TypeError
        If ``seg`` is not a dataset or ``source`` has the wrong type.
    ValueError
        If ``seg`` is not a SEG, two segments share a label, or the frames do
        not lie on the source grid / reference other images.
    """
    if not isinstance(seg, Dataset):
        raise TypeError('Argument "seg" should be a pydicom Dataset.')
    if seg.get("SOPClassUID") != SegmentationStorage:
        raise ValueError('Argument "seg" should be a Segmentation Storage instance.')
    labels = _segment_labels(seg)
    if isinstance(source, Geometry):
        return _by_geometry(seg, labels, source)
    if isinstance(source, (str, bytes)) or not isinstance(source, Sequence):
        raise TypeError(
            'Argument "source" should be a Geometry or a sequence of SOP Instance UIDs.'
        )
    return _by_source_instances(seg, labels, [str(uid) for uid in source])


# --- SR ---------------------------------------------------------------------
def _name(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return (str(concept.CodeValue), str(concept.CodingSchemeDesignator))


def _code(item: Dataset) -> dict[str, str]:
    code = item.ConceptCodeSequence[0]
    return {
        "value": str(code.CodeValue),
        "scheme": str(code.CodingSchemeDesignator),
        "meaning": str(code.CodeMeaning),
    }


def _children(item: Dataset, name: tuple[str, str] | None = None) -> Iterable[Dataset]:
    for child in item.get("ContentSequence", []):
        if name is None or _name(child) == name:
            yield child


def _site(item: Dataset) -> dict[str, str | None] | None:
    sites = list(_children(item, _FINDING_SITE))
    if not sites:
        return None
    site = sites[0]
    sides = {_key(code)[0]: side for side, code in codes.SIDE_LATERALITY.items()}
    zones = {_key(code)[0]: zone for zone, code in codes.ZONE_MODIFIERS.items()}
    laterality = next(iter(_children(site, _LATERALITY)), None)
    modifier = next(iter(_children(site, _TOPOGRAPHICAL_MODIFIER)), None)
    return {
        "location": _code(site)["value"],
        "side": sides.get(_code(laterality)["value"]) if laterality is not None else None,
        "zone": zones.get(_code(modifier)["value"]) if modifier is not None else None,
    }


def _parse_group(group: Dataset) -> dict[str, Any]:
    parsed: dict[str, Any] = {
        "tracking_id": None, "tracking_uid": None, "finding": None, "segment": None,
        "region": None, "site": _site(group), "measurements": [], "evaluations": {},
        "texts": {},
    }
    for child in _children(group):
        name, value_type = _name(child), child.ValueType
        if name == _TRACKING_IDENTIFIER:
            parsed["tracking_id"] = str(child.TextValue)
        elif name == _TRACKING_UID:
            parsed["tracking_uid"] = str(child.UID)
        elif name == _IMAGE_REGION and value_type == "SCOORD":
            source = next(iter(_children(child)), None)
            reference = source.ReferencedSOPSequence[0] if source is not None else None
            parsed["region"] = {
                "graphic_type": str(child.GraphicType),
                "points": np.asarray(child.GraphicData, dtype=np.float64).reshape(-1, 2),
                "referenced_sop_instance_uid": (
                    str(reference.ReferencedSOPInstanceUID) if reference is not None else None
                ),
            }
        elif name == _FINDING and value_type == "CODE":
            parsed["finding"] = _code(child)
        elif name == _REFERENCED_SEGMENT:
            reference = child.ReferencedSOPSequence[0]
            parsed["segment"] = (
                str(reference.ReferencedSOPInstanceUID),
                int(reference.ReferencedSegmentNumber),
            )
        elif value_type == "NUM":
            value = child.MeasuredValueSequence[0]
            derivation = next(iter(_children(child, _DERIVATION)), None)
            parsed["measurements"].append({
                "name": name,
                "value": float(value.NumericValue),
                "unit": str(value.MeasurementUnitsCodeSequence[0].CodeValue),
                "site": _site(child),
                "derivation": _code(derivation)["value"] if derivation is not None else None,
            })
        elif value_type == "CODE" and name != _FINDING_SITE:
            parsed["evaluations"][name] = _code(child)
        elif value_type == "TEXT":
            parsed["texts"][name] = str(child.TextValue)
    return parsed


def _measurement(group: dict[str, Any], name: Any, side: str | None = None,
                 derivation: Any = None) -> float | None:
    for item in group["measurements"]:
        item_side = item["site"]["side"] if item["site"] else None
        item_derivation = item["derivation"]
        if (
            item["name"] == _key(name)
            and item_side == side
            and item_derivation == (_key(derivation)[0] if derivation is not None else None)
        ):
            return float(item["value"])
    return None


def read_report_measurements(sr: Dataset) -> dict[str, Any]:
    """The numbers and statements of a report written by this package.

    Parameters
    ----------
    sr: pydicom.Dataset
        A TID 1500 SR document (pydicom dataset or highdicom SR).

    Returns
    -------
    dict[str, Any]
        ``classification``: ``{"value", "scheme", "meaning"}`` of the
        predicted class (or ``None``); ``probabilities``: class Code Value to
        probability; ``statements``: the TEXT comments (intended use);
        ``lesions_present``: ``True``/``False`` (``None`` if absent);
        ``lesion_count``; ``total_lesion_volume_ml``;
        ``involvement_percent``: ``{"total", "right", "left"}``;
        ``lesion_volume_ml``: ``{"right", "left"}``; ``segments``: segment
        number to ``{"label", "seg_sop_instance_uid", "volume_ml",
        "mean_hu"}``; ``lesions``: per-lesion ``{"tracking_id",
        "tracking_uid", "volume_ml", "mean_hu", "side", "zone"}`` in report
        order; ``planar``: per planar (TID 1410) group ``{"tracking_id",
        "tracking_uid", "graphic_type", "points"`` (``(n, 2)`` image
        coordinates ``(column, row)``), ``"referenced_sop_instance_uid",
        "area_mm2", "long_axis_mm", "finding", "side", "zone"}`` in report
        order.

    Raises
    ------
    TypeError
        If ``sr`` is not a dataset.
    ValueError
        If ``sr`` is not a TID 1500 measurement report.
    """
    if not isinstance(sr, Dataset):
        raise TypeError('Argument "sr" should be a pydicom Dataset.')
    if sr.get("ValueType") != "CONTAINER" or "ContentSequence" not in sr:
        raise ValueError('Argument "sr" should be an SR document.')
    templates = sr.get("ContentTemplateSequence", [])
    if not templates or str(templates[0].TemplateIdentifier) != "1500":
        raise ValueError('Argument "sr" should be a TID 1500 measurement report.')
    containers = list(_children(sr, _IMAGING_MEASUREMENTS))
    groups = [
        _parse_group(group)
        for container in containers
        for group in _children(container, _MEASUREMENT_GROUP)
    ]
    out: dict[str, Any] = {
        "sop_instance_uid": str(sr.SOPInstanceUID),
        "classification": None,
        "probabilities": {},
        "statements": [],
        "lesions_present": None,
        "lesion_count": None,
        "total_lesion_volume_ml": None,
        "involvement_percent": {},
        "lesion_volume_ml": {},
        "segments": {},
        "lesions": [],
        "planar": [],
    }
    presence_key, impression_key = _key(codes.PRESENCE), _key(codes.IMPRESSION)
    for group in groups:
        out["statements"].extend(
            text for name, text in group["texts"].items() if name == _key(codes.COMMENT)
        )
        probability = _measurement(group, codes.PROBABILITY)
        if impression_key in group["evaluations"]:
            out["classification"] = group["evaluations"][impression_key]
        elif probability is not None and group["finding"] is not None:
            out["probabilities"][group["finding"]["value"]] = probability
        elif presence_key in group["evaluations"]:
            presence = group["evaluations"][presence_key]["value"]
            out["lesions_present"] = presence == _key(codes.PRESENT)[0]
            count = _measurement(group, codes.NUMBER_OF_LESIONS)
            out["lesion_count"] = int(count) if count is not None else None
            out["total_lesion_volume_ml"] = _measurement(group, codes.VOLUME)
            for lung in ("right", "left"):
                out["lesion_volume_ml"][lung] = _measurement(group, codes.VOLUME, lung)
            for region in ("total", "right", "left"):
                out["involvement_percent"][region] = _measurement(
                    group, codes.LUNG_INVOLVEMENT, None if region == "total" else region
                )
        elif group["region"] is not None:
            site = group["site"] or {}
            out["planar"].append({
                "tracking_id": group["tracking_id"],
                "tracking_uid": group["tracking_uid"],
                **group["region"],
                "area_mm2": _measurement(group, codes.AREA),
                "long_axis_mm": _measurement(group, codes.LONG_AXIS),
                "finding": group["finding"],
                "side": site.get("side"),
                "zone": site.get("zone"),
            })
        elif group["segment"] is not None:
            uid, number = group["segment"]
            out["segments"][number] = {
                "label": group["tracking_id"],
                "seg_sop_instance_uid": uid,
                "volume_ml": _measurement(group, codes.VOLUME),
                "mean_hu": _measurement(group, codes.ATTENUATION_COEFFICIENT,
                                        derivation=codes.MEAN),
                "side": group["site"]["side"] if group["site"] else None,
            }
        elif _measurement(group, codes.VOLUME) is not None:
            site = group["site"] or {}
            out["lesions"].append({
                "tracking_id": group["tracking_id"],
                "tracking_uid": group["tracking_uid"],
                "volume_ml": _measurement(group, codes.VOLUME),
                "mean_hu": _measurement(group, codes.ATTENUATION_COEFFICIENT,
                                        derivation=codes.MEAN),
                "side": site.get("side"),
                "zone": site.get("zone"),
            })
    return out
