"""Consistency checks that decide whether single-frame CT images form a volume.

Used by :func:`inference.volume.build_volume`. Every failure raises
:class:`~inference.errors.SeriesNotVolumetricError` or
:class:`~inference.errors.VolumeError` with a message fit for a job record:
UIDs, counts and values only, never patient identifiers.

The rules follow highdicom ``image.py::get_volume_from_series`` (same series,
same frame of reference, same orientation, same pixel spacing, regularly
spaced), with explicit reasons instead of one generic message, and two
decisions of our own:

* Missing slices (a gap that is a multiple of the usual spacing) are
  **rejected**, not interpolated: the SEG and SR must reference real source
  images and the model must not see invented anatomy.
* Gantry tilt (slices stacked along a direction that is not the slice
  normal) is **rejected**, not resampled: a :class:`~inference.geometry.Geometry`
  is an orthogonal grid, and a DICOM-SEG on a resampled grid would no longer
  reference the source images frame by frame.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from inference.errors import SeriesNotVolumetricError, VolumeError

LOGGER = logging.getLogger(__name__)

__all__ = [
    "DECODED_KEYWORDS",
    "MAX_MATRIX",
    "MAX_VOXELS",
    "SliceStack",
    "check_identity",
    "check_decodable",
    "check_image_format",
    "check_stack",
    "integer_attribute",
    "uid_of",
]

#: Absolute floor (mm) of the position tolerances, for DS rounding of IPP.
POSITION_FLOOR_MM = 0.01
#: Largest Rows or Columns of an image that is decoded. CT is 512 or 1024
#: (rarely 2048); a larger declared matrix is refused before any pixel is
#: decoded or any array allocated, since a decoder trusts Rows/Columns
#: (65535 x 65535 x 2 bytes = 8 GiB per slice).
MAX_MATRIX = 4096
#: Largest number of voxels (slices x Rows x Columns) of one volume:
#: 2048 slices of 512 x 512, i.e. 1 GiB as int16 or 2 GiB as float32 HU,
#: beside the pixel bytes of the files. A 0.5 mm chest CT has about 800
#: slices; a larger series is refused with a reason, not processed.
MAX_VOXELS = 2048 * 512 * 512


def uid_of(dataset: Dataset, index: int) -> str:
    """A printable reference to one image: its SOP Instance UID or its index.

    Parameters
    ----------
    dataset: pydicom.dataset.Dataset
        The image.
    index: int
        Its position in the caller's list (used when the UID is missing).

    Returns
    -------
    str
        ``"1.2.3..."`` or ``"image #index"``.
    """
    try:
        uid = str(dataset.get("SOPInstanceUID", "") or "").strip()
    except Exception:  # an undecodable element (see check_decodable): use the index
        uid = ""
    return uid if uid else f"image #{index}"


#: Attributes the volume builder reads from each image (pydicom decodes an
#: element on first access; :func:`check_decodable` does it for all first).
DECODED_KEYWORDS = (
    "SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
    "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "RescaleSlope",
    "RescaleIntercept", "PixelPaddingValue", "PixelPaddingRangeLimit", "ModalityLUTSequence",
    "PixelData",
)


def check_decodable(datasets: Sequence[Dataset]) -> None:
    """Decode every attribute of :data:`DECODED_KEYWORDS` in every image.

    pydicom converts an element when it is first read and raises for a
    malformed one (an unknown VR, a length that is no multiple of the value
    size, ...) with exception types of its own; after this check such a
    failure is a :class:`VolumeError` and later reads return the decoded
    values. Found by ``tests/test_fuzz_ingest.py``.

    Parameters
    ----------
    datasets: Sequence[pydicom.dataset.Dataset]
        The images.

    Raises
    ------
    VolumeError
        Naming the image and the attribute that cannot be decoded (never its
        value).
    """
    for index, ds in enumerate(datasets):
        for keyword in DECODED_KEYWORDS:
            try:
                ds.get(keyword)
            except Exception as exc:  # pydicom's conversion errors have no common base
                raise VolumeError(
                    f"image {uid_of(ds, index)} has a malformed {keyword} element that "
                    f"cannot be decoded ({type(exc).__name__})"
                ) from exc


def integer_attribute(
    ds: Dataset, keyword: str, ref: str, series_uid: str, default: int | None = None
) -> int:
    """A single integer attribute of an image (US, SS, IS...), checked.

    Parameters
    ----------
    ds: pydicom.dataset.Dataset
        The image.
    keyword: str
        E.g. ``"Rows"``.
    ref, series_uid: str
        For messages.
    default: int | None
        Returned when the attribute is absent or empty; ``None``: required.

    Returns
    -------
    int

    Raises
    ------
    VolumeError
        If it is required and absent, or not one integer (several values, text).
    """
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise VolumeError(f"image {ref} of series {series_uid} lacks {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise VolumeError(
            f"image {ref} of series {series_uid} has no usable {keyword} (expected one integer)"
        ) from None


def _single_value(datasets: Sequence[Dataset], keyword: str, what: str) -> str:
    values = [str(ds.get(keyword, "") or "").strip() for ds in datasets]
    empty = [index for index, value in enumerate(values) if not value]
    if empty:
        first = empty[0]
        raise VolumeError(
            f"{keyword} is missing or empty in {len(empty)} of {len(datasets)} images "
            f"(first: {uid_of(datasets[first], first)}); {what}"
        )
    distinct = sorted(set(values))
    if len(distinct) > 1:
        shown = ", ".join(distinct[:3]) + (" ..." if len(distinct) > 3 else "")
        raise SeriesNotVolumetricError(
            f"images have {len(distinct)} different {keyword} values ({shown}); {what}"
        )
    return distinct[0]


def check_identity(datasets: Sequence[Dataset]) -> tuple[str, str]:
    """One series, one frame of reference, unique non-empty SOP Instance UIDs.

    Parameters
    ----------
    datasets: Sequence[pydicom.dataset.Dataset]
        The images.

    Returns
    -------
    tuple[str, str]
        ``(series_instance_uid, frame_of_reference_uid)``.

    Raises
    ------
    VolumeError
        If an identifier is missing or empty.
    SeriesNotVolumetricError
        If the images belong to several series or frames of reference, or an
        instance appears twice.
    """
    series_uid = _single_value(
        datasets,
        "SeriesInstanceUID",
        "a result cannot be attached to a series without one SeriesInstanceUID",
    )
    frame_uid = _single_value(
        datasets,
        "FrameOfReferenceUID",
        "the slices cannot be placed in one patient coordinate system",
    )
    sop_uids = [str(ds.get("SOPInstanceUID", "") or "").strip() for ds in datasets]
    empty = sum(1 for uid in sop_uids if not uid)
    if empty:
        raise VolumeError(
            f"SOPInstanceUID is missing or empty in {empty} of {len(datasets)} images of "
            f"series {series_uid}; results cannot reference such images"
        )
    if len(set(sop_uids)) != len(sop_uids):
        duplicated = sorted({uid for uid in sop_uids if sop_uids.count(uid) > 1})
        raise SeriesNotVolumetricError(
            f"series {series_uid} holds the same SOPInstanceUID more than once "
            f"({duplicated[0]}{' ...' if len(duplicated) > 1 else ''})"
        )
    return series_uid, frame_uid


def check_image_format(datasets: Sequence[Dataset], series_uid: str) -> tuple[int, int]:
    """Single-frame greyscale images with one matrix size and pixel format.

    Parameters
    ----------
    datasets: Sequence[pydicom.dataset.Dataset]
        The images.
    series_uid: str
        For messages.

    Returns
    -------
    tuple[int, int]
        ``(rows, columns)``.

    Raises
    ------
    VolumeError
        For multi-frame (Enhanced CT) images, images without pixel data or
        pixel module attributes, colour images, a non-CT modality, Rows or
        Columns outside 1 to :data:`MAX_MATRIX`, or more than
        :data:`MAX_VOXELS` voxels in all (checked before anything is decoded).
    SeriesNotVolumetricError
        If matrix size or pixel format differ between images.
    """
    formats = set()
    for index, ds in enumerate(datasets):
        ref = uid_of(ds, index)
        frames = integer_attribute(ds, "NumberOfFrames", ref, series_uid, default=1)
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            raise VolumeError(
                f"Enhanced CT not supported: image {ref} of series {series_uid} is a "
                f"multi-frame image ({frames} frames); send the series as single-frame "
                "CT Image Storage"
            )
        modality = str(ds.get("Modality", "CT") or "CT")
        if modality != "CT":
            raise VolumeError(
                f"image {ref} of series {series_uid} has Modality {modality}; only CT "
                "can be converted to Hounsfield units"
            )
        if "PixelData" not in ds:
            raise VolumeError(f"image {ref} of series {series_uid} has no PixelData")
        missing = [
            keyword
            for keyword in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation")
            if ds.get(keyword) is None
        ]
        if missing:
            raise VolumeError(
                f"image {ref} of series {series_uid} lacks {', '.join(missing)}"
            )
        rows, columns, bits, representation = (
            integer_attribute(ds, keyword, ref, series_uid)
            for keyword in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation")
        )
        if not (0 < rows <= MAX_MATRIX and 0 < columns <= MAX_MATRIX):
            raise VolumeError(
                f"image {ref} of series {series_uid} declares {rows}x{columns} pixels; "
                f"the limit is 1 to {MAX_MATRIX} rows and columns"
            )
        samples = integer_attribute(ds, "SamplesPerPixel", ref, series_uid, default=1)
        if samples != 1:
            raise VolumeError(
                f"image {ref} of series {series_uid} has SamplesPerPixel {samples}; "
                "CT images are greyscale (1)"
            )
        formats.add((rows, columns, bits, representation))
    if len(formats) > 1:
        matrices = sorted({(f[0], f[1]) for f in formats})
        if len(matrices) > 1:
            shown = ", ".join(f"{r}x{c}" for r, c in matrices)
            raise SeriesNotVolumetricError(
                f"images of series {series_uid} have different matrix sizes ({shown})"
            )
        shown = ", ".join(
            f"BitsAllocated {f[2]}/PixelRepresentation {f[3]}" for f in sorted(formats)
        )
        raise SeriesNotVolumetricError(
            f"images of series {series_uid} have different pixel formats ({shown})"
        )
    rows, columns, _, _ = formats.pop()
    voxels = len(datasets) * rows * columns
    if voxels > MAX_VOXELS:
        raise VolumeError(
            f"series {series_uid} has {len(datasets)} images of {rows}x{columns} = "
            f"{voxels} voxels; the limit is {MAX_VOXELS} (e.g. 2048 slices of 512x512)"
        )
    return rows, columns


@dataclass(frozen=True)
class SliceStack:
    """The sorted stack: where each image goes and the grid they form.

    Attributes
    ----------
    order: tuple[int, ...]
        Indices into the caller's dataset list, in slice (``k``) order:
        increasing position along ``slice_direction``.
    row_direction, column_direction, slice_direction: numpy.ndarray
        Unit vectors (``slice_direction`` = row x column).
    pixel_spacing: tuple[float, float]
        ``(row_spacing, column_spacing)`` = PixelSpacing.
    slice_spacing: float
        Distance between consecutive slices (mm).
    origin: numpy.ndarray
        ImagePositionPatient of the first slice in ``order``.
    """

    order: tuple[int, ...]
    row_direction: np.ndarray
    column_direction: np.ndarray
    slice_direction: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    origin: np.ndarray


def _floats(ds: Dataset, keyword: str, count: int, ref: str, series_uid: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(
            f"image {ref} of series {series_uid} has no usable {keyword}"
        ) from exc
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise VolumeError(
            f"image {ref} of series {series_uid} has no usable {keyword} "
            f"(expected {count} finite numbers)"
        )
    return array


def check_stack(
    datasets: Sequence[Dataset],
    series_uid: str,
    spacing_tolerance: float,
    orientation_tolerance: float,
) -> SliceStack:
    """Sort the images along the slice normal and check the stack is regular.

    Parameters
    ----------
    datasets: Sequence[pydicom.dataset.Dataset]
        At least two images of one series.
    series_uid: str
        For messages.
    spacing_tolerance: float
        Largest allowed deviation of a slice from the regular grid, as a
        fraction of the slice spacing (floor :data:`POSITION_FLOOR_MM`).
    orientation_tolerance: float
        Largest allowed difference of any direction cosine between images,
        and largest allowed in-plane drift per mm along the normal (the
        tangent of the tilt angle).

    Returns
    -------
    SliceStack

    Raises
    ------
    VolumeError
        If a geometry attribute is missing or malformed.
    SeriesNotVolumetricError
        Mixed orientations or pixel spacings, duplicate positions, gantry tilt,
        missing slices or otherwise irregular spacing.
    """
    n = len(datasets)
    orientations = np.stack(
        [
            _floats(ds, "ImageOrientationPatient", 6, uid_of(ds, i), series_uid)
            for i, ds in enumerate(datasets)
        ]
    )
    positions = np.stack(
        [
            _floats(ds, "ImagePositionPatient", 3, uid_of(ds, i), series_uid)
            for i, ds in enumerate(datasets)
        ]
    )
    spacings = np.stack(
        [_floats(ds, "PixelSpacing", 2, uid_of(ds, i), series_uid) for i, ds in enumerate(datasets)]
    )
    deviation = float(np.max(np.abs(orientations - orientations[0])))
    if deviation > orientation_tolerance:
        distinct = len({tuple(np.round(o, 3)) for o in orientations})
        raise SeriesNotVolumetricError(
            f"series {series_uid} mixes {max(distinct, 2)} image orientations "
            f"(direction cosines differ by up to {deviation:.4f}, tolerance "
            f"{orientation_tolerance:g})"
        )
    if np.any(spacings <= 0):
        raise VolumeError(f"series {series_uid} has a non-positive PixelSpacing")
    if not np.allclose(spacings, spacings[0], rtol=1e-4, atol=1e-4):
        raise SeriesNotVolumetricError(
            f"series {series_uid} has different pixel spacings "
            f"({float(spacings[:, 0].min()):.4f} to {float(spacings[:, 0].max()):.4f} mm)"
        )
    row = orientations[0, :3] / np.linalg.norm(orientations[0, :3])
    column = orientations[0, 3:] / np.linalg.norm(orientations[0, 3:])
    if abs(float(np.dot(row, column))) > 1e-3:
        raise VolumeError(
            f"series {series_uid} has an ImageOrientationPatient whose row and column "
            "directions are not orthogonal"
        )
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)

    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    ordered = positions[order]
    gaps = np.diff(along)
    extent = float(along[-1] - along[0])
    floor = POSITION_FLOOR_MM
    duplicates = int(np.count_nonzero(gaps <= floor))
    if duplicates:
        first = int(np.nonzero(gaps <= floor)[0][0])
        raise SeriesNotVolumetricError(
            f"series {series_uid} has {duplicates} duplicate slice position(s) "
            f"({n} images; e.g. two images at {along[first]:.2f} mm along the slice normal)"
        )
    # In-plane drift of the stack: gantry tilt (or a sheared acquisition).
    in_plane = ordered - ordered[0] - np.outer(along - along[0], normal)
    drift = np.linalg.norm(in_plane, axis=1)
    allowed = floor + orientation_tolerance * np.abs(along - along[0])
    if np.any(drift > allowed):
        tilt = float(np.degrees(np.arctan2(float(drift[-1]), extent)))
        raise SeriesNotVolumetricError(
            f"series {series_uid} is not stacked along its slice normal (gantry tilt "
            f"about {tilt:.1f} degrees, in-plane drift {float(drift.max()):.2f} mm); "
            "tilted series are rejected, not resampled"
        )
    spacing = extent / (n - 1)
    expected = along[0] + spacing * np.arange(n)
    residual = np.abs(along - expected)
    allowed_residual = max(floor, spacing_tolerance * spacing)
    if np.any(residual > allowed_residual) or np.any(
        np.abs(gaps - spacing) > max(floor, 2.0 * spacing_tolerance * spacing)
    ):
        smallest = float(gaps.min())
        largest = float(gaps.max())
        ratio = gaps / smallest
        missing = int(np.sum(np.rint(ratio) - 1)) if largest > 1.5 * smallest else 0
        detail = (
            f"; about {missing} slice(s) appear to be missing" if missing > 0 else ""
        )
        raise SeriesNotVolumetricError(
            f"series {series_uid} is not a regularly spaced volume: {n} slices with gaps "
            f"from {smallest:.3f} to {largest:.3f} mm along the slice normal{detail} "
            f"(tolerance {spacing_tolerance:.1%} of the spacing; missing slices are "
            "rejected, not interpolated)"
        )
    return SliceStack(
        order=tuple(int(i) for i in order),
        row_direction=row,
        column_direction=column,
        slice_direction=normal,
        pixel_spacing=(float(spacings[0, 0]), float(spacings[0, 1])),
        slice_spacing=float(spacing),
        origin=ordered[0].copy(),
    )
