"""DICOM-SEG encoding of inference results, on the real CT series.

The result is synthetic (spheres and boxes, see ``results_fixtures``); the
source images, dciodvfy and highdicom's reader are real.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.errors import ManifestError
from pydicom.uid import SegmentationStorage

from inference.manifest import Manifest
from pacs_node.results import build_segmentation, read_segmentation_mask
from tests.results_fixtures import (
    CT_SERIES,
    MANIFEST_DICT,
    UID_ROOT,
    dciodvfy,
    geometry_of,
    load_series,
    make_manifest,
    make_result,
    synthetic_result,
    synthetic_series,
)

LABELS = ["Lesion", "Right lung", "Left lung"]


@pytest.fixture(scope="module")
def datasets(shared_data: Path) -> list[pydicom.Dataset]:
    return load_series(shared_data / CT_SERIES)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return make_manifest()


@pytest.fixture(scope="module")
def result(datasets):
    return make_result(datasets)


@pytest.fixture(scope="module")
def empty_result(datasets):
    return make_result(datasets, lesions=False)


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory, datasets, result, manifest) -> Path:
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    build_segmentation(datasets, result, manifest, uid_root=UID_ROOT).save_as(path)
    return path


@pytest.fixture(scope="module")
def seg(seg_file) -> pydicom.Dataset:
    return pydicom.dcmread(seg_file)


def _expected(result) -> dict[str, np.ndarray]:
    return {
        "Lesion": result.lesion_mask,
        "Right lung": result.lung_mask == 1,
        "Left lung": result.lung_mask == 2,
    }


def _errors(lines: list[str]) -> list[str]:
    return [line for line in lines if "Error" in line]


def test_dciodvfy_reports_no_error(seg_file):
    lines = dciodvfy(seg_file)
    print("\n".join(lines))
    assert any("Segmentation" in line for line in lines), lines
    assert _errors(lines) == []


def test_read_back_with_highdicom_by_source_instance(seg, datasets, result):
    masks = read_segmentation_mask(seg, [ds.SOPInstanceUID for ds in datasets])
    assert list(masks) == LABELS
    for label, expected in _expected(result).items():
        assert masks[label].shape == result.geometry.shape
        assert np.array_equal(masks[label], expected), label


def test_read_back_by_geometry(seg, result):
    masks = read_segmentation_mask(seg, result.geometry)
    for label, expected in _expected(result).items():
        assert np.array_equal(masks[label], expected), label


def test_frames_lie_on_source_images(seg, datasets, result):
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    assert int(seg.NumberOfFrames) == sum(
        int(mask.any(axis=(1, 2)).sum()) for mask in _expected(result).values()
    )
    for item in seg.PerFrameFunctionalGroupsSequence:
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = by_uid[source_uid]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-6)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [
        float(v) for v in datasets[0].ImageOrientationPatient
    ]
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID


def test_segments_are_coded_with_algorithm_identification(seg, manifest):
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == LABELS
    assert [s.SegmentNumber for s in segments] == [1, 2, 3]
    lesion, right, left = segments
    assert lesion.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert lesion.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert lesion.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = lesion.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == manifest.model_name
    assert algorithm.AlgorithmVersion == manifest.model_version
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert "threshold=0.5" in algorithm.AlgorithmParameters
    for item, laterality in ((right, "24028007"), (left, "7771000")):
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        assert type_item.CodeValue == "39607008"
        assert type_item.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == laterality
        lung_algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert lung_algorithm.AlgorithmName == "deepsc-node HU lung extraction"
        assert lung_algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123104"


def test_patient_study_and_series_attributes(seg, datasets):
    source = datasets[0]
    for keyword in ("PatientName", "PatientID", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "AccessionNumber", "StudyDescription"):
        assert seg.get(keyword) == source.get(keyword), keyword
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.Modality == "SEG"
    assert seg.SeriesDescription == "AI lesions (research)"
    assert seg.SeriesNumber == 9001
    assert seg.ContentQualification == "RESEARCH"
    assert "not for diagnosis" in seg.ContentDescription
    assert seg.Manufacturer == "deepsc-node"
    referenced = seg.ReferencedSeriesSequence
    assert [item.SeriesInstanceUID for item in referenced] == [source.SeriesInstanceUID]
    assert {i.ReferencedSOPInstanceUID for i in referenced[0].ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in datasets
    }


def test_generated_uids_start_with_the_root(seg):
    generated = [seg.SeriesInstanceUID, seg.SOPInstanceUID,
                 seg.DimensionOrganizationSequence[0].DimensionOrganizationUID,
                 *(item.DimensionOrganizationUID for item in seg.DimensionIndexSequence),
                 *(item.TrackingUID for item in seg.SegmentSequence)]
    for uid in generated:
        assert uid.startswith(UID_ROOT + "."), uid
        assert len(uid) <= 64
    assert seg.SeriesInstanceUID != seg.SOPInstanceUID


def test_empty_lesion_map_keeps_an_empty_lesion_segment(tmp_path, datasets, empty_result,
                                                        manifest):
    path = tmp_path / "empty.dcm"
    build_segmentation(datasets, empty_result, manifest, uid_root=UID_ROOT).save_as(path)
    assert _errors(dciodvfy(path)) == []
    seg = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == LABELS
    referenced = {item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
                  for item in seg.PerFrameFunctionalGroupsSequence}
    assert referenced == {2, 3}
    masks = read_segmentation_mask(seg, [ds.SOPInstanceUID for ds in datasets])
    assert not masks["Lesion"].any()
    assert np.array_equal(masks["Right lung"], empty_result.lung_mask == 1)


def test_all_segments_empty_still_valid(tmp_path, datasets, empty_result, manifest):
    nothing = dataclasses.replace(empty_result,
                                  lung_mask=np.zeros_like(empty_result.lung_mask))
    path = tmp_path / "nothing.dcm"
    build_segmentation(datasets, nothing, manifest, uid_root=UID_ROOT).save_as(path)
    assert _errors(dciodvfy(path)) == []
    masks = read_segmentation_mask(pydicom.dcmread(path), nothing.geometry)
    assert list(masks) == LABELS
    assert not any(mask.any() for mask in masks.values())


def test_shuffled_datasets_raise(datasets, result, manifest):
    shuffled = list(datasets)
    random.Random(3).shuffle(shuffled)
    assert shuffled != list(datasets)
    with pytest.raises(ValueError, match="ImagePositionPatient"):
        build_segmentation(shuffled, result, manifest, uid_root=UID_ROOT)


def test_reversed_slice_order_with_its_own_geometry(datasets, manifest):
    reversed_datasets = list(reversed(datasets))
    geometry = geometry_of(reversed_datasets)
    assert geometry.slice_direction[2] < 0
    result = make_result(reversed_datasets, geometry=geometry)
    seg = build_segmentation(reversed_datasets, result, manifest, uid_root=UID_ROOT)
    masks = read_segmentation_mask(seg, geometry)
    assert np.array_equal(masks["Lesion"], result.lesion_mask)


def test_wrong_slice_count_and_bad_inputs_raise(datasets, result, manifest):
    with pytest.raises(ValueError, match="slices"):
        build_segmentation(datasets[:-1], result, manifest, uid_root=UID_ROOT)
    with pytest.raises(ValueError, match="uid_root"):
        build_segmentation(datasets, result, manifest, uid_root="1.2.03")
    with pytest.raises(TypeError, match="source_datasets"):
        build_segmentation(datasets[0], result, manifest, uid_root=UID_ROOT)
    with pytest.raises(TypeError, match="lesion_mask"):
        build_segmentation(datasets, dataclasses.replace(
            result, lesion_mask=result.lesion_mask.astype(np.uint8)), manifest, uid_root=UID_ROOT)
    with pytest.raises(ValueError, match="lung_mask"):
        build_segmentation(datasets, dataclasses.replace(
            result, lung_mask=result.lung_mask * 2), manifest, uid_root=UID_ROOT)
    with pytest.raises(ValueError, match="model"):
        build_segmentation(datasets, dataclasses.replace(result, model_version="9.9"),
                           manifest, uid_root=UID_ROOT)


def test_missing_uid_raises(datasets, result, manifest):
    broken = list(datasets)
    broken[4] = copy.deepcopy(datasets[4])
    broken[4].SOPInstanceUID = ""
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        build_segmentation(broken, result, manifest, uid_root=UID_ROOT)


def test_code_meaning_longer_than_64_characters_raises(datasets, result):
    data = copy.deepcopy(MANIFEST_DICT)
    data["segments"][0]["type"]["meaning"] = "x" * 65
    # The manifest refuses it at load, before any DICOM is built.
    with pytest.raises(ManifestError, match=r"segments\[0\]\.type\.meaning"):
        build_segmentation(datasets, result, Manifest.from_dict(data), uid_root=UID_ROOT)


def test_metadata_only_sources_give_the_same_frames(shared_data, datasets, result, manifest,
                                                     seg):
    headers = [pydicom.dcmread(path, stop_before_pixels=True)
               for path in sorted((shared_data / CT_SERIES).glob("*.dcm"))]
    by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    ordered = [by_uid[ds.SOPInstanceUID] for ds in datasets]
    assert all("PixelData" not in ds for ds in ordered)
    again = build_segmentation(ordered, result, manifest, uid_root=UID_ROOT)
    assert again.PixelData == seg.PixelData
    assert int(again.NumberOfFrames) == int(seg.NumberOfFrames)


def test_person_name_warning_does_not_leak_phi(datasets, result, manifest):
    name = str(datasets[0].PatientName)
    with warnings.catch_warnings(record=True) as caught:
        build_segmentation(datasets, result, manifest, uid_root=UID_ROOT)
    assert not [w for w in caught if name in str(w.message)]


@pytest.mark.slow
def test_encode_300_frames_timing(shared_data, manifest):
    datasets = synthetic_series(shared_data / CT_SERIES, 300)
    result = synthetic_result(datasets)
    build_segmentation(datasets[:30], synthetic_result(datasets[:30]), manifest,
                       uid_root=UID_ROOT)  # warm-up: imports and caches
    started = time.perf_counter()
    seg = build_segmentation(datasets, result, manifest, uid_root=UID_ROOT)
    elapsed = time.perf_counter() - started
    print(f"\nSEG 300 slices 512x512 -> {seg.NumberOfFrames} frames in {elapsed:.2f} s")
    masks = read_segmentation_mask(seg, result.geometry)
    assert np.array_equal(masks["Lesion"], result.lesion_mask)
    assert np.array_equal(masks["Left lung"], result.lung_mask == 2)
