"""Which complete series the model sees: the selection rules, applied to headers.

The rules are data (:class:`config.SelectionRules`, from the settings file);
this module applies them to the headers of one series and returns a
:class:`Selection`: candidate or not, and a reason fit for the job record
and the log (counts, values and configured patterns; never the Series
Description itself or any patient attribute).

Checks, in order (the first that fails decides)
    1. **Own output** (loop prevention): the series is one the node wrote
       (recorded as a result series in the database), or an instance or series
       UID starts with the node's UID root, or Manufacturer (0008,0070) and
       Manufacturer's Model Name (0008,1090) are both the node's
       (``deepsc-node``, as :mod:`pacs_node.results` writes them). The
       project's synthetic phantoms (Manufacturer ``deepsc-node``, model
       ``deepsc-node synthetic phantom``) are not own output.
    2. **Modality** (0008,0060) in ``rules.modalities``.
    3. **SOP class**: images must be CT Image Storage. Enhanced and Legacy
       Converted Enhanced CT (multi-frame) are refused with a reason:
       :func:`inference.volume.build_volume` does not support them. Instances
       of other SOP classes inside an otherwise CT series are ignored.
    4. **Image Type** (0008,0008): images carrying a value of
       ``rules.image_type_exclude`` (e.g. LOCALIZER) are ignored; a series of
       only such images is refused.
    5. **Series Description** (0008,103E): must match one of
       ``rules.series_description_include`` when any is given, and none of
       ``rules.series_description_exclude`` (``re.search``, case-insensitive).
    6. **Minimum slices**: usable images >= ``rules.min_slices``.
    7. **Axial**: the angle between the slice normal (of the most common
       Image Orientation (Patient)) and the patient's foot-head axis is at
       most ``rules.orientation_tolerance`` degrees. Mixed orientations are
       left to the volume builder, whose reason is more precise.
    8. **Slice thickness**: the larger of the median Slice Thickness
       (0018,0050) and the median spacing of the positions along the normal
       is at most ``rules.max_slice_thickness`` mm.

Examples
--------
>>> from config import SelectionRules
>>> select_series([], SelectionRules()).reason
'no images'
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

from config import SelectionRules
from inference.errors import VolumeError
from inference.volume import DICOM_READ_ERRORS
from pacs_node.results.common import DEVICE_NAME, MANUFACTURER
from storage import JobState

LOGGER = logging.getLogger(__name__)

__all__ = [
    "Selection",
    "is_own_output_header",
    "read_headers",
    "select_series",
    "usable_images",
]

#: Multi-frame CT SOP classes that the volume builder refuses.
_MULTIFRAME_CT = frozenset({EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})


@dataclass(frozen=True)
class Selection:
    """The decision of the selection rules on one series.

    Parameters
    ----------
    candidate: bool
        Whether the series goes to the model.
    reason: str
        Why, for the job record, e.g. ``"3 slices < minimum 20"`` or
        ``"CT axial 30 slices 8.0 mm"``. No PHI.
    image_count: int
        Images the model would use (after the SOP class and Image Type
        exclusions).
    own_output: bool
        The series is one the node wrote (never processed, never triaged).
    """

    candidate: bool
    reason: str
    image_count: int = 0
    own_output: bool = False

    @property
    def state(self) -> JobState:
        """``queued`` for a candidate, ``rejected`` otherwise."""
        return JobState.QUEUED if self.candidate else JobState.REJECTED


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split("\\"))
    try:
        return tuple(str(part).strip() for part in value)
    except TypeError:
        return (str(value).strip(),)


def is_own_output_header(ds: Dataset, uid_root: str | None) -> str | None:
    """Why a header is the node's own output, or ``None`` if it is not.

    Parameters
    ----------
    ds: pydicom.Dataset
        The header.
    uid_root: str | None
        The node's UID root (``Settings.uid_root``); ``None``: not checked.

    Returns
    -------
    str | None
        ``"UIDs under the node's UID root"``, ``"Manufacturer and model
        deepsc-node"`` or ``None``.
    """
    if uid_root:
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
            if _text(ds, keyword).startswith(uid_root):
                return "UIDs under the node's UID root"
    if (
        _text(ds, "Manufacturer").lower() == MANUFACTURER.lower()
        and _text(ds, "ManufacturerModelName").lower() == DEVICE_NAME.lower()
    ):
        return f"Manufacturer and model {DEVICE_NAME}"
    return None


def _excluded_image_type(ds: Dataset, rules: SelectionRules) -> str | None:
    excluded = {value.upper() for value in rules.image_type_exclude}
    for value in _values(ds, "ImageType"):
        if value.upper() in excluded:
            return value.upper()
    return None


def usable_images(datasets: Sequence[Dataset], rules: SelectionRules) -> list[Dataset]:
    """The images of a series that the model uses: CT Image Storage, Image Type not excluded.

    Parameters
    ----------
    datasets: Sequence[pydicom.Dataset]
        Headers or full datasets of one series.
    rules: config.SelectionRules
        For ``image_type_exclude``.

    Returns
    -------
    list[pydicom.Dataset]
        The same objects, in the order given.
    """
    return [
        ds
        for ds in datasets
        if UID(_text(ds, "SOPClassUID")) == CTImageStorage
        and _excluded_image_type(ds, rules) is None
    ]


def read_headers(paths: Iterable[str | Path]) -> list[Dataset]:
    """Read the headers (no pixel data) of DICOM files.

    Parameters
    ----------
    paths: Iterable[str | pathlib.Path]
        The files.

    Returns
    -------
    list[pydicom.Dataset]
        One header per file, in the order given.

    Raises
    ------
    inference.errors.VolumeError
        If a file cannot be read; the message names the file (its name only)
        and the exception type, never a value from it.
    """
    headers: list[Dataset] = []
    for item in paths:
        path = Path(item)
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True, force=True))
        except DICOM_READ_ERRORS as exc:
            raise VolumeError(f"cannot read DICOM file {path.name}: {type(exc).__name__}") from exc
    return headers


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        return None
    return values


def _orientation(images: Sequence[Dataset]) -> np.ndarray | None:
    """Slice normal of the most common Image Orientation (Patient), or ``None``."""
    found: Counter[tuple[float, ...]] = Counter()
    for ds in images:
        iop = _floats(ds, "ImageOrientationPatient", 6)
        if iop is not None:
            found[tuple(np.round(iop, 4))] += 1
    if not found:
        return None
    iop = np.array(found.most_common(1)[0][0])
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 1e-6 else None


def _thickness(images: Sequence[Dataset], normal: np.ndarray) -> float | None:
    """The larger of the median Slice Thickness and the median slice spacing (mm)."""
    candidates = []
    thicknesses = []
    for ds in images:
        try:
            value = float(ds.get("SliceThickness"))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            thicknesses.append(value)
    if thicknesses:
        candidates.append(float(np.median(thicknesses)))
    positions = [
        float(np.dot(normal, ipp))
        for ipp in (_floats(ds, "ImagePositionPatient", 3) for ds in images)
        if ipp is not None
    ]
    if len(positions) >= 2:
        steps = np.diff(np.sort(np.array(positions)))
        steps = steps[steps > 1e-3]
        if steps.size:
            candidates.append(float(np.median(steps)))
    return max(candidates) if candidates else None


def select_series(
    headers: Sequence[Dataset],
    rules: SelectionRules,
    *,
    uid_root: str | None = None,
    own_output: bool = False,
) -> Selection:
    """Apply the selection rules to the headers of one complete series.

    Parameters
    ----------
    headers: Sequence[pydicom.Dataset]
        Every instance of the series (headers suffice).
    rules: config.SelectionRules
        The rules (``Settings.selection``).
    uid_root: str | None
        The node's UID root: instances under it are own output.
    own_output: bool
        The caller knows the series is a result series of the node
        (``storage.is_own_output``).

    Returns
    -------
    Selection
        Candidate or not, with the reason (see the module docstring for the
        order of the checks).

    Raises
    ------
    TypeError
        If `rules` is not a :class:`config.SelectionRules`.
    """
    if not isinstance(rules, SelectionRules):
        raise TypeError(f'Argument "rules" should be SelectionRules, got {type(rules).__name__}')
    if not headers:
        return Selection(False, "no images")
    if own_output:
        return Selection(False, "own output: a result series this node wrote", own_output=True)
    for ds in headers:
        why = is_own_output_header(ds, uid_root)
        if why is not None:
            return Selection(False, f"own output: {why}", own_output=True)

    accepted_modalities = {m.upper() for m in rules.modalities}
    modalities = Counter(_text(ds, "Modality").upper() or "<none>" for ds in headers)
    matching = [ds for ds in headers if _text(ds, "Modality").upper() in accepted_modalities]
    if not matching:
        found = ", ".join(sorted(modalities))
        return Selection(
            False, f"modality {found} is not one of {', '.join(sorted(accepted_modalities))}"
        )

    ct = [ds for ds in matching if UID(_text(ds, "SOPClassUID")) == CTImageStorage]
    if not ct:
        classes = {UID(_text(ds, "SOPClassUID")) for ds in matching}
        if classes & _MULTIFRAME_CT:
            name = sorted(c.name for c in classes & _MULTIFRAME_CT)[0]
            return Selection(
                False,
                f"{name} (multi-frame) is not supported; send the series as CT Image Storage",
            )
        names = ", ".join(sorted(c.name if c.name else str(c) or "<none>" for c in classes))
        return Selection(False, f"SOP class {names} is not CT Image Storage")
    ignored_classes = len(matching) - len(ct)

    usable = [ds for ds in ct if _excluded_image_type(ds, rules) is None]
    excluded_types = Counter(
        value for value in (_excluded_image_type(ds, rules) for ds in ct) if value is not None
    )
    if not usable:
        types = ", ".join(sorted(excluded_types))
        return Selection(False, f"all {len(ct)} images have an excluded Image Type ({types})")

    description = _text(usable[0], "SeriesDescription")
    if rules.series_description_include and not any(
        re.search(pattern, description, re.IGNORECASE)
        for pattern in rules.series_description_include
    ):
        patterns = ", ".join(repr(p) for p in rules.series_description_include)
        return Selection(
            False, f"series description matches none of the include patterns {patterns}"
        )
    for pattern in rules.series_description_exclude:
        if re.search(pattern, description, re.IGNORECASE):
            return Selection(False, f"series description matches exclude pattern {pattern!r}")

    count = len(usable)
    if count < rules.min_slices:
        return Selection(False, f"{count} slices < minimum {rules.min_slices}", count)

    normal = _orientation(usable)
    if normal is None:
        return Selection(False, "no usable Image Orientation (Patient)", count)
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if angle > rules.orientation_tolerance:
        return Selection(
            False,
            f"not axial: slice normal {angle:.1f} degrees from the foot-head axis "
            f"(tolerance {rules.orientation_tolerance:g})",
            count,
        )

    thickness = _thickness(usable, normal)
    if thickness is not None and thickness > rules.max_slice_thickness + 1e-6:
        return Selection(
            False,
            f"slice thickness {thickness:.1f} mm > maximum {rules.max_slice_thickness:g} mm",
            count,
        )

    reason = f"CT axial {count} slices"
    if thickness is not None:
        reason += f" {thickness:.1f} mm"
    notes = []
    if excluded_types:
        notes.append(
            f"{sum(excluded_types.values())} {', '.join(sorted(excluded_types))} image(s) ignored"
        )
    if ignored_classes:
        notes.append(f"{ignored_classes} non-CT-image instance(s) ignored")
    if notes:
        reason += " (" + "; ".join(notes) + ")"
    return Selection(True, reason, count)
