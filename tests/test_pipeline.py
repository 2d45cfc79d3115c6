"""The inference pipeline end to end with a tiny ONNX graph (and the bundled model)."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from inference import phantom
from inference.errors import InferenceError
from inference.geometry import Geometry
from inference.pipeline import InferencePipeline, class_probabilities
from inference.result import InferenceResult
from inference.session import load_model
from inference.volume import build_volume, read_series
from tests.manifest_fixtures import make_manifest
from tests.onnx_fixtures import LESION_HU, band_model_dir, synthetic_chest

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO_ROOT / "inference" / "bundled_model"
LESIONS = (((-60.0, 0.0, 30.0), 20.0), ((60.0, 10.0, -40.0), 16.0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> InferencePipeline:
    model_dir = band_model_dir(
        tmp_path_factory.mktemp("model") / "band", shape=(32, 64, 64), spacing=(6.0, 6.0, 6.0)
    )
    return InferencePipeline(load_model(model_dir, intra_op_threads=1))


@pytest.mark.parametrize("feet_first", [False, True])
def test_end_to_end_on_a_synthetic_chest(
    pipeline: InferencePipeline, feet_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    hu, geometry, truth = synthetic_chest(feet_first=feet_first, lesions=LESIONS)
    with caplog.at_level(logging.INFO, logger="inference.pipeline"):
        result = pipeline.run(hu, geometry)
    assert isinstance(result, InferenceResult)
    # Masks on the source grid.
    assert result.geometry == geometry
    assert result.lesion_mask.shape == geometry.shape and result.lesion_mask.dtype == bool
    assert result.lung_mask.shape == geometry.shape and result.lung_mask.dtype == np.uint8
    reference = (hu >= LESION_HU - 60) & (truth > 0)
    assert dice(result.lesion_mask, reference) > 0.5
    assert not (result.lesion_mask & (result.lung_mask == 0)).any()
    assert dice(result.lung_mask == 1, truth == 1) > 0.95
    assert dice(result.lung_mask == 2, truth == 2) > 0.95
    # Classification: probabilities in manifest order, summing to 1.
    assert result.class_keys == ("covid19", "cap", "no_pneumonia")
    assert math.fsum(result.class_probabilities) == pytest.approx(1.0, abs=1e-12)
    assert result.predicted_class == "covid19"
    # Analysis: the right-upper sphere is the bigger one, then the left-lower one.
    lesions = result.analysis.lesions
    assert [(lesion.side, lesion.zone) for lesion in lesions] == [
        ("right", "upper"), ("left", "lower")]
    assert sum(lesion.voxel_count for lesion in lesions) == int(result.lesion_mask.sum())
    assert result.analysis.total_lesion_volume_ml == pytest.approx(
        result.lesion_mask.sum() * geometry.voxel_volume_ml)
    # Bookkeeping.
    assert result.provider == "CPUExecutionProvider"
    assert (result.model_name, result.model_version) == ("test model", "0.0.1")
    timings = result.timings
    assert min(timings.preprocess, timings.inference, timings.postprocess, timings.analysis) > 0
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["predicted_class"] == "covid19"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("CPUExecutionProvider" in m and "predicted covid19" in m for m in messages)


def test_slice_order_does_not_change_the_analysis(pipeline: InferencePipeline) -> None:
    head_first = pipeline.run(*synthetic_chest(lesions=LESIONS)[:2])
    feet_first = pipeline.run(*synthetic_chest(feet_first=True, lesions=LESIONS)[:2])
    for a, b in zip(head_first.analysis.involvement, feet_first.analysis.involvement):
        assert a.region == b.region
        assert a.lung_volume_ml == pytest.approx(b.lung_volume_ml, rel=0.02)
        assert a.lesion_volume_ml == pytest.approx(b.lesion_volume_ml, rel=0.05, abs=0.5)
    assert head_first.class_probabilities == pytest.approx(feet_first.class_probabilities, abs=1e-3)


def test_no_lesions(pipeline: InferencePipeline) -> None:
    hu, geometry, _ = synthetic_chest()
    result = pipeline.run(hu, geometry)
    assert not result.has_lesions
    assert result.analysis.lesions == ()
    assert result.analysis.region("total").lung_volume_ml > 1000
    assert result.predicted_class == "no_pneumonia"


def test_real_ct_through_build_volume(pipeline: InferencePipeline, shared_data: Path) -> None:
    volume = build_volume(read_series([shared_data / "ct" / "lung-pet-ct-dx-a0002"]))
    result = pipeline.run_volume(volume)
    assert result.lesion_mask.shape == (30, 512, 512)
    assert result.geometry is volume.geometry
    total = result.analysis.region("total")
    assert 1500 < total.lung_volume_ml < 8000
    assert math.fsum(result.class_probabilities) == pytest.approx(1.0)
    assert not (result.lesion_mask & (result.lung_mask == 0)).any()


def test_argument_checks(pipeline: InferencePipeline) -> None:
    hu, geometry, _ = synthetic_chest(shape=(8, 16, 16), spacing=(10.0, 20.0, 20.0))
    with pytest.raises(ValueError, match="hu"):
        pipeline.run(hu[:-1], geometry)
    with pytest.raises(TypeError, match="geometry"):
        pipeline.run(hu, geometry.to_dict())
    with pytest.raises(TypeError, match="hu"):
        pipeline.run(hu.astype(bool), geometry)
    with pytest.raises(TypeError, match="model"):
        InferencePipeline("model dir")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_lesion_volume_ml"):
        InferencePipeline(pipeline.model, min_lesion_volume_ml=-0.5)


def test_class_probabilities_contract() -> None:
    manifest = make_manifest()
    assert class_probabilities(np.array([[0.2, 0.3, 0.5]], np.float32), manifest) == pytest.approx(
        (0.2, 0.3, 0.5))
    with pytest.raises(InferenceError, match="sums to"):
        class_probabilities(np.array([[0.6, 0.3, 0.2]]), manifest)
    with pytest.raises(InferenceError, match="negative"):
        class_probabilities(np.array([[1.5, -0.5, 0.0]]), manifest)
    with pytest.raises(InferenceError, match="3 classes"):
        class_probabilities(np.array([[0.5, 0.5]]), manifest)
    with pytest.raises(InferenceError, match="non-finite"):
        class_probabilities(np.array([[np.nan, 0.5, 0.5]]), manifest)


def test_from_model_dir(tmp_path: Path) -> None:
    model_dir = band_model_dir(tmp_path / "m", shape=(8, 16, 16), spacing=(20.0, 24.0, 24.0))
    pipeline = InferencePipeline.from_model_dir(
        model_dir, providers=["CPUExecutionProvider"], intra_op_threads=1, min_lesion_volume_ml=0.5
    )
    assert pipeline.min_lesion_volume_ml == 0.5
    assert pipeline.manifest.grid.shape == (8, 16, 16)


@pytest.mark.slow
def test_bundled_model_on_a_phantom() -> None:
    spec = phantom.sample_spec(20250, "covid19")
    fov = spec.matrix * spec.pixel_spacing
    spec = dataclasses.replace(spec, matrix=256, pixel_spacing=fov / 256)
    case = phantom.generate_phantom(spec)
    pipeline = InferencePipeline.from_model_dir(
        BUNDLED_MODEL, providers=["CPUExecutionProvider"], intra_op_threads=2
    )
    result = pipeline.run(case.hu, case.geometry)
    assert isinstance(case.geometry, Geometry)
    assert case.lesion_mask.any()
    assert dice(result.lesion_mask, case.lesion_mask) >= 0.5
    assert result.analysis.region("total").lung_volume_ml > 0
