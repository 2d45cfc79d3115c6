"""The lesion gate added to an exported model's ONNX graph (``deepsc-node gate``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from inference.export import ExportError, build_manifest, export_model, parity_input
from inference.gate import UNGATED_SUFFIX, add_lesion_gate
from inference.manifest import Manifest
from inference.model import DeepSCNet, ModelConfig, build_model
from inference.session import load_model
from pacs_node.cli import main

pytestmark = pytest.mark.torch

GRID = (16, 32, 32)
SPACING = (20.0, 12.0, 12.0)
TINY = dict(channels=(4, 8, 16), strides=((1, 2, 2), (2, 2, 2)), blocks=(1, 1, 1))


def _network(task: str = "joint") -> DeepSCNet:
    torch.manual_seed(1)
    network = build_model(ModelConfig(task=task, **TINY)).eval()
    if task == "joint":
        # A lesion decoder that calls every voxel a lesion and a classifier that is
        # unsure of "no pneumonia", so that the gate visibly moves the map.
        with torch.no_grad():
            network.decoder.head.bias.fill_(8.0)
    return network


@pytest.fixture(scope="module")
def phantom_tensor() -> np.ndarray:
    manifest = build_manifest(grid_shape=GRID, spacing_mm=SPACING)
    return parity_input(manifest, seed=3, matrix=64)


def _export(directory: Path, x: np.ndarray, task: str = "joint", gate: str | None = None,
            version: str = "1.0.0") -> Path:
    manifest = build_manifest(
        grid_shape=GRID, spacing_mm=SPACING, model_version=version, lesion_gate=gate,
        training={"data": "test", "task": task},
    )
    export_model(_network(task), directory, manifest, parity_tensor=x)
    return directory


def test_the_gated_graph_is_the_exporters_gate_on_the_same_weights(
    tmp_path: Path, phantom_tensor: np.ndarray
) -> None:
    source = _export(tmp_path / "plain", phantom_tensor)
    report = add_lesion_gate(source, tmp_path / "gated", "1.0.1", parity_tensor=phantom_tensor)
    assert report.source_version == "1.0.0" and report.model_version == "1.0.1"
    assert report.parity_lesion_diff <= 1e-6 and report.parity_class_diff <= 1e-6
    assert 0.0 < report.parity_gate_factor < 0.999
    # the same network exported with the gate by torch gives the same outputs
    reference = _export(tmp_path / "torch-gated", phantom_tensor, gate="no_pneumonia")
    runs = {
        name: load_model(tmp_path / name, providers=["CPUExecutionProvider"]).run(phantom_tensor)
        for name in ("plain", "gated", "torch-gated")
    }
    for output in ("lesion_probability", "class_probabilities"):
        assert np.abs(runs["gated"][output] - runs["torch-gated"][output]).max() <= 1e-5
    # and the map really moved (ungated it is ~1 everywhere)
    assert runs["plain"]["lesion_probability"].min() > 0.99
    assert runs["gated"]["lesion_probability"].max() <= report.parity_gate_factor + 1e-6
    gated = Manifest.load(tmp_path / "gated")
    assert gated.lesion_gate == "no_pneumonia" == Manifest.load(reference).lesion_gate
    assert gated.model_version == "1.0.1"
    assert gated.training["derived_from"]["model_version"] == "1.0.0"
    assert gated.training["task"] == "joint"
    model = onnx.load(str(tmp_path / "gated" / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["lesion_probability", "class_probabilities"]
    # the classifier still reads the ungated map
    readers = [n for n in model.graph.node if "lesion_probability" + UNGATED_SUFFIX in n.input]
    assert any(n.op_type == "MaxPool" for n in readers)
    versions = [p.value for p in model.metadata_props if p.key == "model_version"]
    assert versions == ["1.0.1"]
    assert "1.0.1" in model.doc_string and "Research use only" in model.doc_string


def test_gate_refuses_what_cannot_be_gated_and_writes_nothing(
    tmp_path: Path, phantom_tensor: np.ndarray
) -> None:
    gated = _export(tmp_path / "gated", phantom_tensor, gate="no_pneumonia")
    plain = _export(tmp_path / "plain", phantom_tensor)
    segmentation = _export(tmp_path / "seg", phantom_tensor, task="segmentation")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="gated already"):
        add_lesion_gate(gated, out, "2.0.0", parity_tensor=phantom_tensor)
    with pytest.raises(ValueError, match="joint model"):
        add_lesion_gate(segmentation, out, "2.0.0", parity_tensor=phantom_tensor)
    with pytest.raises(ValueError, match="new version"):
        add_lesion_gate(plain, out, "1.0.0", parity_tensor=phantom_tensor)
    with pytest.raises(ValueError, match="gate_class"):
        add_lesion_gate(plain, out, "2.0.0", gate_class="pneumonia", parity_tensor=phantom_tensor)
    with pytest.raises(FileExistsError):
        add_lesion_gate(plain, gated, "2.0.0", parity_tensor=phantom_tensor)
    assert not out.exists()
    # a tolerance nothing can meet fails the parity check and leaves nothing behind
    with pytest.raises(ExportError, match="gate parity"):
        add_lesion_gate(plain, out, "2.0.0", parity_tensor=phantom_tensor, tolerance=-1.0)
    assert sorted(p.name for p in out.iterdir()) == []


def test_gate_command(
    tmp_path: Path, phantom_tensor: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _export(tmp_path / "plain", phantom_tensor)
    out = tmp_path / "gated"
    assert main(["gate", "--model", str(plain), "--out", str(out), "--model-version", "1.1.0",
                 "--parity-seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_version"] == "1.1.0" and report["gate_class"] == "no_pneumonia"
    assert Manifest.load(out).lesion_gate == "no_pneumonia"
    # the source is untouched
    assert Manifest.load(plain).lesion_gate is None
    assert main(["gate", "--model", str(out), "--out", str(tmp_path / "again"),
                 "--model-version", "1.2.0"]) == 1
    err = capsys.readouterr().err
    assert "gated already" in err and "Traceback" not in err
    assert main(["gate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x"),
                 "--model-version", "1.2.0"]) == 1
    assert "deepsc-node gate:" in capsys.readouterr().err
