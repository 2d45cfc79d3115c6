"""Write a phantom as a DICOM CT series (CT Image Storage, one file a slice).

The series carries complete Patient, General Study, General Series, Frame
of Reference, General Equipment, General Acquisition, General Image, Image
Plane, Image Pixel, CT Image, VOI LUT and SOP Common modules (PS3.3 A.3)
and validates without errors with ``dciodvfy``. Names are obviously
synthetic (``PHANTOM^COVID19^0007``); no real person is described.

Pixels are stored signed (``PixelRepresentation`` 1, 16 bits) with
``RescaleSlope`` 1 and the spec's ``RescaleIntercept`` (-1024 or 0), so
``HU = stored + intercept``. Voxels outside the reconstruction circle hold
``PixelPaddingValue`` (the phantom's padding value in stored units), as
scanners write it.
"""
from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from inference.phantom.spec import normalize_label

if TYPE_CHECKING:  # pragma: no cover
    from inference.phantom.generator import Phantom

LOGGER = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_UID_ROOT",
    "TRANSFER_SYNTAXES",
    "UID_ROOT_PATTERN",
    "default_patient_name",
    "read_series_hu",
    "write_dicom_series",
]

#: UID root used when none is given (pydicom's root for generated UIDs).
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."

#: Transfer syntaxes the writer can produce (all lossless).
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
#: A UID root: dotted numeric components ending with ".".
UID_ROOT_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
_IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.8.498.1")


def default_patient_name(label: str, seed: int) -> str:
    """The synthetic Patient's Name of a phantom, e.g. ``PHANTOM^COVID19^0007``.

    Parameters
    ----------
    label: str
        Class key or short name.
    seed: int
        The phantom's seed.

    Returns
    -------
    str
    """
    return f"PHANTOM^{normalize_label(label).upper()}^{seed:04d}"


def _check_uid(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64 or not _UID.match(value):
        raise ValueError(f'Argument "{name}" should be a valid DICOM UID; got "{value}".')
    return value


def _uid(root: str, seed: str | None, *parts: object) -> UID:
    if seed is None:
        return generate_uid(prefix=root)
    return generate_uid(prefix=root, entropy_srcs=[seed, *map(str, parts)])


def _format_ds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _template(phantom: Phantom, *, patient_name: str, patient_id: str, study_uid: str,
              series_uid: str, frame_uid: str, series_number: int, series_description: str,
              when: datetime.datetime, intercept: float) -> Dataset:
    spec = phantom.spec
    geometry = phantom.geometry
    date = when.strftime("%Y%m%d")
    time = when.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.AcquisitionDate = date
    ds.ContentDate = date
    ds.StudyTime = time
    ds.SeriesTime = time
    ds.AcquisitionTime = time
    ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "deepsc-node"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic chest CT phantom"
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "deepsc-node synthetic phantom"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _format_ds(geometry.spacing[0])
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "deepsc-node phantom 1"
    ds.ReconstructionDiameter = _format_ds(spec.field_of_view)
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"PH{spec.seed % 10**14:d}"[:16]
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_format_ds(v) for v in geometry.image_orientation]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageComments = (
        f"Synthetic phantom seed {spec.seed}, class {phantom.label}. "
        "Research use only, not for diagnosis."
    )
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geometry.shape[1]
    ds.Columns = geometry.shape[2]
    ds.PixelSpacing = [_format_ds(geometry.spacing[1]), _format_ds(geometry.spacing[2])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.add_new(0x00280120, "SS", int(phantom.padding_value - intercept))  # PixelPaddingValue
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = ["1500", "400"]
    ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    ds.RescaleIntercept = _format_ds(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"
    return ds


def write_dicom_series(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    uid_root: str = DEFAULT_UID_ROOT,
    uid_seed: str | None = None,
    transfer_syntax: str | UID = ExplicitVRLittleEndian,
    patient_name: str | None = None,
    patient_id: str | None = None,
    series_number: int = 1,
    series_description: str | None = None,
    acquisition_datetime: datetime.datetime | None = None,
    rescale_intercept: float | None = None,
    file_prefix: str = "CT",
) -> list[Path]:
    """Write ``phantom`` as a CT Image Storage series, one file per slice.

    Instance Number 1 is the most superior slice (head first, as scanners
    number an axial series); files are ``<prefix><instance:04d>.dcm``.

    Parameters
    ----------
    phantom: Phantom
        What to write.
    out_dir: str | pathlib.Path
        Folder (created if missing).
    study_instance_uid, series_instance_uid, frame_of_reference_uid: str | None
        UIDs to use; new ones are generated under ``uid_root`` otherwise.
    uid_root: str
        Root of generated UIDs, ending with ``"."``.
    uid_seed: str | None
        If given, generated UIDs are derived from it (same seed, same UIDs);
        otherwise they are random.
    transfer_syntax: str | pydicom.uid.UID
        One of :data:`TRANSFER_SYNTAXES` (Explicit VR Little Endian by
        default).
    patient_name: str | None
        Defaults to :func:`default_patient_name`.
    patient_id: str | None
        Defaults to ``"PHANTOM-<seed>"``.
    series_number: int
        Series Number (positive).
    series_description: str | None
        Defaults to a description of the grid.
    acquisition_datetime: datetime.datetime | None
        Study/series/content date and time; defaults to 2020-03-01 12:00.
    rescale_intercept: float | None
        -1024 or 0; defaults to ``phantom.spec.rescale_intercept``.
    file_prefix: str
        Start of each file name (letters and digits).

    Returns
    -------
    list[pathlib.Path]
        Paths written, in Instance Number order.

    Raises
    ------
    ValueError
        If a UID, the UID root, the transfer syntax, the series number, the
        intercept or the prefix is invalid.
    """
    from pydicom.pixels import get_encoder

    syntax = UID(str(transfer_syntax))
    if syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f'Argument "transfer_syntax" should be one of '
            f'{", ".join(uid.name for uid in TRANSFER_SYNTAXES)}; got "{transfer_syntax}".'
        )
    if syntax.is_compressed and not get_encoder(syntax).is_available:
        raise ValueError(
            f'Argument "transfer_syntax": no encoder for {syntax.name} is installed.')
    if not isinstance(uid_root, str) or not UID_ROOT_PATTERN.match(uid_root) or len(uid_root) > 40:
        raise ValueError('Argument "uid_root" should be dotted digits ending with "." '
                         '(at most 40 characters).')
    for name, value in (("study_instance_uid", study_instance_uid),
                        ("series_instance_uid", series_instance_uid),
                        ("frame_of_reference_uid", frame_of_reference_uid)):
        _check_uid(name, value)
    if isinstance(series_number, bool) or not isinstance(series_number, int) \
            or not 1 <= series_number <= 2**31 - 1:
        raise ValueError('Argument "series_number" should be a positive integer.')
    if not re.fullmatch(r"[A-Za-z0-9_-]{0,16}", file_prefix):
        raise ValueError('Argument "file_prefix" should be up to 16 letters, digits, "_" or "-".')
    intercept = float(phantom.spec.rescale_intercept if rescale_intercept is None
                      else rescale_intercept)
    if intercept not in (-1024.0, 0.0):
        raise ValueError('Argument "rescale_intercept" should be -1024 or 0.')

    spec = phantom.spec
    geometry = phantom.geometry
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    when = acquisition_datetime or datetime.datetime(2020, 3, 1, 12, 0, 0)
    study_uid = study_instance_uid or _uid(uid_root, uid_seed, "study")
    series_uid = series_instance_uid or _uid(uid_root, uid_seed, "series")
    frame_uid = frame_of_reference_uid or _uid(uid_root, uid_seed, "frame")
    description = series_description or (
        f"SYNTHETIC PHANTOM {geometry.spacing[0]:g}mm {geometry.shape[1]}x{geometry.shape[2]}"
    )[:64]
    ds = _template(
        phantom,
        patient_name=patient_name or default_patient_name(phantom.label, spec.seed),
        patient_id=patient_id or f"PHANTOM-{spec.seed}",
        study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
        series_number=series_number, series_description=description, when=when,
        intercept=intercept,
    )
    stored = phantom.hu
    if intercept != 0.0:
        stored = (phantom.hu.astype(np.int32) - int(intercept)).astype(np.int16)
    n = geometry.shape[0]
    paths: list[Path] = []
    for instance in range(1, n + 1):
        k = n - instance  # instance 1 is the most superior slice
        position = geometry.slice_position(k)
        sop_uid = _uid(uid_root, uid_seed, "instance", instance)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax.is_compressed else syntax
        meta.ImplementationClassUID = _IMPLEMENTATION_UID
        meta.ImplementationVersionName = "DEEPSC_PHANTOM"
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [_format_ds(v) for v in position]
        ds.SliceLocation = _format_ds(position[2])
        pixels = np.ascontiguousarray(stored[k])
        if syntax.is_compressed:
            if "PixelData" in ds:
                del ds.PixelData
            ds.compress(syntax, pixels, generate_instance_uid=False)
        else:
            ds.PixelData = pixels.astype("<i2").tobytes()
            ds["PixelData"].VR = "OW"
        path = out / f"{file_prefix}{instance:04d}.dcm"
        ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True,
                   enforce_file_format=True)
        paths.append(path)
    LOGGER.info("wrote %d CT instances of series %s to %s", n, series_uid, out)
    return paths


def read_series_hu(paths: Sequence[str | Path]) -> np.ndarray:
    """Read a series written by :func:`write_dicom_series` back into HU.

    A convenience for tests and scripts: slices are sorted by their position
    along the slice normal, ascending (the phantom's own order).

    Parameters
    ----------
    paths: Sequence[str | pathlib.Path]
        The files.

    Returns
    -------
    numpy.ndarray
        int16 ``[slice, row, column]`` HU (padding included).
    """
    import pydicom

    slices = [pydicom.dcmread(p) for p in paths]
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([
        (d.pixel_array.astype(np.int32) * int(float(d.RescaleSlope))
         + int(float(d.RescaleIntercept))).astype(np.int16)
        for d in slices
    ])
