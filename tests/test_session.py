"""The ONNX Runtime session: loading, manifest/graph checks, providers, running."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from inference.errors import ManifestError, ModelLoadError
from inference.session import ModelSession, external_tensors, load_model, resolve_providers
from tests.manifest_fixtures import manifest_dict
from tests.onnx_fixtures import OFFSET_HU, SCALE_HU, band_graph, band_model_dir, write_model_dir

SHAPE = (4, 8, 8)


def _input(hu: np.ndarray) -> np.ndarray:
    return ((np.clip(hu, -1024, 600) - OFFSET_HU) / SCALE_HU).astype(np.float32)[None, None]


def test_loads_and_runs_on_cpu(tmp_path: Path) -> None:
    model_dir = band_model_dir(tmp_path / "m", shape=SHAPE, with_lung=True)
    session = load_model(model_dir, providers=["CPUExecutionProvider"], intra_op_threads=1)
    assert isinstance(session, ModelSession)
    assert session.provider == "CPUExecutionProvider"
    assert session.manifest.model_name == "test model"
    hu = np.full(SHAPE, -850.0)
    hu[1:3, 2:5, 2:5] = 300.0  # inside the lesion band
    outputs = session.run(_input(hu))
    assert set(outputs) == {"lesion_probability", "class_probabilities", "lung_probability"}
    lesion = outputs["lesion_probability"][0, 0]
    assert lesion.shape == SHAPE
    assert np.all(lesion[1:3, 2:5, 2:5] > 0.99)
    assert np.all(lesion[0] < 0.01)
    assert np.all(outputs["lung_probability"][0, 0][0] > 0.99)
    assert np.all(outputs["lung_probability"][0, 0][1:3, 2:5, 2:5] < 0.01)
    probabilities = outputs["class_probabilities"]
    assert probabilities.shape == (1, 3)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    # 18/256 of the grid is lesion: "covid19" wins.
    assert int(np.argmax(probabilities)) == 0


def test_run_checks_the_tensor(tmp_path: Path) -> None:
    session = load_model(band_model_dir(tmp_path / "m", shape=SHAPE), intra_op_threads=1)
    with pytest.raises(ValueError, match="tensor"):
        session.run(np.zeros((1, 1, 4, 8, 9), np.float32))
    with pytest.raises(TypeError, match="tensor"):
        session.run([0.0])  # type: ignore[arg-type]
    # float64 input is converted to the manifest's dtype.
    out = session.run(np.zeros((1, 1, *SHAPE), np.float64))
    assert out["lesion_probability"].dtype == np.float32


def test_dynamic_batch_dimension_is_compatible(tmp_path: Path) -> None:
    model_dir = write_model_dir(
        tmp_path / "m", band_graph(SHAPE, dynamic_batch=True), manifest_dict(shape=SHAPE)
    )
    session = load_model(model_dir)
    assert session.run(np.zeros((1, 1, *SHAPE), np.float32))["lesion_probability"].shape == (
        1, 1, *SHAPE)


ManifestChange = Callable[[dict[str, Any]], None] | None


def _mismatch(
    tmp_path: Path, graph_kwargs: dict[str, Any], manifest_change: ManifestChange = None
) -> Path:
    manifest = manifest_dict(shape=SHAPE)
    if manifest_change is not None:
        manifest_change(manifest)
    return write_model_dir(tmp_path / "m", band_graph(SHAPE, **graph_kwargs), manifest)


def _rename_input(m: dict[str, Any]) -> None:
    m["input"]["name"] = "image"


def _rename_output(m: dict[str, Any]) -> None:
    m["outputs"][0]["name"] = "lesion"


@pytest.mark.parametrize(
    "graph_kwargs,manifest_change,field,pattern",
    [
        ({}, _rename_input, "input.name", '"image" is not an input of the graph'),
        ({"input_rank": 4}, None, "input.shape", "rank 5 but graph tensor \"ct\" has rank 4"),
        ({"input_dtype": TensorProto.FLOAT16}, None, "input.dtype", "tensor\\(float16\\)"),
        ({}, _rename_output, "outputs[0].name", '"lesion" is not an output'),
        ({"n_classes": 4}, None, "outputs[1].shape", "\\[1, 3\\] but graph tensor"),
        ({"extra_input": True}, None, "input.name", "inputs the manifest does not describe: extra"),
        ({"lesion_name": "seg"}, None, "outputs[0].name", '"lesion_probability" is not an output'),
    ],
)
def test_manifest_graph_mismatch_names_the_field(
    tmp_path: Path,
    graph_kwargs: dict[str, Any],
    manifest_change: ManifestChange,
    field: str,
    pattern: str,
) -> None:
    model_dir = _mismatch(tmp_path, graph_kwargs, manifest_change)
    with pytest.raises(ManifestError, match=pattern) as info:
        load_model(model_dir)
    assert info.value.field == field


def test_wrong_grid_shape_in_graph(tmp_path: Path) -> None:
    manifest = manifest_dict(shape=SHAPE)
    model_dir = write_model_dir(tmp_path / "m", band_graph((4, 8, 9)), manifest)
    with pytest.raises(ManifestError) as info:
        load_model(model_dir)
    assert info.value.field == "input.shape"


def test_invalid_manifest_is_a_manifest_error(tmp_path: Path) -> None:
    model_dir = band_model_dir(tmp_path / "m", shape=SHAPE)
    data = json.loads((model_dir / "manifest.json").read_text())
    del data["intensity"]
    (model_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as info:
        load_model(model_dir)
    assert info.value.field == "intensity"


def test_missing_files_are_model_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    model_dir = band_model_dir(tmp_path / "m", shape=SHAPE)
    (model_dir / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match="model.onnx is missing"):
        load_model(model_dir)
    model_dir = band_model_dir(tmp_path / "n", shape=SHAPE)
    (model_dir / "manifest.json").unlink()
    with pytest.raises(ModelLoadError, match="manifest.json is missing"):
        load_model(model_dir)


def test_corrupt_model_is_a_model_load_error(tmp_path: Path) -> None:
    model_dir = band_model_dir(tmp_path / "m", shape=SHAPE)
    data = (model_dir / "model.onnx").read_bytes()
    (model_dir / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.onnx"):
        load_model(model_dir)
    (model_dir / "model.onnx").write_bytes(b"this is not a protobuf at all")
    with pytest.raises(ModelLoadError):
        load_model(model_dir)


def test_external_data_is_refused(tmp_path: Path) -> None:
    model_dir = write_model_dir(
        tmp_path / "m", band_graph(SHAPE), manifest_dict(shape=SHAPE), external_data=True
    )
    assert (model_dir / "model.data").is_file()
    # onnxruntime itself would load it; the node refuses it.
    with pytest.raises(ModelLoadError, match="external data"):
        load_model(model_dir)
    assert external_tensors((model_dir / "model.onnx").read_bytes())
    self_contained = band_graph(SHAPE).SerializeToString()
    assert external_tensors(self_contained) == []


def test_cuda_request_falls_back_to_cpu_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = band_model_dir(tmp_path / "m", shape=SHAPE)
    with caplog.at_level(logging.WARNING, logger="inference.session"):
        session = load_model(
            model_dir, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    assert session.provider == "CPUExecutionProvider"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("CUDAExecutionProvider" in r.getMessage() and "falling back" in r.getMessage()
               for r in warnings)
    assert session.run(np.zeros((1, 1, *SHAPE), np.float32))["class_probabilities"].shape == (1, 3)


def test_default_providers_end_on_cpu_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="inference.session"):
        session = load_model(band_model_dir(tmp_path / "m", shape=SHAPE))
    assert session.provider == "CPUExecutionProvider"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("execution provider CPUExecutionProvider" in r.getMessage() for r in caplog.records)


def test_provider_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="NoSuchExecutionProvider"):
        resolve_providers(["NoSuchExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ValueError, match="last"):
        resolve_providers(["CPUExecutionProvider", "CUDAExecutionProvider"])
    with pytest.raises(TypeError, match="providers"):
        resolve_providers("CPUExecutionProvider")
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers([])[-1] == "CPUExecutionProvider"


def test_thread_arguments_are_validated(tmp_path: Path) -> None:
    model_dir = band_model_dir(tmp_path / "m", shape=SHAPE)
    with pytest.raises(ValueError, match="intra_op_threads"):
        load_model(model_dir, intra_op_threads=-1)
    with pytest.raises(TypeError, match="inter_op_threads"):
        load_model(model_dir, inter_op_threads=1.5)  # type: ignore[arg-type]
    session = load_model(model_dir, intra_op_threads=1, inter_op_threads=1)
    assert session.provider == "CPUExecutionProvider"


def test_band_graph_is_a_valid_onnx_model() -> None:
    model = band_graph(SHAPE, with_lung=True)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
