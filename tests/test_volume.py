"""Volumes from DICOM: sorting, geometry, HU, padding, decoding, and refusals."""
from __future__ import annotations

import copy
import dataclasses
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from inference.errors import SeriesNotVolumetricError, VolumeError
from inference.volume import PADDING_HU, build_volume, decode_frame, read_series

#: Identifiers that must never show up in an error message.
PATIENT_NAME = "SECRET^PATIENT"
PATIENT_ID = "PID-0042-SECRET"


def make_slice(
    z: float,
    *,
    series_uid: str,
    frame_uid: str,
    rows: int = 8,
    columns: int = 10,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    x: float = -10.0,
    y: float = -20.0,
    slope: float = 1.0,
    intercept: float = -1024.0,
    stored: np.ndarray | None = None,
    signed: bool = False,
) -> Dataset:
    """One single-frame CT image at ``(x, y, z)`` (stored = 1000 + z*10 + row)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [x, y, z]
    ds.PixelSpacing = list(pixel_spacing)
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if stored is None:
        stored = 1000 + int(round(z * 10)) + np.arange(rows)[:, None] + np.zeros((1, columns), int)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def make_series(n: int = 6, spacing: float = 2.5, **kwargs: Any) -> list[Dataset]:
    series_uid, frame_uid = generate_uid(), generate_uid()
    return [
        make_slice(k * spacing, series_uid=series_uid, frame_uid=frame_uid, **kwargs)
        for k in range(n)
    ]


def _no_phi(message: str) -> None:
    assert PATIENT_NAME not in message and "SECRET" not in message
    assert PATIENT_ID not in message


# ----------------------------------------------------------------------
# The real 8 mm series
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_series(shared_data: Path) -> list[Dataset]:
    return read_series([shared_data / "ct" / "lung-pet-ct-dx-a0002"])


def test_real_series_volume_geometry_and_hu(real_series: list[Dataset]) -> None:
    volume = build_volume(real_series)
    geometry = volume.geometry
    assert geometry.shape == (30, 512, 512)
    assert volume.hu.dtype == np.int16  # slope 1, intercept -1024
    assert volume.series_instance_uid == str(real_series[0].SeriesInstanceUID)
    assert geometry.spacing == pytest.approx((8.0, 0.646484375, 0.646484375))
    first = volume.datasets[0]
    assert geometry.origin == pytest.approx([float(v) for v in first.ImagePositionPatient])
    assert geometry.image_orientation == pytest.approx(
        [float(v) for v in first.ImageOrientationPatient]
    )
    # Datasets are the same objects, in increasing position along the normal.
    assert all(any(ds is other for other in real_series) for ds in volume.datasets)
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert np.allclose(np.diff(z), 8.0)
    for k, ds in enumerate(volume.datasets):
        assert np.allclose(geometry.slice_position(k), [float(v) for v in ds.ImagePositionPatient],
                           atol=0.01)
    # HU equal pydicom's own modality LUT, slice by slice.
    for k in (0, 15, 29):
        ds = volume.datasets[k]
        expected = apply_modality_lut(ds.pixel_array, ds)
        assert np.array_equal(volume.hu[k], expected.astype(np.int16))
    # Plausible chest HU: air, lung, soft tissue and bone are all there.
    hu = volume.hu
    assert hu.min() >= -1100 and hu.max() <= 4000
    assert 0.15 < float(np.mean(hu < -900)) < 0.85
    assert float(np.mean((hu > -100) & (hu < 100))) > 0.05
    assert float(np.mean(hu > 300)) > 0.001
    assert volume.padding_value is None


def test_real_series_order_independent_of_file_order(real_series: list[Dataset]) -> None:
    reference = build_volume(real_series)
    shuffled = list(real_series)
    random.Random(3).shuffle(shuffled)
    assert [ds.SOPInstanceUID for ds in shuffled] != list(reference.sop_instance_uids)
    volume = build_volume(shuffled)
    assert volume.sop_instance_uids == reference.sop_instance_uids
    assert volume.geometry == reference.geometry
    assert np.array_equal(volume.hu, reference.hu)


# ----------------------------------------------------------------------
# Synthetic series: HU, order, padding
# ----------------------------------------------------------------------
def test_synthetic_values_sorting_and_slice_direction() -> None:
    datasets = make_series(6, 2.5)
    volume = build_volume(list(reversed(datasets)))
    assert volume.hu.dtype == np.int16
    for k in range(6):
        expected = 1000 + k * 25 + np.arange(8)[:, None] - 1024
        assert np.array_equal(volume.hu[k], np.broadcast_to(expected, (8, 10)))
    assert volume.geometry.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert volume.geometry.slice_direction == pytest.approx((0, 0, 1))
    assert volume.geometry.origin == pytest.approx((-10.0, -20.0, 0.0))


def test_normal_pointing_to_the_feet_sorts_along_the_normal() -> None:
    # Column direction -y: normal = row x column = -z; slice k goes towards the feet.
    datasets = make_series(5, 3.0, orientation=(1, 0, 0, 0, -1, 0))
    volume = build_volume(datasets)
    assert volume.geometry.slice_direction == pytest.approx((0, 0, -1))
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == [12.0, 9.0, 6.0, 3.0, 0.0]
    for k, ds in enumerate(volume.datasets):
        assert np.allclose(volume.geometry.slice_position(k), ds.ImagePositionPatient)


def test_non_integer_rescale_gives_float32_with_per_slice_values() -> None:
    datasets = make_series(4, 2.0)
    for k, ds in enumerate(datasets):
        ds.RescaleSlope = 0.5
        ds.RescaleIntercept = -1000.25 - k
    volume = build_volume(datasets)
    assert volume.hu.dtype == np.float32
    for k, ds in enumerate(volume.datasets):
        stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(8, 10)
        assert np.allclose(volume.hu[k], stored * 0.5 - 1000.25 - k)


def test_per_slice_integer_intercepts_stay_int16() -> None:
    datasets = make_series(3, 2.0)
    datasets[1].RescaleIntercept = -1000
    volume = build_volume(datasets)
    assert volume.hu.dtype == np.int16
    stored = np.frombuffer(datasets[1].PixelData, dtype=np.uint16).reshape(8, 10)
    assert np.array_equal(volume.hu[1], stored.astype(np.int32) - 1000)


def test_int16_overflow_switches_to_float32() -> None:
    datasets = make_series(3, 2.0)
    big = np.full((8, 10), 60000, dtype=np.uint16)
    datasets[2].BitsStored = 16
    datasets[2].PixelData = big.tobytes()
    for ds in datasets:
        ds.BitsStored = 16
        ds.HighBit = 15
    volume = build_volume(datasets)
    assert volume.hu.dtype == np.float32
    assert float(volume.hu[2].max()) == 60000 - 1024


@pytest.mark.parametrize("intercept,expected", [(0.0, -2000), (-1024.0, -3024)])
def test_padding_below_air_is_kept(intercept: float, expected: int) -> None:
    padding_stored = -2000
    stored = np.full((8, 10), 1100, dtype=np.int16)
    stored[0, :3] = padding_stored
    series_uid, frame_uid = generate_uid(), generate_uid()
    datasets = [
        make_slice(2.0 * k, series_uid=series_uid, frame_uid=frame_uid, stored=stored,
                   signed=True, intercept=intercept)
        for k in range(3)
    ]
    for ds in datasets:
        ds.PixelPaddingValue = padding_stored
    volume = build_volume(datasets)
    assert volume.padding_value == expected
    assert np.all(volume.hu[:, 0, :3] == expected)
    assert np.all(volume.hu[:, 1:, :] == 1100 + intercept)


def test_padding_that_would_look_like_tissue_is_set_below_air() -> None:
    stored = np.full((8, 10), 2000, dtype=np.uint16)
    stored[:, 0] = 1024  # padding stored value -> 0 HU, as bright as water
    series_uid, frame_uid = generate_uid(), generate_uid()
    datasets = [
        make_slice(2.0 * k, series_uid=series_uid, frame_uid=frame_uid, stored=stored)
        for k in range(3)
    ]
    for ds in datasets:
        ds.PixelPaddingValue = 1024
    volume = build_volume(datasets)
    assert volume.padding_value == PADDING_HU
    assert np.all(volume.hu[:, :, 0] == PADDING_HU)
    assert np.all(volume.hu[:, :, 1:] == 2000 - 1024)


def test_memory_is_one_output_array(tmp_path: Path) -> None:
    datasets = make_series(64, 1.0, rows=256, columns=256)
    tracemalloc.start()
    try:
        volume = build_volume(datasets)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert volume.hu.dtype == np.int16
    # int16 output (8 MB) plus per-slice temporaries, not a float copy (16 MB).
    assert peak < volume.hu.nbytes * 1.3 + 2_000_000


# ----------------------------------------------------------------------
# Compressed pixel data
# ----------------------------------------------------------------------
@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_decode_to_the_same_volume(syntax: pydicom.uid.UID) -> None:
    # 64 x 64: OpenJPEG's default number of resolutions needs tiles that big.
    datasets = make_series(4, 2.0, rows=64, columns=64)
    reference = build_volume(datasets)
    compressed = copy.deepcopy(datasets)
    for ds in compressed:
        ds.compress(syntax)
        assert ds.file_meta.TransferSyntaxUID == syntax
    volume = build_volume(compressed)
    assert np.array_equal(volume.hu, reference.hu)


def test_corrupt_compressed_pixel_data_names_the_transfer_syntax() -> None:
    datasets = make_series(3, 2.0, rows=16, columns=16)
    for ds in datasets:
        ds.compress(RLELossless)
    datasets[1].PixelData = datasets[1].PixelData[:40]
    with pytest.raises(VolumeError, match="RLE Lossless") as info:
        build_volume(datasets)
    assert str(datasets[1].SOPInstanceUID) in str(info.value)
    _no_phi(str(info.value))


def test_real_jpeg2000_set_with_empty_uids_is_refused(shared_data: Path) -> None:
    datasets = read_series([shared_data / "ct" / "empty-uids-jpeg2000"])
    assert len(datasets) == 20
    with pytest.raises(VolumeError, match="SeriesInstanceUID is missing or empty in 20 of 20"):
        build_volume(datasets)


def test_real_jpeg2000_pixels_decode(shared_data: Path) -> None:
    datasets = read_series([shared_data / "ct" / "empty-uids-jpeg2000"])
    assert datasets[0].file_meta.TransferSyntaxUID == JPEG2000Lossless
    stored = decode_frame(datasets[0])
    assert np.array_equal(stored, datasets[0].pixel_array)
    # With identifiers filled in, the same files make a volume; its slice
    # spacing is the distance between the real positions (2 mm).
    positions = sorted(float(ds.ImagePositionPatient[2]) for ds in datasets)
    series_uid = generate_uid()
    for ds in datasets:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
    volume = build_volume(datasets)
    assert volume.geometry.shape == (20, 512, 512)
    assert volume.geometry.spacing[0] == pytest.approx(positions[1] - positions[0], abs=0.01)
    assert volume.geometry.spacing[0] == pytest.approx((positions[-1] - positions[0]) / 19)
    assert -1100 <= int(volume.hu.min()) and int(volume.hu.max()) < 4000
    assert float(np.mean((volume.hu > 0) & (volume.hu < 100))) > 0.05  # abdomen soft tissue


# ----------------------------------------------------------------------
# Refusals, each with a reason and without PHI
# ----------------------------------------------------------------------
def _mixed_orientation(ds: list[Dataset]) -> None:
    ds[2].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _two_frames(ds: list[Dataset]) -> None:
    ds[3].FrameOfReferenceUID = generate_uid()


def _matrix(ds: list[Dataset]) -> None:
    ds[1].Rows = 9
    ds[1].PixelData = np.zeros((9, 10), np.uint16).tobytes()


def _missing_slice(ds: list[Dataset]) -> None:
    del ds[3]


def _irregular(ds: list[Dataset]) -> None:
    ds[2].ImagePositionPatient = [-10.0, -20.0, 5.6]


def _tilt(ds: list[Dataset]) -> None:
    # Each slice shifted 0.5 mm in y per 2.5 mm in z: an 11 degree gantry tilt.
    for k, item in enumerate(ds):
        item.ImagePositionPatient = [-10.0, -20.0 + 0.5 * k, 2.5 * k]


def _duplicate(ds: list[Dataset]) -> None:
    ds[4].ImagePositionPatient = list(ds[3].ImagePositionPatient)


def _two_series(ds: list[Dataset]) -> None:
    ds[0].SeriesInstanceUID = generate_uid()


def _no_pixels(ds: list[Dataset]) -> None:
    del ds[2].PixelData


def _short_pixels(ds: list[Dataset]) -> None:
    ds[2].PixelData = ds[2].PixelData[:-20]


def _bits(ds: list[Dataset]) -> None:
    for item in ds:  # 160 bytes of 16-bit data disagree with 8 x 10 x 8 bits
        item.BitsAllocated = 8
        item.BitsStored = 8
        item.HighBit = 7


def _pixel_spacing(ds: list[Dataset]) -> None:
    ds[5].PixelSpacing = [0.9, 0.8]


def _multi_frame(ds: list[Dataset]) -> None:
    ds[0].NumberOfFrames = 2


def _modality(ds: list[Dataset]) -> None:
    for item in ds:
        item.Modality = "MR"


def _single(ds: list[Dataset]) -> None:
    del ds[1:]


def _empty_sop(ds: list[Dataset]) -> None:
    ds[1].SOPInstanceUID = ""


def _no_position(ds: list[Dataset]) -> None:
    del ds[1].ImagePositionPatient


@pytest.mark.parametrize(
    "mutate,error,pattern",
    [
        (_mixed_orientation, SeriesNotVolumetricError, "orientations"),
        (_two_frames, SeriesNotVolumetricError, "2 different FrameOfReferenceUID"),
        (_matrix, SeriesNotVolumetricError, "different matrix sizes \\(8x10, 9x10\\)"),
        (_missing_slice, SeriesNotVolumetricError, "1 slice\\(s\\) appear to be missing"),
        (_irregular, SeriesNotVolumetricError, "not a regularly spaced volume"),
        (_tilt, SeriesNotVolumetricError, "gantry tilt about 11.3 degrees"),
        (_duplicate, SeriesNotVolumetricError, "1 duplicate slice position"),
        (_two_series, SeriesNotVolumetricError, "2 different SeriesInstanceUID"),
        (_no_pixels, VolumeError, "has no PixelData"),
        (_short_pixels, VolumeError, "PixelData has 140 bytes but Rows 8 x Columns 10"),
        (_bits, VolumeError, "BitsAllocated 8 need 80"),
        (_pixel_spacing, SeriesNotVolumetricError, "different pixel spacings"),
        (_multi_frame, VolumeError, "Enhanced CT not supported"),
        (_modality, VolumeError, "Modality MR"),
        (_single, SeriesNotVolumetricError, "single image"),
        (_empty_sop, VolumeError, "SOPInstanceUID is missing or empty in 1 of 6"),
        (_no_position, VolumeError, "no usable ImagePositionPatient"),
    ],
)
def test_refusals(
    mutate: Callable[[list[Dataset]], None], error: type[Exception], pattern: str
) -> None:
    datasets = make_series(6, 2.5)
    mutate(datasets)
    with pytest.raises(error, match=pattern) as info:
        build_volume(datasets)
    _no_phi(str(info.value))


def test_empty_input_and_bad_arguments() -> None:
    with pytest.raises(VolumeError, match="no images"):
        build_volume([])
    with pytest.raises(TypeError, match="datasets"):
        build_volume(["not a dataset"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="spacing_tolerance"):
        build_volume(make_series(3), spacing_tolerance=0)


def test_spacing_tolerance_is_configurable() -> None:
    datasets = make_series(6, 2.5)
    datasets[2].ImagePositionPatient = [-10.0, -20.0, 5.1]  # 0.1 mm off: 4 % of the spacing
    with pytest.raises(SeriesNotVolumetricError):
        build_volume(datasets)
    volume = build_volume(datasets, spacing_tolerance=0.05)
    assert volume.geometry.spacing[0] == pytest.approx(2.5)


# ----------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------
def test_read_series_names_the_bad_file_not_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "DOE^JOHN_1234"
    folder.mkdir()
    for index, ds in enumerate(make_series(3)):
        ds.save_as(folder / f"im{index}.dcm", enforce_file_format=True)
    assert len(read_series([folder])) == 3
    (folder / "zz-notes.txt").write_text("not dicom at all\n" * 10)
    with pytest.raises(VolumeError, match="zz-notes.txt") as info:
        read_series([folder])
    assert "DOE" not in str(info.value)
    with pytest.raises(VolumeError, match="missing.dcm"):
        read_series([folder / "missing.dcm"])


def test_read_series_accepts_files_without_preamble(tmp_path: Path) -> None:
    ds = make_series(2)[0]
    path = tmp_path / "raw.dcm"
    ds.save_as(path, enforce_file_format=True)
    # Strip the 128-byte preamble and "DICM" prefix; tolerant reading still works.
    data = path.read_bytes()
    (tmp_path / "nopreamble.dcm").write_bytes(data[132:])
    read = read_series([tmp_path / "nopreamble.dcm"])
    assert read[0].SOPInstanceUID == ds.SOPInstanceUID


# ----------------------------------------------------------------------
# Round trip through the phantom generator's DICOM writer
# ----------------------------------------------------------------------
def test_phantom_dicom_series_round_trip(tmp_path: Path) -> None:
    phantom = pytest.importorskip("inference.phantom")
    dicom = pytest.importorskip("inference.phantom.dicom")
    spec = phantom.sample_spec(11, "cap")
    spec = dataclasses.replace(
        spec, matrix=64, pixel_spacing=spec.pixel_spacing * spec.matrix / 64, n_slices=40,
        slice_thickness=5.0,
    )
    case = phantom.generate_phantom(spec)
    paths = dicom.write_dicom_series(case, tmp_path)
    random.Random(1).shuffle(paths)
    volume = build_volume(read_series(paths))
    assert volume.geometry.shape == case.geometry.shape
    expected = case.hu
    ours, theirs = volume.geometry.affine[:3, 0], case.geometry.affine[:3, 0]
    if float(np.dot(ours, theirs)) < 0:
        expected = case.hu[::-1]  # the phantom stores slices the other way round
    # Same voxels at the same patient positions.
    n = case.geometry.shape[0] - 1
    assert np.allclose(volume.geometry.index_to_patient(np.array([[0, 5, 7], [n, 60, 3]])),
                       case.geometry.index_to_patient(
                           np.array([[0, 5, 7], [n, 60, 3]]) if expected is case.hu
                           else np.array([[n, 5, 7], [0, 60, 3]])), atol=1e-3)
    assert np.array_equal(volume.hu, expected)
    assert volume.padding_value == case.padding_value
