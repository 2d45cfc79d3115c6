"""A CT volume in Hounsfield units from the single-frame images of one series.

:func:`build_volume` turns pydicom datasets into a :class:`CTVolume`: the
``[k, i, j]`` HU array, its :class:`~inference.geometry.Geometry` and the
datasets in slice order. It uses pydicom only (no networking, no database).

Decisions
---------
* Slices are sorted by their ImagePositionPatient projected on the slice
  normal ``row x column`` (ImageOrientationPatient), ascending: slice ``k``
  is the ``k``-th position along ``geometry.slice_direction`` =
  ``cross(row_direction, column_direction)``. File order, InstanceNumber and
  SliceLocation are ignored.
* The series must be one regular stack (see :mod:`inference.volume_checks`):
  missing slices and gantry tilt are rejected with a reason, never
  interpolated or resampled.
* Enhanced (multi-frame) CT is not supported and is rejected with
  ``VolumeError("Enhanced CT not supported ...")``.
* Declared sizes are trusted by no decoder here: Rows/Columns above
  :data:`~inference.volume_checks.MAX_MATRIX` or more than
  :data:`~inference.volume_checks.MAX_VOXELS` voxels in all are rejected
  with a ``VolumeError`` before any array is allocated or frame decoded.
* HU = stored value x RescaleSlope + RescaleIntercept per slice (PS3.3
  C.11.1.1.2), or the Modality LUT Sequence through
  :func:`pydicom.pixels.apply_modality_lut` where one is present. The array
  is ``int16`` when every slice has slope 1 and an integer intercept and the
  values fit, ``float32`` otherwise, so a 300 x 512 x 512 series costs
  150 MB (int16) or 300 MB (float32) beside its raw pixel bytes. Slices are
  decoded one at a time and pydicom's ``pixel_array`` cache is not filled.
* Padding: pixels equal to PixelPaddingValue (or inside the range it forms
  with PixelPaddingRangeLimit, PS3.3 C.7.5.1.1.2) are set to
  :attr:`CTVolume.padding_value`: the padding value's own HU when that is at
  most -1024 HU (scanners write -2000 or -3024; preprocessing clips them),
  otherwise :data:`PADDING_HU` so that padding never looks like tissue.
  Without PixelPaddingValue nothing is changed and ``padding_value`` is
  ``None``.
"""
from __future__ import annotations

import logging
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from inference.errors import SeriesNotVolumetricError, VolumeError
from inference.geometry import Geometry
from inference.volume_checks import (
    check_decodable,
    check_identity,
    check_image_format,
    check_stack,
    uid_of,
)

LOGGER = logging.getLogger(__name__)

__all__ = [
    "DICOM_READ_ERRORS",
    "CTVolume",
    "build_volume",
    "read_series",
    "decode_frame",
    "PADDING_HU",
    "DEFAULT_SPACING_TOLERANCE",
    "DEFAULT_ORIENTATION_TOLERANCE",
]

#: What ``pydicom.dcmread`` raises on a file that is not readable DICOM
#: (missing, truncated, garbled): ``except DICOM_READ_ERRORS`` catches it.
DICOM_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    InvalidDicomError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    struct.error,
    zlib.error,  # a file meta that claims Deflated for data that is not
    NotImplementedError,  # an unknown VR in an element read at once (SpecificCharacterSet)
    BytesLengthException,  # a value whose length is no multiple of its VR's size
)
#: HU written into padding pixels whose own HU would be above -1024.
PADDING_HU = -3024
#: Default largest deviation of a slice from the regular grid, as a fraction
#: of the slice spacing (1 %, highdicom's default relative tolerance).
#: Example: ``build_volume(datasets, spacing_tolerance=0.05)``.
DEFAULT_SPACING_TOLERANCE = 0.01
#: Default largest difference between direction cosines of two images, and
#: largest in-plane drift per mm of stack (about 0.06 degrees of tilt).
DEFAULT_ORIENTATION_TOLERANCE = 1e-3

_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class CTVolume:
    """HU voxels of one CT series and where they sit in patient space.

    Attributes
    ----------
    hu: numpy.ndarray
        ``[k, i, j]`` Hounsfield units, ``int16`` or ``float32``, shape
        ``geometry.shape``.
    geometry: Geometry
        Placement of the array (LPS mm; ``slice_direction`` = row x column).
    datasets: tuple[pydicom.dataset.Dataset, ...]
        The source datasets (the same objects) in ``k`` order.
    series_instance_uid: str
        The series' UID.
    padding_value: float | None
        HU of padding pixels, or ``None`` when the series declares no
        PixelPaddingValue.
    """

    hu: np.ndarray
    geometry: Geometry
    datasets: tuple[Dataset, ...]
    series_instance_uid: str
    padding_value: float | None = None

    def __post_init__(self) -> None:
        if tuple(self.hu.shape) != self.geometry.shape:
            raise ValueError(
                f'Argument "hu" has shape {self.hu.shape}, the geometry says '
                f"{self.geometry.shape}."
            )
        if len(self.datasets) != self.geometry.shape[0]:
            raise ValueError(
                f'Argument "datasets" has {len(self.datasets)} items for '
                f"{self.geometry.shape[0]} slices."
            )

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """SOP Instance UIDs in ``k`` order."""
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)


# ----------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------
def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"
                )
            )
        else:
            files.append(path)
    return files


def read_series(paths: Iterable[str | Path]) -> list[Dataset]:
    """Read DICOM files, tolerating a missing preamble or file meta.

    Parameters
    ----------
    paths: Iterable[str | pathlib.Path]
        Files; a directory stands for the files directly inside it (sorted by
        name, hidden files and ``DICOMDIR`` skipped).

    Returns
    -------
    list[pydicom.dataset.Dataset]
        One dataset per file, in the order given.

    Raises
    ------
    VolumeError
        If a file cannot be read or is not a DICOM image; the message names
        the file (its name only, never its folders, which may name the
        patient) and the reason.
    """
    datasets: list[Dataset] = []
    for path in _expand(paths):
        try:
            dataset = pydicom.dcmread(path, force=True)
        except DICOM_READ_ERRORS as exc:
            raise VolumeError(
                f"cannot read DICOM file {path.name}: {type(exc).__name__}"
            ) from exc
        if "SOPClassUID" not in dataset and "PixelData" not in dataset:
            raise VolumeError(f"file {path.name} is not a DICOM image")
        datasets.append(dataset)
    if not datasets:
        raise VolumeError("no DICOM files to read")
    return datasets


# ----------------------------------------------------------------------
# Pixel data
# ----------------------------------------------------------------------
def _transfer_syntax(dataset: Dataset) -> UID:
    meta = getattr(dataset, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else ExplicitVRLittleEndian


def decode_frame(dataset: Dataset, series_uid: str = "", index: int = 0) -> np.ndarray:
    """Stored values of a single-frame image, without filling pydicom's cache.

    Parameters
    ----------
    dataset: pydicom.dataset.Dataset
        A single-frame greyscale image.
    series_uid: str, optional
        For messages.
    index: int, optional
        The image's position in the caller's list (for messages when it has
        no SOP Instance UID).

    Returns
    -------
    numpy.ndarray
        ``(Rows, Columns)`` array of stored values (signed when
        PixelRepresentation is 1).

    Raises
    ------
    VolumeError
        If native pixel data has a length that disagrees with Rows, Columns
        and BitsAllocated, or compressed pixel data cannot be decoded (the
        message names the transfer syntax).
    """
    ref = uid_of(dataset, index)
    where = f"image {ref}" + (f" of series {series_uid}" if series_uid else "")
    syntax = _transfer_syntax(dataset)
    if not syntax.is_transfer_syntax:
        raise VolumeError(f"{where} has an unknown transfer syntax {syntax}")
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    bits = int(dataset.BitsAllocated)
    if not syntax.is_compressed:
        if bits not in (8, 16, 32):
            raise VolumeError(f"{where} has BitsAllocated {bits}; CT needs 8, 16 or 32")
        expected = rows * columns * bits // 8
        actual = len(dataset.PixelData or b"")
        if actual not in (expected, expected + 1):
            raise VolumeError(
                f"{where}: PixelData has {actual} bytes but Rows {rows} x Columns "
                f"{columns} x BitsAllocated {bits} need {expected}"
            )
    try:
        decoder = get_decoder(syntax)
        array, _ = decoder.as_array(dataset, index=None)
    except Exception as exc:  # decoder plugins raise many types; all mean "cannot decode"
        raise VolumeError(
            f"cannot decode pixel data of {where} ({syntax.name}): {exc}"
        ) from exc
    if array.shape != (rows, columns):
        raise VolumeError(
            f"{where}: decoded pixel data has shape {array.shape}, Rows/Columns say "
            f"{(rows, columns)}"
        )
    return array


def _rescale(dataset: Dataset) -> tuple[float, float]:
    slope = dataset.get("RescaleSlope")
    intercept = dataset.get("RescaleIntercept")
    try:
        values = (
            1.0 if slope in (None, "") else float(slope),
            0.0 if intercept in (None, "") else float(intercept),
        )
    except (TypeError, ValueError) as exc:
        raise VolumeError(
            f"image {uid_of(dataset, 0)} has an unusable RescaleSlope/RescaleIntercept"
        ) from exc
    if not all(math.isfinite(v) for v in values) or values[0] == 0.0:
        raise VolumeError(
            f"image {uid_of(dataset, 0)} has RescaleSlope {values[0]} / RescaleIntercept "
            f"{values[1]}; HU cannot be computed"
        )
    return values


def _padding_range(dataset: Dataset) -> tuple[int, int] | None:
    value = dataset.get("PixelPaddingValue")
    if value is None:
        return None
    limit = dataset.get("PixelPaddingRangeLimit", value)
    bits = int(dataset.BitsAllocated)
    signed = int(dataset.PixelRepresentation) == 1

    def as_stored(raw: object) -> int:
        try:
            stored = int(raw)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            raise VolumeError(
                f"image {uid_of(dataset, 0)} has no usable PixelPaddingValue/"
                "PixelPaddingRangeLimit (expected one integer each)"
            ) from None
        if signed and stored >= 2 ** (bits - 1):
            stored -= 2**bits
        return stored

    low, high = sorted((as_stored(value), as_stored(limit)))
    return low, high


# ----------------------------------------------------------------------
# The volume
# ----------------------------------------------------------------------
def build_volume(
    datasets: Sequence[Dataset],
    *,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
    orientation_tolerance: float = DEFAULT_ORIENTATION_TOLERANCE,
) -> CTVolume:
    """Build the HU volume of one single-frame CT series.

    Parameters
    ----------
    datasets: Sequence[pydicom.dataset.Dataset]
        All images of the series, in any order, with pixel data.
    spacing_tolerance: float, optional
        Largest deviation of a slice position from the regular grid, as a
        fraction of the slice spacing (default 0.01; floor 0.01 mm).
    orientation_tolerance: float, optional
        Largest difference between the direction cosines of two images, and
        largest in-plane drift per mm along the normal (default 1e-3).

    Returns
    -------
    CTVolume

    Raises
    ------
    TypeError
        If ``datasets`` holds something other than pydicom datasets.
    ValueError
        If a tolerance is not a positive number.
    SeriesNotVolumetricError
        If the images are not one regular stack of parallel slices (several
        series, frames of reference, orientations, matrix sizes or pixel
        spacings; duplicate positions; missing slices; gantry tilt; a single
        image).
    VolumeError
        If identifiers, geometry attributes or pixel data are missing or
        unusable, pixel data cannot be decoded, the images are Enhanced
        (multi-frame) CT, or the declared size exceeds
        :data:`inference.volume_checks.MAX_MATRIX` /
        :data:`~inference.volume_checks.MAX_VOXELS` (checked before any
        array is allocated).
    """
    for name, value in (
        ("spacing_tolerance", spacing_tolerance),
        ("orientation_tolerance", orientation_tolerance),
    ):
        if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            raise ValueError(f'Argument "{name}" should be a positive number.')
    datasets = list(datasets)
    if not all(isinstance(ds, Dataset) for ds in datasets):
        raise TypeError('Argument "datasets" should hold pydicom Dataset objects.')
    if not datasets:
        raise VolumeError("no images: a volume needs at least two slices")
    check_decodable(datasets)
    series_uid, _ = check_identity(datasets)
    rows, columns = check_image_format(datasets, series_uid)
    if len(datasets) < 2:
        raise SeriesNotVolumetricError(
            f"series {series_uid} has a single image; a volume needs at least two slices"
        )
    stack = check_stack(datasets, series_uid, spacing_tolerance, orientation_tolerance)
    ordered = tuple(datasets[i] for i in stack.order)
    try:
        geometry = Geometry(
            shape=(len(ordered), rows, columns),
            spacing=(stack.slice_spacing, *stack.pixel_spacing),
            origin=tuple(stack.origin),
            row_direction=tuple(stack.row_direction),
            column_direction=tuple(stack.column_direction),
            slice_direction=tuple(stack.slice_direction),
        )
    except ValueError as exc:
        raise SeriesNotVolumetricError(f"series {series_uid}: {exc}") from exc

    hu, padding_value = _to_hu(ordered, geometry.shape, series_uid)
    LOGGER.info(
        "Volume of series %s: %d slices of %dx%d, spacing %.3f/%.3f/%.3f mm, %s HU",
        series_uid,
        geometry.shape[0],
        rows,
        columns,
        *geometry.spacing,
        hu.dtype,
    )
    return CTVolume(
        hu=hu,
        geometry=geometry,
        datasets=ordered,
        series_instance_uid=series_uid,
        padding_value=padding_value,
    )


def _to_hu(
    ordered: Sequence[Dataset], shape: tuple[int, int, int], series_uid: str
) -> tuple[np.ndarray, float | None]:
    """Decode and rescale every slice into one preallocated array."""
    rescales = [_rescale(ds) for ds in ordered]
    has_lut = any("ModalityLUTSequence" in ds for ds in ordered)
    integer = not has_lut and all(
        slope == 1.0 and float(intercept).is_integer() for slope, intercept in rescales
    )
    missing = sum(1 for ds in ordered if "RescaleSlope" not in ds or "RescaleIntercept" not in ds)
    if missing:
        LOGGER.warning(
            "Series %s: %d images lack RescaleSlope/RescaleIntercept; using 1 and 0",
            series_uid,
            missing,
        )
    padding_ranges = [_padding_range(ds) for ds in ordered]
    padding_value: float | None = None
    if any(r is not None for r in padding_ranges):
        mapped = [
            r[0] * slope + intercept
            for r, (slope, intercept) in zip(padding_ranges, rescales)
            if r is not None
        ]
        lowest = float(min(mapped))
        padding_value = lowest if lowest <= -1024.0 else float(PADDING_HU)
        if padding_value != lowest:
            LOGGER.info(
                "Series %s: padding value maps to %.0f HU; padding pixels set to %d HU",
                series_uid,
                lowest,
                PADDING_HU,
            )
        if not padding_value.is_integer():
            integer = False

    out: np.ndarray = np.empty(shape, dtype=np.int16 if integer else np.float32)
    for k, ds in enumerate(ordered):
        stored = decode_frame(ds, series_uid, k)
        pad = padding_ranges[k]
        pad_mask = None if pad is None else (stored >= pad[0]) & (stored <= pad[1])
        slope, intercept = rescales[k]
        plane: np.ndarray
        if "ModalityLUTSequence" in ds:
            plane = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
        elif out.dtype == np.int16:
            plane = stored.astype(np.int32) + int(intercept)
        else:
            plane = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
        if pad_mask is not None and padding_value is not None:
            plane[pad_mask] = padding_value
        if out.dtype == np.int16 and (
            int(plane.min()) < _INT16.min or int(plane.max()) > _INT16.max
        ):
            LOGGER.info("Series %s: HU exceed int16; the volume is float32", series_uid)
            out = out.astype(np.float32)
        out[k] = plane
    return out, padding_value
