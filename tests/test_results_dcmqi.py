"""Independent readers: dcmqi (QIICR, DCMTK-based, PyPI package ``dcmqi``)
reads the node's SR and SEG built from a phantom result.

* ``tid1500reader`` turns the TID 1500 report into JSON: the planar (TID 1410)
  and volumetric (TID 1411) groups must be there with our values. dcmqi's JSON
  has no spatial coordinates (its reader is written for segmentation-based
  reports), so the outline itself is checked in ``test_results_planar.py``.
* ``segimage2itkimage`` turns the SEG into one NIfTI file per segment: the
  Lesion segment must equal our lesion mask voxel for voxel, and the lungs
  their labels.
"""
from __future__ import annotations

import json
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pacs_node.results import build_outline_report, encode_results, read_report_measurements
from pacs_node.results.outline_sr import OHIF_PLANAR_FREEHAND_TRACKING_PREFIX
from tests.peers import require_binary
from tests.results_fixtures import UID_ROOT, make_manifest, phantom_case


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dcmqi")
    datasets, result = phantom_case(folder / "ct")
    objects = encode_results(datasets, result, make_manifest(), uid_root=UID_ROOT)
    objects.seg.save_as(folder / "seg.dcm")
    objects.sr.save_as(folder / "sr.dcm")
    return folder, datasets, result


def _value(group: dict, code_value: str) -> float:
    (item,) = [m for m in group["measurementItems"] if m["quantity"]["CodeValue"] == code_value]
    return float(item["value"])


def test_tid1500reader_reads_planar_and_volumetric_groups(case):
    folder, _, result = case
    _run(require_binary("tid1500reader"), "--inputDICOM", str(folder / "sr.dcm"),
         "--outputMetadata", str(folder / "sr.json"))
    groups = json.loads((folder / "sr.json").read_text())["Measurements"]
    ours = read_report_measurements(pydicom.dcmread(folder / "sr.dcm"))
    assert len(ours["planar"]) >= 2

    # Planar groups: first, one per significant lesion, Area (SCT 42798000,
    # mm2) and Long axis (SCT 103339001, mm) with our values.
    planar = groups[: len(ours["planar"])]
    for theirs, mine in zip(planar, ours["planar"]):
        assert theirs["TrackingIdentifier"] == mine["tracking_id"]
        assert theirs["TrackingUniqueIdentifier"] == mine["tracking_uid"]
        assert theirs["Finding"]["CodeValue"] == "52988006"
        units = {m["quantity"]["CodeValue"]: m["units"]["CodeValue"]
                 for m in theirs["measurementItems"]}
        assert units == {"42798000": "mm2", "103339001": "mm"}
        assert _value(theirs, "42798000") == pytest.approx(mine["area_mm2"])
        assert _value(theirs, "103339001") == pytest.approx(mine["long_axis_mm"])
        assert "ReferencedSegment" not in theirs

    # Volumetric groups: segments 1..3 with voxel count x voxel volume.
    volumetric = {g["ReferencedSegment"]: g for g in groups if "ReferencedSegment" in g}
    assert sorted(volumetric) == [1, 2, 3]
    voxel_ml = result.geometry.voxel_volume_ml
    counts = {1: np.count_nonzero(result.lesion_mask),
              2: np.count_nonzero(result.lung_mask == 1),
              3: np.count_nonzero(result.lung_mask == 2)}
    for number, group in volumetric.items():
        assert _value(group, "118565006") == pytest.approx(counts[number] * voxel_ml, abs=1e-4)
    assert [volumetric[n]["TrackingIdentifier"] for n in (1, 2, 3)] == [
        "Lesion", "Right lung", "Left lung"]
    # planar + classification + 3 probabilities + burden + 3 segments + lesions
    assert len(groups) == len(ours["planar"]) + 1 + 3 + 1 + 3 + len(ours["lesions"])


def test_segimage2itkimage_reads_back_the_same_masks(case):
    folder, _, result = case
    out = folder / "nifti"
    out.mkdir()
    _run(require_binary("segimage2itkimage"), "--inputDICOM", str(folder / "seg.dcm"),
         "--outputDirectory", str(out), "--outputType", "nifti")
    meta = json.loads((out / "meta.json").read_text())
    labels = [group[0]["SegmentLabel"] for group in meta["segmentAttributes"]]
    assert labels == ["Lesion", "Right lung", "Left lung"]
    geometry = result.geometry
    expected = {1: result.lesion_mask, 2: result.lung_mask == 1, 3: result.lung_mask == 2}
    for number, mask in expected.items():
        image = nib.load(out / f"{number}.nii.gz")
        data = np.asarray(image.dataobj)
        assert data.shape == geometry.shape[::-1]  # ITK index order (column, row, slice)
        # Same index space: dcmqi writes ITK's LPS geometry as NIfTI RAS (x and
        # y negated). Voxel (x, y, z) of the NIfTI must sit where our voxel
        # (k, i, j) = (z, y, x) sits, at every corner of the grid.
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
        n, rows, columns = geometry.shape
        for k, i, j in [(0, 0, 0), (n - 1, 0, 0), (0, rows - 1, 0), (0, 0, columns - 1),
                        (n - 1, rows - 1, columns - 1)]:
            theirs = (lps @ np.array([j, i, k, 1.0]))[:3]
            ours = geometry.index_to_patient(np.array([[k, i, j]]))[0]
            assert np.allclose(theirs, ours, atol=0.01), (k, i, j)
        read_back = np.transpose(data, (2, 1, 0)) != 0
        assert read_back.any()
        assert np.array_equal(read_back, mask), number


def test_tid1500reader_reads_the_outline_report(case):
    folder, datasets, result = case
    seg = pydicom.dcmread(folder / "seg.dcm")
    outline = build_outline_report(datasets, seg, result, make_manifest(), uid_root=UID_ROOT)
    outline.save_as(folder / "outline.dcm")
    _run(require_binary("tid1500reader"), "--inputDICOM", str(folder / "outline.dcm"),
         "--outputMetadata", str(folder / "outline.json"))
    document = json.loads((folder / "outline.json").read_text())
    groups = document["Measurements"]
    ours = read_report_measurements(pydicom.dcmread(folder / "sr.dcm"))["planar"]
    # The same lesions as the full report; the identifier names OHIF's tool first.
    assert [(g["TrackingIdentifier"], g["TrackingUniqueIdentifier"]) for g in groups] == [
        (f"{OHIF_PLANAR_FREEHAND_TRACKING_PREFIX}{p['tracking_id']}", p["tracking_uid"])
        for p in ours]
    assert [_value(g, "42798000") for g in groups] == pytest.approx(
        [p["area_mm2"] for p in ours])
    assert document["SeriesDescription"] == "AI lesion measurements (research)"
