"""ONNX export: one self-contained file, a valid manifest, parity with torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from inference.export import (
    ExportError,
    build_manifest,
    check_onnx_file,
    export_model,
    load_checkpoint_network,
    parity_input,
)
from inference.manifest import Manifest
from inference.model import DeepSCNet, ModelConfig, build_model
from inference.session import load_model
from pacs_node.cli import main

pytestmark = pytest.mark.torch

GRID = (16, 32, 32)
SPACING = (20.0, 12.0, 12.0)
TINY = dict(channels=(4, 8, 16), strides=((1, 2, 2), (2, 2, 2)), blocks=(1, 1, 1))


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return build_manifest(grid_shape=GRID, spacing_mm=SPACING, training={"data": "test"})


@pytest.fixture(scope="module")
def phantom_tensor(manifest: Manifest) -> np.ndarray:
    """A real prepared phantom scan on the tiny grid."""
    return parity_input(manifest, seed=3, matrix=64)


def _network(task: str = "joint") -> DeepSCNet:
    torch.manual_seed(1)
    return build_model(ModelConfig(task=task, **TINY)).eval()


def test_export_writes_one_self_contained_opset17_file_and_a_valid_manifest(
    tmp_path: Path, manifest: Manifest, phantom_tensor: np.ndarray
) -> None:
    network = _network()
    report = export_model(network, tmp_path, manifest, parity_tensor=phantom_tensor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "model.onnx"]
    model = onnx.load(str(tmp_path / "model.onnx"))
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17 == report.opset
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["ct"]
    assert [o.name for o in model.graph.output] == ["lesion_probability", "class_probabilities"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, *GRID]  # static shapes
    metadata = {p.key: p.value for p in model.metadata_props}
    assert "Research use only" in metadata["intended_use"]
    assert json.loads(metadata["classes"]) == ["covid19", "cap", "no_pneumonia"]
    # the manifest round-trips and the runtime session accepts the directory
    assert Manifest.load(tmp_path).to_dict() == manifest.to_dict()
    session = load_model(tmp_path, providers=["CPUExecutionProvider"], intra_op_threads=1)
    outputs = session.run(phantom_tensor)
    with torch.no_grad():
        lesion, classes = network(torch.from_numpy(phantom_tensor))
    assert np.abs(outputs["lesion_probability"] - torch.sigmoid(lesion).numpy()).max() <= 1e-4
    assert np.abs(outputs["class_probabilities"] - torch.softmax(classes, 1).numpy()).max() <= 1e-4
    assert report.parity_max_abs_diff <= 1e-4
    assert report.size_bytes == (tmp_path / "model.onnx").stat().st_size


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_single_task_variants_export_under_the_same_contract(
    tmp_path: Path, manifest: Manifest, phantom_tensor: np.ndarray, task: str
) -> None:
    export_model(_network(task), tmp_path, manifest, parity_tensor=phantom_tensor)
    outputs = load_model(tmp_path, providers=["CPUExecutionProvider"]).run(phantom_tensor)
    assert outputs["lesion_probability"].shape == (1, 1, *GRID)
    assert outputs["class_probabilities"].shape == (1, 3)


class _TracedBranch(DeepSCNet):
    """Data-dependent control flow: the tracer freezes the branch of the dummy input."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lesion, classes = super().forward(x)
        if float(x.mean()) > -0.5:  # the export dummy is zeros, phantoms are mostly air
            return lesion, classes
        return lesion + 3.0, classes


def test_parity_failure_fails_the_export_and_leaves_nothing(
    tmp_path: Path, manifest: Manifest, phantom_tensor: np.ndarray
) -> None:
    assert float(phantom_tensor.mean()) < -0.5
    torch.manual_seed(1)
    network = _TracedBranch(ModelConfig(task="joint", **TINY)).eval()
    with pytest.raises(ExportError, match="parity"):
        export_model(network, tmp_path, manifest, parity_tensor=phantom_tensor)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_and_checks_the_grid(
    tmp_path: Path, manifest: Manifest, phantom_tensor: np.ndarray
) -> None:
    export_model(_network(), tmp_path, manifest, parity_tensor=phantom_tensor)
    with pytest.raises(FileExistsError):
        export_model(_network(), tmp_path, manifest, parity_tensor=phantom_tensor)
    export_model(_network(), tmp_path, manifest, parity_tensor=phantom_tensor, overwrite=True)
    odd = build_manifest(grid_shape=(15, 32, 32), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="divisible"):
        export_model(_network(), tmp_path / "odd", odd, overwrite=True)
    with pytest.raises(ValueError, match="parity_tensor"):
        export_model(_network(), tmp_path / "x", manifest, parity_tensor=phantom_tensor[..., :8])


def test_check_onnx_file_rejects_external_data_and_old_opsets(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((256, 256), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        initializer=[weight],
    )
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save_model(old, str(tmp_path / "old.onnx"))
    with pytest.raises(ExportError, match="opset 13"):
        check_onnx_file(tmp_path / "old.onnx")
    new = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(new, str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    with pytest.raises(ExportError, match="external data"):
        check_onnx_file(tmp_path / "ext.onnx")


def _checkpoint(network: DeepSCNet) -> dict[str, object]:
    """A training checkpoint of ``network`` as ``deepsc-node train`` writes it (the older
    format, without the precision)."""
    return {
        "format": "deepsc-node-checkpoint",
        "model_config": network.config.to_dict(),
        "model_state": network.state_dict(),
        "step": 3,
        "train_seconds": 1.0,
        "grid": {"shape": list(GRID), "spacing_mm": list(SPACING), "placement": "lung_center",
                 "fill_hu": -1024.0},
        "intensity": {"clip_hu": [-1024.0, 600.0], "offset_hu": -212.0, "scale_hu": 812.0},
        "data": {"source": {"kind": "phantoms", "seed": 1, "n": 9, "matrix": 64},
                 "train_cases": 6, "val_cases": 3},
        "train_config": {"batch_size": 2, "seed": 0},
        "validation": [{"dice_mean": 0.5, "accuracy": 0.5}],
    }


def test_export_command_from_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    network = _network()
    checkpoint = _checkpoint(network)
    path = tmp_path / "last.pt"
    torch.save(checkpoint, str(path))
    rebuilt, _ = load_checkpoint_network(path)
    x = torch.randn(1, 1, *GRID)
    assert torch.equal(rebuilt(x)[1], network(x)[1])
    out = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-m", "pacs_node.cli", "export", "--checkpoint", str(path),
         "--out", str(out), "--model-version", "0.0.9"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["opset"] == 17 and report["parity_max_abs_diff"] <= 1e-4
    manifest = Manifest.load(out)
    assert manifest.model_version == "0.0.9"
    assert manifest.training["task"] == "joint"
    assert "9 synthetic chest-CT phantoms" in manifest.training["data"]
    assert manifest.training["precision"] == "not recorded"  # a checkpoint from before
    assert manifest.grid.shape == GRID
    assert manifest.lesion_gate == "no_pneumonia"  # joint checkpoints are gated by default
    assert json.loads((out / "manifest.json").read_text())["lesion_gate"] == "no_pneumonia"
    assert manifest.training["loss"].startswith("task-aware: uncertainty-weighted")
    ungated = tmp_path / "ungated"
    assert main(["export", "--checkpoint", str(path), "--out", str(ungated), "--no-lesion-gate"]) == 0
    assert Manifest.load(ungated).lesion_gate is None
    assert "lesion_gate" not in json.loads((ungated / "manifest.json").read_text())
    assert main(["export", "--checkpoint", str(path), "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else"}, str(bad))
    with pytest.raises(ExportError, match="not a deepsc-node"):
        load_checkpoint_network(bad)


def test_manifest_records_the_training_precision() -> None:
    from inference.commands import _training_precision

    assert _training_precision({"precision": "bf16"}, {"precision": "auto"}) == "bf16"
    assert _training_precision({"precision": "fp32"}, {"precision": "auto"}) == "fp32"
    # older checkpoints: only a forced precision is known
    assert _training_precision({}, {"precision": "fp32"}) == "fp32"
    assert _training_precision({}, {"precision": "auto"}) == "not recorded"


def test_lesion_gate_multiplies_the_map_by_the_pneumonia_probability(
    tmp_path: Path, phantom_tensor: np.ndarray
) -> None:
    gated = build_manifest(grid_shape=GRID, spacing_mm=SPACING, lesion_gate="no_pneumonia")
    network = _network()
    # A lesion decoder that calls every voxel a lesion, so that the gate is what moves the map.
    with torch.no_grad():
        network.decoder.head.bias.fill_(8.0)
    export_model(network, tmp_path, gated, parity_tensor=phantom_tensor)
    assert Manifest.load(tmp_path).lesion_gate == "no_pneumonia"
    outputs = load_model(tmp_path, providers=["CPUExecutionProvider"]).run(phantom_tensor)
    with torch.no_grad():
        lesion, classes = network(torch.from_numpy(phantom_tensor))
    p_classes = torch.softmax(classes, 1).numpy()
    expected = torch.sigmoid(lesion).numpy() * (1.0 - p_classes[0, 2])
    assert np.abs(outputs["lesion_probability"] - expected).max() <= 1e-4
    assert np.abs(outputs["class_probabilities"] - p_classes).max() <= 1e-4
    # the map really moved: the ungated map is ~1 everywhere
    assert outputs["lesion_probability"].max() <= 1.0 - p_classes[0, 2] + 1e-4 < 0.999


def test_export_command_gates_joint_checkpoints_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "seg.pt"
    torch.save(_checkpoint(_network("segmentation")), str(path))
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "gated"),
                 "--lesion-gate"]) == 1
    err = capsys.readouterr().err
    assert "joint network" in err and "Traceback" not in err
    assert not (tmp_path / "gated" / "model.onnx").exists()
    # without the option a single-task checkpoint exports ungated
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "plain")]) == 0
    assert Manifest.load(tmp_path / "plain").lesion_gate is None
    assert Manifest.load(tmp_path / "plain").training["loss"] == "segmentation only: Dice + BCE"


def test_lesion_gate_needs_a_joint_network_and_a_class_key(
    tmp_path: Path, manifest: Manifest, phantom_tensor: np.ndarray
) -> None:
    from inference.manifest import ManifestError
    from inference.model import ProbabilityModel

    gated = build_manifest(grid_shape=GRID, spacing_mm=SPACING, lesion_gate="no_pneumonia")
    with pytest.raises(ValueError, match="joint network"):
        export_model(_network("segmentation"), tmp_path, gated, parity_tensor=phantom_tensor)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="gate_class"):
        ProbabilityModel(_network(), gate_class="pneumonia")
    data = gated.to_dict()
    data["lesion_gate"] = "pneumonia"
    with pytest.raises(ManifestError, match="lesion_gate"):
        Manifest.from_dict(data)
    # manifests written before the gate existed load as ungated
    old = manifest.to_dict()
    assert "lesion_gate" not in old
    assert Manifest.from_dict(old).lesion_gate is None


def test_the_manifest_loss_line_follows_the_training_settings() -> None:
    from inference.commands import _loss_summary

    assert _loss_summary("joint", {"coupling_weight": 0.1}) == (
        "task-aware: uncertainty-weighted (Dice+BCE) and CE plus lesion/class coupling (weight 0.1)"
    )
    assert _loss_summary("joint", {"coupling_weight": 0.0}).endswith("no coupling term")
    assert _loss_summary("joint", {"adaptive_weights": False, "coupling_weight": 0.2}).startswith(
        "task-aware: fixed"
    )
    assert _loss_summary("joint", {"adaptive_weights": False, "task_weights": [1.0, 0.1],
                                   "coupling_weight": 0.1}) == (
        "task-aware: fixed weights 1 and 0.1 on (Dice+BCE) and CE plus lesion/class coupling "
        "(weight 0.1)"
    )
    assert _loss_summary("segmentation", {}) == "segmentation only: Dice + BCE"


def test_the_manifest_command_drops_the_script_path() -> None:
    from inference.commands import _portable_command

    assert _portable_command("/opt/venv/bin/deepsc-node train --seed 1") == (
        "deepsc-node train --seed 1"
    )
    assert _portable_command("deepsc-node train --seed 1") == "deepsc-node train --seed 1"
    assert _portable_command("python -m pacs_node.cli train") == "python -m pacs_node.cli train"
