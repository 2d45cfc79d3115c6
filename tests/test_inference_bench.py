"""``bench/inference.py``: it times the network it says (``--kernels``, ``--checkpoint``)."""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import onnx
import pytest

from inference.bundled_model import BUNDLED_MODEL_DIR
from tests.bench_scripts import load_bench_script

pytestmark = pytest.mark.torch


def load_bench() -> ModuleType:
    return load_bench_script("inference")


def conv_kernels(model_dir: Path) -> list[tuple[int, ...]]:
    graph = onnx.load(str(model_dir / "model.onnx")).graph
    return [
        tuple(attr.ints)
        for node in graph.node if node.op_type == "Conv"
        for attr in node.attribute if attr.name == "kernel_shape"
    ]


def test_kernels_option_exports_the_bundled_levels_with_the_other_blocks(
    tmp_path: Path,
) -> None:
    bench = load_bench()
    bundled = json.loads((BUNDLED_MODEL_DIR / "manifest.json").read_text())
    bundled_factorised = bool(bundled["training"]["model_config"].get("factorised", False))
    other = "full" if bundled_factorised else "factorised"
    out = bench.seeded_model_dir(BUNDLED_MODEL_DIR, other, tmp_path / "model")
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["training"]["model_config"]
    assert config["factorised"] is (other == "factorised")
    for key in ("channels", "strides", "blocks"):
        assert config[key] == bundled["training"]["model_config"][key]
    factorised, full = (
        (conv_kernels(BUNDLED_MODEL_DIR), conv_kernels(out)) if bundled_factorised
        else (conv_kernels(out), conv_kernels(BUNDLED_MODEL_DIR))
    )
    assert factorised.count((1, 3, 3)) == factorised.count((3, 1, 1)) > 10
    assert factorised.count((3, 3, 3)) == 1  # the stem
    assert (1, 3, 3) not in full and full.count((3, 3, 3)) > 10
    assert manifest["input"] == bundled["input"] and manifest["outputs"] == bundled["outputs"]


def test_profile_names_the_nodes_as_well_as_the_operator_types() -> None:
    bench = load_bench()
    profile = bench.profile_ops(BUNDLED_MODEL_DIR, 1, 1)
    nodes, types = dict(profile["node"]), dict(profile["op"])
    assert "/network/decoder/fuse.3/fuse.3.0/Conv" in nodes
    assert "FusedConv" in types and "/network/decoder/fuse.3/fuse.3.0/Conv" not in types
    assert all(ms >= 0 for ms in nodes.values()) and sum(nodes.values()) > 0
    assert len(nodes) > len(types)
    assert sum(nodes.values()) == pytest.approx(sum(types.values()))  # one profile, two views


def test_a_checkpoint_of_another_network_is_refused(tmp_path: Path) -> None:
    """torch would time the checkpoint and ONNX Runtime the model directory's graph."""
    from inference.model import ModelConfig

    bench = load_bench()
    bundled = ModelConfig(task="joint", classifier_grad_scale=0.1).to_dict()
    # the same network: classifier_grad_scale acts in training only
    bench.check_same_network(ModelConfig(task="joint").to_dict(), bundled, tmp_path / "c.pt",
                             BUNDLED_MODEL_DIR)
    bench.check_same_network(ModelConfig(task="joint").to_dict(), None, tmp_path / "c.pt",
                             BUNDLED_MODEL_DIR)
    thinner = ModelConfig(task="joint", channels=(8, 8, 24, 96, 192)).to_dict()
    with pytest.raises(SystemExit, match="export the checkpoint"):
        bench.check_same_network(thinner, bundled, tmp_path / "c.pt", BUNDLED_MODEL_DIR)
    factorised = ModelConfig(task="joint", factorised=True).to_dict()
    with pytest.raises(SystemExit, match="factorised True against False"):
        bench.check_same_network(factorised, bundled, tmp_path / "c.pt", BUNDLED_MODEL_DIR)
