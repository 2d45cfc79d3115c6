"""Checks and defaults shared by the SEG and SR encoders.

"Strict when encoding": a result is only encoded against source images whose
geometry it was computed on, and only when the result agrees with the model
manifest. Every check raises before any DICOM object is built.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from highdicom import SpecificCharacterSetValues
from pydicom.dataset import Dataset

from inference.geometry import Geometry
from inference.manifest import Manifest
from inference.result import InferenceResult
from pacs_node.results.uids import is_valid_uid

LOGGER = logging.getLogger(__name__)

__all__ = [
    "SEG_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "SEG_SERIES_DESCRIPTION",
    "SR_SERIES_DESCRIPTION",
    "MANUFACTURER",
    "DEVICE_NAME",
    "POSITION_TOLERANCE_MM",
    "PROBABILITY_TOLERANCE",
    "phi_safe_warnings",
    "software_version",
    "check_series_number",
    "check_long_string",
    "check_source_datasets",
    "check_result",
    "resolve_institution_name",
    "result_character_set",
]

#: Default Series Number of the SEG series (high, so that it sorts after the
#: scanner's series in a viewer's series list).
SEG_SERIES_NUMBER = 9001
#: Default Series Number of the SR series.
SR_SERIES_NUMBER = 9002
#: Series Description of the SEG, as a radiologist reads it in the PACS.
SEG_SERIES_DESCRIPTION = "AI lesions (research)"
#: Series Description of the SR.
SR_SERIES_DESCRIPTION = "AI report (research)"
#: Manufacturer (0008,0070) of the objects the node writes.
MANUFACTURER = "deepsc-node"
#: Manufacturer's Model Name (0008,1090) and device observer name.
DEVICE_NAME = "deepsc-node"
#: Smallest tolerance (mm) between a dataset's ImagePositionPatient and the
#: position of its slice in the result geometry (the tolerance used is
#: ``max(POSITION_TOLERANCE_MM, 2 % of the slice spacing)``).
POSITION_TOLERANCE_MM = 0.01
#: Largest accepted ``|sum(probabilities) - 1|``.
PROBABILITY_TOLERANCE = 1e-3
#: Specific Character Set of a result whose source declares one that highdicom
#: does not write: UTF-8 encodes any text pydicom decoded from the source.
FALLBACK_CHARACTER_SET = "ISO_IR 192"

_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE_MM = 1e-3
_UID_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")

_PERSON_NAME_WARNING = r'The string ".*" is unlikely to represent the intended person name'


@contextlib.contextmanager
def phi_safe_warnings() -> Iterator[None]:
    """Silence highdicom's person-name warning, whose message holds the name.

    highdicom warns about single-component Patient's Names ("Smith" rather
    than "Smith^") and quotes the name; with ``logging.captureWarnings()``
    that puts PHI into the logs. The name itself is copied unchanged.

    Notes
    -----
    ``warnings.catch_warnings`` swaps the process-wide filter list and is not
    thread-safe: when two threads encode at once, the narrow "ignore" filter
    may stay installed afterwards, which is harmless. An application-wide
    filter set at start-up is the complete fix.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)
        yield


def software_version() -> str:
    """Version of the installed ``deepsc-node`` distribution.

    Returns
    -------
    str
        ``importlib.metadata.version("deepsc-node")``, or ``"unknown"`` when
        the package runs from a source tree that is not installed.
    """
    try:
        return importlib.metadata.version("deepsc-node")
    except importlib.metadata.PackageNotFoundError:
        LOGGER.debug("deepsc-node is not installed; software version unknown")
        return "unknown"


def check_series_number(value: int, name: str) -> int:
    """Validate a Series Number (IS, positive, at most 2**31 - 1).

    Parameters
    ----------
    value: int
        The number.
    name: str
        Argument name for the error message.

    Returns
    -------
    int
        ``value``.

    Raises
    ------
    TypeError
        If ``value`` is not an ``int``.
    ValueError
        If it is not in ``1 .. 2**31 - 1``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f'Argument "{name}" should be an integer.')
    if not 0 < value < 2**31:
        raise ValueError(f'Argument "{name}" should be a positive integer below 2**31.')
    return value


def check_long_string(value: str, name: str) -> str:
    """Validate a value for an LO attribute (PS3.5 6.2: at most 64 characters).

    Parameters
    ----------
    value: str
        The text.
    name: str
        Argument name for the error message.

    Returns
    -------
    str
        ``value``.

    Raises
    ------
    TypeError
        If ``value`` is not a string.
    ValueError
        If it is empty, longer than 64 characters, or holds a backslash or a
        control character.
    """
    if not isinstance(value, str):
        raise TypeError(f'Argument "{name}" should be a string.')
    if not value.strip() or len(value) > 64:
        raise ValueError(f'Argument "{name}" should be 1 to 64 characters long.')
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f'Argument "{name}" should hold no backslash or control character.')
    return value


def check_source_datasets(source_datasets: Sequence[Dataset], geometry: Geometry) -> None:
    """Check that the source images are the slices of ``geometry``, in order.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        One single-frame image per slice, index ``k`` being slice ``k`` of
        ``geometry``. Pixel Data is not needed.
    geometry: inference.geometry.Geometry
        The geometry the result was computed on.

    Raises
    ------
    TypeError
        If ``source_datasets`` is not a sequence of datasets.
    ValueError
        If the number of datasets differs from the number of slices; if a
        dataset lacks a valid Study, Series, SOP Instance or Frame of
        Reference UID; if they are not one series in one frame of reference;
        if a SOP Instance UID repeats; if Rows, Columns, PixelSpacing or
        ImageOrientationPatient disagree with ``geometry``; or if an
        ImagePositionPatient is more than :data:`POSITION_TOLERANCE_MM` from
        its slice (datasets out of order, or another series).
    """
    if isinstance(source_datasets, (str, bytes, Dataset)) or not isinstance(
        source_datasets, Sequence
    ):
        raise TypeError('Argument "source_datasets" should be a sequence of pydicom Datasets.')
    if not all(isinstance(ds, Dataset) for ds in source_datasets):
        raise TypeError('Argument "source_datasets" should hold only pydicom Datasets.')
    n_slices, rows, columns = geometry.shape
    if len(source_datasets) != n_slices:
        raise ValueError(
            f'Argument "source_datasets" holds {len(source_datasets)} datasets but the '
            f"result geometry has {n_slices} slices."
        )
    for index, ds in enumerate(source_datasets):
        for keyword in _UID_ATTRIBUTES:
            if not is_valid_uid(ds.get(keyword, None)):
                raise ValueError(
                    f'Argument "source_datasets": item {index} has no valid {keyword}; '
                    "no result is written against a missing or malformed UID."
                )
        if ds.get("NumberOfFrames", 1) not in (None, "", 1):
            raise ValueError(
                f'Argument "source_datasets": item {index} is a multi-frame image; '
                "single-frame slices are expected."
            )
    first = source_datasets[0]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword)) for ds in source_datasets}
        if len(values) != 1:
            raise ValueError(
                f'Argument "source_datasets" should be one series: {keyword} takes '
                f"{len(values)} values."
            )
    if len({str(ds.SOPInstanceUID) for ds in source_datasets}) != n_slices:
        raise ValueError('Argument "source_datasets" repeats a SOP Instance UID.')

    try:
        sizes = np.array([(int(ds.Rows), int(ds.Columns)) for ds in source_datasets])
        orientations = np.array(
            [[float(v) for v in ds.ImageOrientationPatient] for ds in source_datasets]
        )
        spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in source_datasets])
        positions = np.array(
            [[float(v) for v in ds.ImagePositionPatient] for ds in source_datasets]
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(
            'Argument "source_datasets": every item needs Rows, Columns, PixelSpacing, '
            f"ImageOrientationPatient and ImagePositionPatient ({exc})."
        ) from exc
    if orientations.shape != (n_slices, 6) or spacings.shape != (n_slices, 2) or (
        positions.shape != (n_slices, 3)
    ):
        raise ValueError(
            'Argument "source_datasets": ImageOrientationPatient, PixelSpacing or '
            "ImagePositionPatient has the wrong number of values."
        )
    if np.any(sizes != (rows, columns)):
        raise ValueError(
            f'Argument "source_datasets": Rows/Columns differ from the result geometry '
            f"({rows} x {columns})."
        )
    orientation_error = np.abs(orientations - np.asarray(geometry.image_orientation))
    if np.any(orientation_error > _ORIENTATION_TOLERANCE):
        raise ValueError(
            'Argument "source_datasets": ImageOrientationPatient differs from the result '
            "geometry."
        )
    if np.any(np.abs(spacings - np.asarray(geometry.spacing[1:])) > _SPACING_TOLERANCE_MM):
        raise ValueError(
            'Argument "source_datasets": PixelSpacing differs from the result geometry.'
        )
    indices = np.zeros((n_slices, 3))
    indices[:, 0] = np.arange(n_slices)
    expected = geometry.index_to_patient(indices)
    distances = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(distances))
    # The volume builder fits a regular stack to positions that may deviate
    # by up to 1 % of the slice spacing; anything near half a slice is an
    # ordering error.
    tolerance = max(POSITION_TOLERANCE_MM, 0.02 * geometry.spacing[0])
    if distances[worst] > tolerance:
        raise ValueError(
            f'Argument "source_datasets": ImagePositionPatient of item {worst} (SOP Instance '
            f"UID {source_datasets[worst].SOPInstanceUID}) is {distances[worst]:.3f} mm from "
            f"slice {worst} of the result geometry (tolerance {tolerance:.3f} mm); "
            "the datasets must be in the volume's slice order."
        )
    LOGGER.debug(
        "source series %s: %d slices match the result geometry (max %.4f mm)",
        first.SeriesInstanceUID,
        n_slices,
        float(distances[worst]),
    )


def check_result(result: InferenceResult, manifest: Manifest) -> None:
    """Check that ``result`` is complete and was produced by ``manifest``'s model.

    Parameters
    ----------
    result: inference.result.InferenceResult
        The model's outcome on the source volume.
    manifest: inference.manifest.Manifest
        The manifest of the model that produced it.

    Raises
    ------
    TypeError
        If an argument has the wrong type, or a mask is not a numpy array of
        the contract's dtype (``bool`` lesions, ``uint8`` lungs).
    ValueError
        If a mask's shape differs from ``result.geometry.shape``, the lung
        mask holds a label other than 0, 1 or 2, the class keys differ from
        the manifest's, a probability is outside [0, 1] or they do not sum to
        1, or the model name/version differ from the manifest's.
    """
    if not isinstance(result, InferenceResult):
        raise TypeError('Argument "result" should be an inference.result.InferenceResult.')
    if not isinstance(manifest, Manifest):
        raise TypeError('Argument "manifest" should be an inference.manifest.Manifest.')
    shape = result.geometry.shape
    for name, mask, dtype in (
        ("lesion_mask", result.lesion_mask, np.bool_),
        ("lung_mask", result.lung_mask, np.uint8),
    ):
        if not isinstance(mask, np.ndarray) or mask.dtype != dtype:
            raise TypeError(
                f'Argument "result.{name}" should be a numpy array of dtype {np.dtype(dtype)}.'
            )
        if mask.shape != shape:
            raise ValueError(
                f'Argument "result.{name}" has shape {mask.shape}, not the geometry '
                f"shape {shape}."
            )
    if result.lung_mask.size and int(result.lung_mask.max()) > 2:
        raise ValueError('Argument "result.lung_mask" should hold only 0, 1 (right), 2 (left).')
    if tuple(result.class_keys) != manifest.class_keys:
        raise ValueError(
            f'Argument "result.class_keys" {tuple(result.class_keys)} differs from the '
            f"manifest's classes {manifest.class_keys}."
        )
    probabilities = np.asarray(result.class_probabilities, dtype=np.float64)
    if probabilities.shape != (len(manifest.classes),):
        raise ValueError(
            'Argument "result.class_probabilities" should hold one value per class.'
        )
    if not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0) or np.any(
        probabilities > 1
    ):
        raise ValueError('Argument "result.class_probabilities" should be numbers in [0, 1].')
    if abs(float(probabilities.sum()) - 1.0) > PROBABILITY_TOLERANCE:
        raise ValueError('Argument "result.class_probabilities" should sum to 1.')
    if (result.model_name, result.model_version) != (manifest.model_name, manifest.model_version):
        raise ValueError(
            f'Argument "result" comes from model {result.model_name!r} '
            f"{result.model_version!r}, not from the manifest's {manifest.model_name!r} "
            f"{manifest.model_version!r}."
        )


def resolve_institution_name(
    source_datasets: Sequence[Dataset], override: str | None
) -> str | None:
    """Institution Name for the new objects.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        The source series (checked by :func:`check_source_datasets`).
    override: str | None
        An explicit name; ``None`` copies the source's Institution Name.

    Returns
    -------
    str | None
        ``override``, else the first source dataset's non-empty Institution
        Name, else ``None``.

    Raises
    ------
    TypeError, ValueError
        If ``override`` is not a valid LO value.
    """
    if override is not None:
        return check_long_string(override, "institution_name")
    value = source_datasets[0].get("InstitutionName", None)
    return str(value) if value else None


def result_character_set(source_datasets: Sequence[Dataset]) -> str | list[str] | None:
    """Specific Character Set (0008,0005) for a SEG or SR built from the source series.

    The result copies the patient's name and other text from the source, so
    it keeps the source's character set, in a form highdicom accepts:
    PS3.3 C.12.1.1.2 lets the first of several values be empty (the default
    repertoire, e.g. ``\\ISO 2022 IR 87``), which highdicom refuses; it is
    written as ``ISO 2022 IR 6``. A set highdicom does not know (e.g.
    ``ISO 2022 IR 149``, or a misspelt value) becomes
    :data:`FALLBACK_CHARACTER_SET` (UTF-8), which encodes any text.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        The source series; the first dataset's value is used (highdicom
        copies patient and study attributes from it).

    Returns
    -------
    str | list[str] | None
        ``None`` when the source has no (or an empty) Specific Character Set.

    Examples
    --------
    >>> ds = Dataset()
    >>> ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    >>> result_character_set([ds])
    ['ISO 2022 IR 6', 'ISO 2022 IR 87']
    """
    value = source_datasets[0].get("SpecificCharacterSet") if source_datasets else None
    if value is None:
        return None
    values = [str(v).strip() for v in ([value] if isinstance(value, str) else value)]
    values = [v for v in values if v] if len(values) == 1 else values
    if not values:
        return None
    if len(values) > 1 and values[0] == "":
        values[0] = SpecificCharacterSetValues.DEFAULT_REPERTOIRE_CODE_EXTENSIONS.value
    known = {member.value for member in SpecificCharacterSetValues}
    multi_byte = {"ISO 2022 IR 87", "ISO 2022 IR 149", "ISO 2022 IR 159"}
    if all(v in known for v in values) and (
        len(values) == 1
        or (all(v.startswith("ISO 2022") for v in values) and values[0] not in multi_byte)
    ):
        return values[0] if len(values) == 1 else values
    LOGGER.info(
        "series %s: source Specific Character Set is not one highdicom writes; "
        "results are written in %s",
        source_datasets[0].get("SeriesInstanceUID", ""),
        FALLBACK_CHARACTER_SET,
    )
    return FALLBACK_CHARACTER_SET
