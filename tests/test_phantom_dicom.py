"""Tests of the phantom writers (DICOM, NIfTI) and the ``phantom`` command."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from inference.phantom import (
    Phantom,
    generate_phantom,
    sample_spec,
    write_dicom_series,
    write_nifti,
)
from inference.phantom.dicom import default_patient_name, read_series_hu

REPO_ROOT = Path(__file__).resolve().parent.parent
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    """A small COVID-19 phantom with -3024 padding and intercept -1024."""
    spec = sample_spec(17, "covid").with_grid(matrix=64, slice_thickness=8.0)
    spec = dataclasses.replace(spec, n_slices=12, scan_center_z=spec.lung_height / 2,
                               padding_value=-3024, rescale_intercept=-1024.0)
    return generate_phantom(spec)


def _dciodvfy(path: Path) -> list[str]:
    if DCIODVFY is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed")
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return (run.stdout + run.stderr).splitlines()


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_series_is_a_valid_ct_iod(phantom: Phantom, tmp_path: Path, syntax: str) -> None:
    paths = write_dicom_series(phantom, tmp_path, transfer_syntax=syntax)
    assert len(paths) == phantom.hu.shape[0]
    for path in paths:
        lines = _dciodvfy(path)
        assert any("CTImage" in line for line in lines), lines  # the CT IOD was checked
        errors = [line for line in lines if "Error" in line]
        assert not errors, f"{path.name}: {errors}"
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_series_hu(paths), phantom.hu)


def test_series_geometry_and_values(phantom: Phantom, tmp_path: Path) -> None:
    geometry = phantom.geometry
    paths = write_dicom_series(phantom, tmp_path, study_instance_uid="1.2.3.4.5")
    datasets = [pydicom.dcmread(p) for p in paths]
    n = geometry.shape[0]
    series = {ds.SeriesInstanceUID for ds in datasets}
    frames = {ds.FrameOfReferenceUID for ds in datasets}
    assert len(series) == 1 and len(frames) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == n
    for ds in datasets:
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.StudyInstanceUID == "1.2.3.4.5"
        assert ds.Modality == "CT"
        k = n - int(ds.InstanceNumber)  # instance 1 is the most superior slice
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   geometry.slice_position(k), atol=1e-4)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                                   geometry.image_orientation, atol=1e-6)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing],
                                   geometry.spacing[1:], atol=1e-6)
        assert float(ds.SliceThickness) == pytest.approx(geometry.spacing[0])
        assert (ds.Rows, ds.Columns) == geometry.shape[1:]
        hu = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, phantom.hu[k])
        assert float(ds.RescaleIntercept) == -1024.0
        # Padding: declared in stored units and present in the corners.
        assert int(ds.PixelPaddingValue) == -3024 + 1024
        assert ds.pixel_array[0, 0] == ds.PixelPaddingValue
        assert hu[0, 0] == phantom.padding_value == -3024
        # Obviously synthetic identity, no real person.
        assert re.fullmatch(r"PHANTOM\^COVID19\^\d{4}", str(ds.PatientName))
        assert ds.PatientBirthDate == ""
    positions = sorted(float(ds.ImagePositionPatient[2]) for ds in datasets)
    np.testing.assert_allclose(np.diff(positions), geometry.spacing[0], atol=1e-4)


def test_writer_options_and_validation(phantom: Phantom, tmp_path: Path) -> None:
    first = write_dicom_series(phantom, tmp_path / "a", uid_seed="x", rescale_intercept=0.0)
    second = write_dicom_series(phantom, tmp_path / "b", uid_seed="x", rescale_intercept=0.0)
    one, two = pydicom.dcmread(first[0]), pydicom.dcmread(second[0])
    assert one.SeriesInstanceUID == two.SeriesInstanceUID  # same uid_seed, same UIDs
    assert one.SOPInstanceUID == two.SOPInstanceUID
    assert float(one.RescaleIntercept) == 0.0 and int(one.PixelPaddingValue) == -3024
    third = pydicom.dcmread(write_dicom_series(phantom, tmp_path / "c")[0])
    assert third.SeriesInstanceUID != one.SeriesInstanceUID  # random otherwise
    assert default_patient_name("normal", 7) == "PHANTOM^NO_PNEUMONIA^0007"
    with pytest.raises(ValueError, match='"study_instance_uid"'):
        write_dicom_series(phantom, tmp_path / "d", study_instance_uid="1.2.abc")
    with pytest.raises(ValueError, match='"uid_root"'):
        write_dicom_series(phantom, tmp_path / "d", uid_root="1.2.3")
    with pytest.raises(ValueError, match='"transfer_syntax"'):
        write_dicom_series(phantom, tmp_path / "d", transfer_syntax="1.2.840.10008.1.2.4.50")
    with pytest.raises(ValueError, match='"series_number"'):
        write_dicom_series(phantom, tmp_path / "d", series_number=0)
    with pytest.raises(ValueError, match='"rescale_intercept"'):
        write_dicom_series(phantom, tmp_path / "d", rescale_intercept=-1000.0)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_nifti_round_trip(phantom: Phantom, tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    paths = write_nifti(phantom, tmp_path)
    assert set(paths) == {"image", "lesion_mask", "lung_mask", "summary"}
    image = nib.load(paths["image"])
    lesion = nib.load(paths["lesion_mask"])
    lung = nib.load(paths["lung_mask"])
    data = np.asarray(image.dataobj)
    assert data.dtype == np.int16
    # NIfTI voxel (j, i, k) is phantom voxel [k, i, j].
    np.testing.assert_array_equal(data.transpose(2, 1, 0), phantom.hu)
    np.testing.assert_array_equal(np.asarray(lesion.dataobj).transpose(2, 1, 0),
                                  phantom.lesion_mask.astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(lung.dataobj).transpose(2, 1, 0), phantom.lung_mask)
    # The RAS affine maps a voxel to the same patient point as the geometry.
    rng = np.random.default_rng(0)
    kij = rng.integers(0, phantom.hu.shape, size=(20, 3)).astype(float)
    lps = phantom.geometry.index_to_patient(kij)
    for affine in (image.affine, image.get_qform(), lesion.affine, lung.affine):
        ras = (affine @ np.column_stack([kij[:, 2], kij[:, 1], kij[:, 0], np.ones(20)]).T).T
        np.testing.assert_allclose(ras[:, :3] * [-1, -1, 1], lps, atol=1e-4)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    summary = json.loads(paths["summary"].read_text())
    assert summary["label"] == "covid19"
    assert summary["lesion_volume_ml"] == pytest.approx(phantom.lesion_volume_ml, abs=1e-3)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pacs_node", "phantom", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)


def test_phantom_command_writes_dicom_and_nifti(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = _run_cli("--out", str(out), "--n", "3", "--seed", "40", "--classes", "covid,normal",
                   "--format", "both", "--matrix", "48", "--slices", "9",
                   "--slice-thickness", "8",
                   "--transfer-syntax", "rle")
    assert run.returncode == 0, run.stderr
    assert "phantoms" in run.stderr  # the tqdm progress bar goes to stderr
    index = json.loads((out / "index.json").read_text())
    entries = index["phantoms"]
    assert [e["label"] for e in entries] == ["covid19", "no_pneumonia", "covid19"]
    assert [e["seed"] for e in entries] == [40, 41, 42]
    for entry in entries:
        case = out / entry["path"]
        files = sorted((case / "dicom").glob("*.dcm"))
        assert len(files) == 9 == entry["instances"]
        ds = pydicom.dcmread(files[0])
        assert (ds.Rows, ds.Columns) == (48, 48)
        assert ds.file_meta.TransferSyntaxUID == RLELossless
        for key in ("image", "lesion_mask", "lung_mask", "summary"):
            assert (out / entry[key]).is_file()
        summary = json.loads((case / "phantom.json").read_text())
        assert summary["spec"]["matrix"] == 48 and summary["shape"] == [9, 48, 48]
        assert (entry["lesion_volume_ml"] > 0) == (entry["label"] == "covid19")
    # Same seed, same pixels (fresh UIDs).
    again = tmp_path / "again"
    assert _run_cli("--out", str(again), "--n", "1", "--seed", "40", "--classes", "covid19",
                    "--format", "dicom", "--matrix", "48", "--slices", "9",
                    "--slice-thickness", "8",
                    "--no-progress").returncode == 0
    first = read_series_hu(sorted((out / entries[0]["path"] / "dicom").glob("*.dcm")))
    second = read_series_hu(sorted((again / entries[0]["path"] / "dicom").glob("*.dcm")))
    np.testing.assert_array_equal(first, second)
    assert not (again / entries[0]["path"] / "image.nii.gz").exists()


def test_phantom_command_rejects_bad_options(tmp_path: Path) -> None:
    run = _run_cli("--out", str(tmp_path), "--classes", "covid,flu")
    assert run.returncode == 2
    assert "flu" in run.stderr
    run = _run_cli("--out", str(tmp_path), "--n", "0")
    assert run.returncode == 2
    run = _run_cli("--out", str(tmp_path), "--matrix", "8")
    assert run.returncode == 2 and '"matrix"' in run.stderr
    assert not (tmp_path / "index.json").exists()
