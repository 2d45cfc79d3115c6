"""A corpus of malformed and awkward DICOM input for the bad-input tests.

Every builder returns what a peer would send: pydicom datasets (sent as they
are by a pynetdicom SCU) or Part 10 files whose data set bytes are written
raw (:func:`raw_file`), to be sent with pynetdicom's
``STORE_SEND_CHUNKED_DATASET`` so that the bytes reach the node unchanged,
truncation and contradictions included. Nothing here talks to the network;
``tests/test_bad_input.py`` sends the corpus to a node and checks the outcome.

The series are small (16 x 16 or 32 x 32 pixels, 5 mm slices) so that a
processed series costs the tiny test model well under a second.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedCTImageStorage, RLELossless, generate_uid

from tests.dicom_fixtures import encode_dataset, make_ct_dataset, write_part10_raw

__all__ = [
    "JAPANESE_NAME",
    "SLICE_MM",
    "UTF8_NAME",
    "enhanced_ct",
    "gantry_tilted",
    "huge_encapsulated_series",
    "interleave",
    "mislabelled_utf8",
    "offset_of",
    "raw_file",
    "series",
    "set_unchecked",
    "truncate",
    "with_charset",
]

#: Slice spacing and thickness of the corpus series (mm).
SLICE_MM = 5.0
#: A Person Name in UTF-8 (ISO_IR 192) with Latin, Greek and CJK characters.
UTF8_NAME = "Müller^Jörg=Μυλλερ^Γιοργκ=宮本^茂"
#: The PS3.5 H.3.1 example name: ISO 2022 IR 87 (JIS X 0208) ideographic and
#: phonetic groups after a single-byte alphabetic group.
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def set_unchecked(ds: Dataset, tag: int, value: str, vr: str = "UI") -> None:
    """Set an element without pydicom's value validation (which would log the value).

    Parameters
    ----------
    ds: pydicom.Dataset
        The data set to change.
    tag: int
        The element's tag.
    value: str
        Any text, valid for the VR or not.
    vr: str
        Value Representation; default ``"UI"``.
    """
    ds[tag] = DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)


def series(
    count: int,
    *,
    rows: int = 16,
    columns: int = 16,
    thickness: float = SLICE_MM,
    study_instance_uid: str | None = None,
    patient_name: str = "Test^Synthetic",
) -> list[Dataset]:
    """`count` axial CT slices of one new series, `thickness` mm apart.

    Parameters
    ----------
    count: int
        Number of slices (Instance Numbers 1..count).
    rows, columns: int
        Matrix size.
    thickness: float
        Slice spacing and thickness in mm.
    study_instance_uid: str | None
        Study UID; generated when ``None``.
    patient_name: str
        Patient's Name (0010,0010).

    Returns
    -------
    list[pydicom.Dataset]
        CT Image Storage datasets with ``file_meta``, in slice order.
    """
    study = study_instance_uid or generate_uid()
    series_uid, frame = generate_uid(), generate_uid()
    out = []
    for number in range(1, count + 1):
        ds = make_ct_dataset(
            rows=rows,
            columns=columns,
            instance_number=number,
            slice_thickness=thickness,
            study_instance_uid=study,
            series_instance_uid=series_uid,
            frame_of_reference_uid=frame,
            seed=number,
        )
        ds.PatientName = patient_name
        out.append(ds)
    return out


def raw_file(path: Path, ds: Dataset, dataset_bytes: bytes | None = None) -> Path:
    """Write `ds` (or the given data set bytes) as a Part 10 file without checks.

    The file meta takes the SOP Class/Instance UID and transfer syntax of
    ``ds.file_meta``; pynetdicom sends such a file with those as the C-STORE
    command's Affected SOP Class/Instance UID when
    ``STORE_SEND_CHUNKED_DATASET`` is set.

    Parameters
    ----------
    path: pathlib.Path
        The file to write.
    ds: pydicom.Dataset
        The data set (with ``file_meta``).
    dataset_bytes: bytes | None
        The encoded data set to write instead of ``ds`` encoded in Explicit
        VR Little Endian.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    return write_part10_raw(
        path,
        encode_dataset(ds) if dataset_bytes is None else dataset_bytes,
        sop_class_uid=str(ds.file_meta.MediaStorageSOPClassUID),
        sop_instance_uid=str(ds.file_meta.MediaStorageSOPInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
    )


def truncate(ds: Dataset, keep: int | None = None, *, cut: int | None = None) -> bytes:
    """The data set of `ds` encoded in Explicit VR Little Endian, truncated.

    Parameters
    ----------
    ds: pydicom.Dataset
        The data set.
    keep: int | None
        Keep this many bytes from the start.
    cut: int | None
        Or drop this many bytes from the end.

    Returns
    -------
    bytes
        The truncated encoding.
    """
    encoded = encode_dataset(ds)
    if keep is not None:
        return encoded[:keep]
    if cut is None:
        raise ValueError('Give "keep" or "cut".')
    return encoded[:-cut]


def offset_of(ds: Dataset, keyword: str) -> int:
    """Byte offset of an element's value in the Explicit VR LE encoding of `ds`."""
    encoded = encode_dataset(ds)
    tag = ds.data_element(keyword).tag  # type: ignore[union-attr]
    marker = tag.group.to_bytes(2, "little") + tag.element.to_bytes(2, "little")
    start = encoded.index(marker + ds.data_element(keyword).VR.encode())  # type: ignore[union-attr]
    return start + 8


def with_charset(datasets: Sequence[Dataset], charset: str | list[str], name: str) -> None:
    """Give each dataset a Specific Character Set and a non-ASCII Patient's Name (in place).

    Parameters
    ----------
    datasets: Sequence[pydicom.Dataset]
        The series.
    charset: str | list[str]
        Specific Character Set (0008,0005), e.g. ``"ISO_IR 192"`` or
        ``["", "ISO 2022 IR 87"]``.
    name: str
        Patient's Name; pydicom encodes it in `charset` when the data set is
        written.
    """
    for ds in datasets:
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.SeriesDescription = "thorax " + name.split("=")[-1]


def gantry_tilted(datasets: Sequence[Dataset], degrees: float) -> list[Dataset]:
    """Copies whose images are tilted about the x axis while the table moves along z.

    Image Orientation (Patient) is ``[1, 0, 0, 0, cos, sin]`` for every image
    and Image Position (Patient) keeps moving along z, so the slices are not
    stacked along their normal: how a tilted gantry looks in DICOM.

    Parameters
    ----------
    datasets: Sequence[pydicom.Dataset]
        An axial series (not changed).
    degrees: float
        Gantry tilt.

    Returns
    -------
    list[pydicom.Dataset]
        New datasets of one new series (same UIDs otherwise regenerated).
    """
    angle = np.deg2rad(degrees)
    series_uid = generate_uid()
    out = []
    for ds in datasets:
        tilted = copy.deepcopy(ds)
        tilted.SeriesInstanceUID = series_uid
        tilted.SOPInstanceUID = generate_uid()
        tilted.file_meta.MediaStorageSOPInstanceUID = tilted.SOPInstanceUID
        tilted.ImageOrientationPatient = [
            1.0, 0.0, 0.0, 0.0, round(float(np.cos(angle)), 6), round(float(np.sin(angle)), 6)
        ]
        tilted.GantryDetectorTilt = f"{degrees:g}"
        out.append(tilted)
    return out


def huge_encapsulated_series(count: int, size: int = 65535) -> list[Dataset]:
    """A series whose images declare `size` x `size` pixels in RLE Lossless.

    The pixel data is a few bytes of RLE: nothing at reception can tell that
    the declared matrix is absurd, only a limit before decoding can.

    Parameters
    ----------
    count: int
        Number of slices.
    size: int
        Rows and Columns.

    Returns
    -------
    list[pydicom.Dataset]
        Datasets with ``file_meta`` in RLE Lossless.
    """
    out = series(count)
    # One RLE segment: a header of 64 bytes and a replicate run of 128 zeros.
    segment = bytes([0x81, 0x00])
    header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + b"\x00" * 56
    for ds in out:
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = encapsulate([header + segment])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = RLELossless
    return out


def enhanced_ct(frames: int = 12, rows: int = 16, columns: int = 16) -> Dataset:
    """A small multi-frame Enhanced CT Image Storage instance.

    Shared and per-frame functional groups carry the pixel measures, the
    plane orientation and one plane position per frame (5 mm apart), as a
    scanner that writes Enhanced CT would.

    Parameters
    ----------
    frames: int
        Number of frames.
    rows, columns: int
        Matrix size.

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` (Explicit VR Little Endian).
    """
    base = series(1, rows=rows, columns=columns)[0]
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = copy.deepcopy(base.file_meta)
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    for keyword in (
        "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "Modality",
        "Manufacturer", "ReferringPhysicianName", "SeriesDescription", "PatientName",
        "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
        "SeriesInstanceUID", "StudyID", "SeriesNumber", "FrameOfReferenceUID",
        "PositionReferenceIndicator", "SamplesPerPixel", "PhotometricInterpretation",
        "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    ):
        setattr(ds, keyword, base.get(keyword))
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    ds.NumberOfFrames = frames
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.7]
    measures.SliceThickness = SLICE_MM
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    rescale = Dataset()
    rescale.RescaleIntercept = "-1024"
    rescale.RescaleSlope = "1"
    rescale.RescaleType = "HU"
    shared.PixelValueTransformationSequence = DicomSequence([rescale])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for index in range(frames):
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-5.6, -5.6, index * SLICE_MM]
        group.PlanePositionSequence = DicomSequence([position])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    pixels = np.full((frames, rows, columns), 1024, dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def mislabelled_utf8(ds: Dataset, name: str) -> bytes:
    """`ds` encoded with a Latin-1 Patient's Name but Specific Character Set ISO_IR 192.

    A common fault of real archives: the bytes of the name are not UTF-8
    although the data set says so.

    Parameters
    ----------
    ds: pydicom.Dataset
        The data set (its Specific Character Set and name are changed).
    name: str
        The name, written in ISO 8859-1.

    Returns
    -------
    bytes
        The encoded data set (Explicit VR Little Endian).
    """
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = name
    encoded = encode_dataset(ds)
    if name.encode("latin-1") not in encoded:
        raise ValueError("the name was not written in Latin-1")
    return encoded.replace(b"ISO_IR 100", b"ISO_IR 192", 1)


def interleave(*groups: Sequence[Dataset]) -> list[Dataset]:
    """Round-robin the instances of several series into one sending order."""
    out: list[Dataset] = []
    for index in range(max(len(group) for group in groups)):
        out.extend(group[index] for group in groups if index < len(group))
    return out
