"""TID 1500 Comprehensive 3D SR of inference results, on the real CT series.

Every number the report gives is checked against the SEG read back from disk
(voxel counts x voxel volume) or against an independent scipy computation.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage
from scipy import ndimage

from inference.manifest import RESEARCH_USE_STATEMENT
from pacs_node.results import (
    ResultObjects,
    build_measurement_report,
    build_segmentation,
    encode_results,
    read_report_measurements,
    read_segmentation_mask,
)
from tests.results_fixtures import (
    CT_SERIES,
    PROBABILITIES,
    UID_ROOT,
    dciodvfy,
    load_series,
    make_manifest,
    make_result,
)

VOLUME_TOLERANCE_ML = 1e-4  # the report rounds volumes to 0.1 microlitre


@pytest.fixture(scope="module")
def datasets(shared_data: Path):
    return load_series(shared_data / CT_SERIES)


@pytest.fixture(scope="module")
def manifest():
    return make_manifest()


def _write(objects: ResultObjects, folder: Path) -> tuple[Path, Path]:
    seg_path, sr_path = folder / "seg.dcm", folder / "sr.dcm"
    objects.seg.save_as(seg_path)
    objects.sr.save_as(sr_path)
    return seg_path, sr_path


@pytest.fixture(scope="module")
def result(datasets):
    return make_result(datasets)


@pytest.fixture(scope="module")
def written(tmp_path_factory, datasets, result, manifest):
    objects = encode_results(datasets, result, manifest, uid_root=UID_ROOT)
    return _write(objects, tmp_path_factory.mktemp("with_lesions"))


@pytest.fixture(scope="module")
def empty_written(tmp_path_factory, datasets, manifest):
    objects = encode_results(datasets, make_result(datasets, lesions=False), manifest,
                             uid_root=UID_ROOT)
    return _write(objects, tmp_path_factory.mktemp("no_lesions"))


@pytest.fixture(scope="module")
def report(written):
    return read_report_measurements(pydicom.dcmread(written[1]))


@pytest.fixture(scope="module")
def masks(written, result):
    return read_segmentation_mask(pydicom.dcmread(written[0]), result.geometry)


@pytest.mark.parametrize("which", ["written", "empty_written"])
def test_dciodvfy_reports_no_error(request, which):
    seg_path, sr_path = request.getfixturevalue(which)
    for path, iod in ((sr_path, "Comprehensive3DSR"), (seg_path, "Segmentation")):
        lines = dciodvfy(path)
        print("\n".join(lines))
        assert any(iod in line for line in lines), lines
        assert [line for line in lines if "Error" in line] == []


def test_dsrdump_reads_the_report(written):
    dsrdump = shutil.which("dsrdump")
    assert dsrdump is not None, "dsrdump (Debian package dcmtk) is not installed"
    completed = subprocess.run([dsrdump, "-Ee", str(written[1])], capture_output=True,
                               text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    text = completed.stdout
    for expected in ("Comprehensive 3D SR Document", "AI report (research)",
                     '"Imaging Measurement Report"', '"Referenced Segment"',
                     '"Probability"', '"Image Library"'):
        assert expected in text, expected
    assert "error" not in completed.stderr.lower(), completed.stderr


def test_segment_volumes_equal_seg_voxel_counts(report, masks, written, result):
    seg = pydicom.dcmread(written[0])
    voxel_ml = result.geometry.voxel_volume_ml
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert set(report["segments"]) == set(labels)
    for number, entry in report["segments"].items():
        assert entry["label"] == labels[number]
        assert entry["seg_sop_instance_uid"] == seg.SOPInstanceUID
        expected = int(masks[labels[number]].sum()) * voxel_ml
        assert entry["volume_ml"] == pytest.approx(expected, abs=VOLUME_TOLERANCE_ML)
    lesion_ml = int(masks["Lesion"].sum()) * voxel_ml
    assert lesion_ml > 1.0
    assert report["total_lesion_volume_ml"] == pytest.approx(lesion_ml, abs=VOLUME_TOLERANCE_ML)


def test_per_lesion_volumes_match_connected_components(report, masks, result):
    voxel_ml = result.geometry.voxel_volume_ml
    labels, count = ndimage.label(masks["Lesion"], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True)
    assert count == 2
    assert report["lesion_count"] == count
    assert [x["tracking_id"] for x in report["lesions"]] == ["Lesion 1", "Lesion 2"]
    assert [x["volume_ml"] for x in report["lesions"]] == pytest.approx(
        [size * voxel_ml for size in sizes], abs=VOLUME_TOLERANCE_ML)
    assert [(x["side"], x["zone"]) for x in report["lesions"]] == [
        (lesion.side, lesion.zone) for lesion in result.analysis.lesions]
    assert [x["mean_hu"] for x in report["lesions"]] == pytest.approx(
        [lesion.mean_hu for lesion in result.analysis.lesions], abs=0.01)
    weighted = sum(x.mean_hu * x.voxel_count for x in result.analysis.lesions) / sum(sizes)
    assert report["segments"][1]["mean_hu"] == pytest.approx(weighted, abs=0.01)


def test_involvement_matches_the_seg_masks(report, masks, result):
    voxel_ml = result.geometry.voxel_volume_ml
    lesion = masks["Lesion"]
    lungs = {"right": masks["Right lung"], "left": masks["Left lung"]}
    lungs["total"] = lungs["right"] | lungs["left"]
    for region, lung in lungs.items():
        expected = 100.0 * (lesion & lung).sum() / lung.sum()
        assert report["involvement_percent"][region] == pytest.approx(expected, abs=1e-4)
    for side in ("right", "left"):
        assert report["lesion_volume_ml"][side] == pytest.approx(
            (lesion & lungs[side]).sum() * voxel_ml, abs=VOLUME_TOLERANCE_ML)
    assert report["involvement_percent"]["right"] > report["involvement_percent"]["left"] > 0


def test_probabilities_and_classification(report, manifest):
    expected = {c.code.value: p for c, p in zip(manifest.classes, PROBABILITIES)}
    assert report["probabilities"] == pytest.approx(expected, abs=1e-6)
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    top = manifest.classes[int(np.argmax(PROBABILITIES))].code
    assert report["classification"] == {"value": top.value, "scheme": top.scheme,
                                         "meaning": top.meaning}


def test_research_use_statement(report, written, manifest):
    assert manifest.intended_use.startswith("Research use only, not for diagnosis")
    assert report["statements"] == [manifest.intended_use]
    sr = pydicom.dcmread(written[1])
    assert sr.SeriesDescription == "AI report (research)"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert sr.VerificationFlag == "UNVERIFIED"


def test_no_lesions_is_said_explicitly(empty_written):
    report = read_report_measurements(pydicom.dcmread(empty_written[1]))
    assert report["lesions_present"] is False
    assert report["lesion_count"] == 0
    assert report["total_lesion_volume_ml"] == 0.0
    assert report["lesions"] == []
    assert report["segments"][1]["label"] == "Lesion"
    assert report["segments"][1]["volume_ml"] == 0.0
    assert report["segments"][1]["mean_hu"] is None
    assert report["involvement_percent"] == {"total": 0.0, "right": 0.0, "left": 0.0}
    assert report["segments"][2]["volume_ml"] > 0
    assert report["statements"] == [RESEARCH_USE_STATEMENT]


def test_lesions_present_flag_with_lesions(report):
    assert report["lesions_present"] is True


def test_references_evidence_and_image_library(written, datasets):
    seg = pydicom.dcmread(written[0])
    sr = pydicom.dcmread(written[1])
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {seg.SOPInstanceUID} | {ds.SOPInstanceUID for ds in datasets}
    library = [item for item in sr.ContentSequence
               if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert len(library) == 1
    entries = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               for group in library[0].ContentSequence
               for item in group.ContentSequence if item.ValueType == "IMAGE"]
    assert entries == [ds.SOPInstanceUID for ds in datasets]


def test_highdicom_parses_the_report(written):
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(written[1]))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Lesion", "Right lung", "Left lung"]
    assert [g.referenced_segment.referenced_segment_numbers for g in groups] == [[1], [2], [3]]
    observers = sr.content.get_observer_contexts()
    assert observers[0].observer_identifying_attributes.name == "deepsc-node"


def test_patient_study_and_uids(written, datasets):
    sr = pydicom.dcmread(written[1])
    source = datasets[0]
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate",
                    "AccessionNumber"):
        assert sr.get(keyword) == source.get(keyword), keyword
    assert sr.SeriesNumber == 9002
    assert sr.SeriesInstanceUID.startswith(UID_ROOT + ".")
    assert sr.SOPInstanceUID.startswith(UID_ROOT + ".")
    schemes = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert schemes == ["99DEEPSC"]
    observer_uid = next(item.UID for item in sr.ContentSequence
                        if item.ConceptNameCodeSequence[0].CodeValue == "121012")
    assert observer_uid.startswith(UID_ROOT + ".")
    tracking = [item.UID for item in _walk(sr) if item.ValueType == "UIDREF"
                and item.ConceptNameCodeSequence[0].CodeValue == "112040"]
    # One UID per tracked finding: a lesion's planar (TID 1410) group shares
    # it with that lesion's TID 1501 group; every other group has its own.
    report = read_report_measurements(sr)
    planar_uids = [group["tracking_uid"] for group in report["planar"]]
    lesion_uids = {lesion["tracking_uid"] for lesion in report["lesions"]}
    assert len(planar_uids) == 2 and set(planar_uids) <= lesion_uids
    assert len(tracking) - len(planar_uids) == len(set(tracking)) >= 9
    assert all(uid.startswith(UID_ROOT + ".") for uid in tracking)


def _walk(item):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def test_device_uid_is_stable(datasets, result, manifest):
    first = encode_results(datasets, result, manifest, uid_root=UID_ROOT, max_lesion_groups=1)
    second = encode_results(datasets, result, manifest, uid_root=UID_ROOT)
    uids = [next(item.UID for item in objects.sr.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeValue == "121012")
            for objects in (first, second)]
    assert uids[0] == uids[1]
    assert first.sr.SOPInstanceUID != second.sr.SOPInstanceUID
    assert first.datasets == (first.seg, first.sr)
    capped = read_report_measurements(first.sr)
    assert len(capped["lesions"]) == 1
    assert capped["lesion_count"] == 2


def test_shuffled_datasets_raise(datasets, result, manifest, written):
    seg = pydicom.dcmread(written[0])
    shuffled = list(datasets)
    random.Random(5).shuffle(shuffled)
    with pytest.raises(ValueError, match="ImagePositionPatient"):
        build_measurement_report(shuffled, seg, result, manifest, uid_root=UID_ROOT)


def test_seg_of_other_series_or_result_raises(datasets, result, manifest, written):
    seg = pydicom.dcmread(written[0])
    other = pydicom.dcmread(written[0])
    other.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="seg"):
        build_measurement_report(datasets, other, result, manifest, uid_root=UID_ROOT)
    relabelled = pydicom.dcmread(written[0])
    relabelled.SegmentSequence[0].SegmentLabel = "Tumour"
    with pytest.raises(ValueError, match="segments"):
        build_measurement_report(datasets, relabelled, result, manifest, uid_root=UID_ROOT)
    inconsistent = dataclasses.replace(result, lesion_mask=np.zeros_like(result.lesion_mask))
    with pytest.raises(ValueError, match="analysis"):
        build_measurement_report(datasets, seg, inconsistent, manifest, uid_root=UID_ROOT)
    with pytest.raises(ValueError, match="max_lesion_groups"):
        build_measurement_report(datasets, seg, result, manifest, uid_root=UID_ROOT,
                                 max_lesion_groups=-1)


def test_no_patient_name_in_logs(caplog, datasets, result, manifest):
    with caplog.at_level(logging.DEBUG):
        seg = build_segmentation(datasets, result, manifest, uid_root=UID_ROOT)
        build_measurement_report(datasets, seg, result, manifest, uid_root=UID_ROOT)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("SR " in m for m in messages)
    for value in (str(datasets[0].PatientName), str(datasets[0].PatientID)):
        assert not [m for m in messages if value in m]
