"""``bench/cuda.py``: a clear refusal without CUDA, and the figures it computes.

CI has no GPU, so the CUDA measurement itself is run by hand on a GPU machine
(its figures are in docs/performance.md). Here the script's refusal is
checked for real, and its measuring code runs with the CPU provider standing
in for CUDA: two separate sessions of the same type, so their results must
agree exactly, and each ratio must be the quotient of the two sides' figures.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

from inference.bundled_model import BUNDLED_MODEL_DIR
from tests.bench_scripts import load_bench_script
from tests.e2e_fixtures import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "cuda.py"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def load_bench() -> ModuleType:
    return load_bench_script("cuda")


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script's module with the CPU provider standing in for CUDA."""
    module = load_bench()
    monkeypatch.setitem(module.SIDES, "cuda", "CPUExecutionProvider")
    return module


def test_without_cuda_the_script_says_so_and_exits_2() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--json", "--slices", "20",
                           "--repeat", "2", "--pipeline-repeat", "1"],
                          capture_output=True, text=True, timeout=600, check=False)
    if HAS_CUDA:  # a GPU machine: the real measurement must succeed
        assert done.returncode == 0, done.stderr
        assert '"ratio_cuda_over_cpu"' in done.stdout
    else:
        assert done.returncode == 2
        assert "no CUDAExecutionProvider" in done.stderr
        assert "onnxruntime-gpu" in done.stderr
        assert "Traceback" not in done.stderr


def test_model_latency_ratio_is_the_quotient_of_the_medians(bench: ModuleType) -> None:
    result = bench.model_latency(BUNDLED_MODEL_DIR, threads=1, repeat=4)
    assert result["input_shape"] == [1, 1, 64, 96, 96]
    for side in ("cuda", "cpu"):
        assert 0 < result[side]["median_s"] <= result[side]["p90_s"]
    assert result["ratio_cuda_over_cpu"] == pytest.approx(
        result["cuda"]["median_s"] / result["cpu"]["median_s"]
    )


def test_pipeline_latency_compares_two_separate_runs(bench: ModuleType) -> None:
    result = bench.pipeline_latency(BUNDLED_MODEL_DIR, slices=24, threads=1, repeat=1)
    agreement = result["agreement"]
    assert agreement["lesion_voxels_cuda"] == agreement["lesion_voxels_cpu"]
    assert agreement["lesion_mask_dice"] == 1.0
    assert agreement["max_abs_class_probability_difference"] == 0.0
    assert result["ratio_cuda_over_cpu"] == pytest.approx(
        result["cuda"]["total"] / result["cpu"]["total"]
    )
    assert result["cuda"]["total"] > 0 and result["cpu"]["total"] > 0


def test_pipeline_stages_cover_read_to_analysis(bench: ModuleType, tmp_path: Path) -> None:
    from inference.pipeline import InferencePipeline

    files = bench._write_series(24, tmp_path)
    assert len(files) == 24
    pipeline = InferencePipeline(bench._session(BUNDLED_MODEL_DIR, "CPUExecutionProvider", 1))
    stages, result = bench._pipeline_once(files, pipeline)
    assert set(stages) == {"read", "volume", "pipeline", "preprocess", "inference",
                           "postprocess", "analysis", "total"}
    assert stages["total"] >= stages["read"] + stages["volume"] + stages["pipeline"] - 1e-6
    assert stages["pipeline"] >= stages["inference"] > 0
    assert result.lesion_mask.shape == (24, 512, 512)
    assert np.isclose(sum(result.class_probabilities), 1.0, atol=1e-5)


def test_a_session_that_falls_back_is_an_error_not_a_figure() -> None:
    bench = load_bench()
    if HAS_CUDA:  # a GPU machine: the CUDA session must really run on CUDA
        session = bench._session(BUNDLED_MODEL_DIR, "CUDAExecutionProvider", 1)
        assert session.provider == "CUDAExecutionProvider"
        return
    with pytest.raises(RuntimeError, match="asked for CUDAExecutionProvider"):
        bench._session(BUNDLED_MODEL_DIR, "CUDAExecutionProvider", 1)
