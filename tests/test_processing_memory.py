"""Releasing the source pixels early (issue 6, memory) changes nothing in the results.

A 40-slice 256 x 256 phantom goes through the bundled model twice: once with
the datasets' Pixel Data kept, once released after the volume is built (what
``process_files`` does). The SEG pixel data, frames, referenced instances and
the analysis must be the same, and the released datasets must hold no pixels.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pydicom
import pytest

from config import SelectionRules
from inference import phantom
from inference.pipeline import InferencePipeline
from inference.volume import read_series
from pacs_node.processing import SeriesProcessor
from tests.conftest import REPO_ROOT

UID_ROOT = "1.2.826.0.1.3680043.8.498.77."


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = phantom.sample_spec(20250, "covid19")
    fov = spec.matrix * spec.pixel_spacing
    spec = dataclasses.replace(spec, matrix=256, pixel_spacing=fov / 256).with_grid(
        n_slices=40, slice_thickness=5.0
    )
    return phantom.write_dicom_series(phantom.generate_phantom(spec),
                                      tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def processor() -> SeriesProcessor:
    pipeline = InferencePipeline.from_model_dir(
        REPO_ROOT / "inference" / "bundled_model", providers=["CPUExecutionProvider"],
        intra_op_threads=1,
    )
    return SeriesProcessor(pipeline, uid_root=UID_ROOT, series_number_base=9000,
                           rules=SelectionRules())


def _referenced(seg: pydicom.Dataset) -> list[str]:
    return [
        str(item.SourceImageSequence[0].ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for item in frame.DerivationImageSequence
    ]


def test_released_pixel_data_gives_the_same_results(series, processor):
    datasets = read_series(series)
    kept = processor.process_datasets(copy.deepcopy(datasets))
    released = processor.process_datasets(datasets, release_pixel_data=True)
    assert not any("PixelData" in ds for ds in datasets)
    seg_kept, seg_released = kept.objects.seg, released.objects.seg
    assert int(seg_kept.NumberOfFrames) == int(seg_released.NumberOfFrames) > 0
    assert seg_kept.PixelData == seg_released.PixelData
    assert _referenced(seg_kept) == _referenced(seg_released)
    assert kept.result.analysis == released.result.analysis
    assert kept.image_count == released.image_count == len(series)


def test_process_files_releases_what_it_read(series, processor, monkeypatch):
    read: list[pydicom.Dataset] = []

    def keep(paths):
        datasets = read_series(paths)
        read.extend(datasets)
        return datasets

    monkeypatch.setattr("pacs_node.processing.read_series", keep)
    processed = processor.process_files(series)
    assert len(read) == len(series)
    assert not any("PixelData" in ds for ds in read)
    # The SEG and SR were built from headers only, and still reference every slice.
    sr_refs = {
        str(item.ReferencedSOPInstanceUID)
        for study in processed.objects.sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series}
    assert sources <= sr_refs
    assert int(processed.objects.seg.NumberOfFrames) > 0
