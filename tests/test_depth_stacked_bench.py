"""``bench/depth_stacked.py``: the 2D rewrite it times computes what the 3D graph does."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inference.bundled_model import BUNDLED_MODEL_DIR
from tests.bench_scripts import load_bench_script
from tests.e2e_fixtures import REPO_ROOT


def load_bench() -> ModuleType:
    return load_bench_script("depth_stacked")


def tiny_model() -> onnx.ModelProto:
    """Conv 3x3x3 (stride 1) -> LeakyRelu -> Conv 3x3x3 (stride 2x2x2, no activation)
    -> Conv 1x1x1 (not rewritable), on a 1 x 2 x 7 x 9 x 8 input."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3, 3],
                         pads=[1] * 6, strides=[1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["a1"], name="act1", alpha=0.01),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3, 3],
                         pads=[1] * 6, strides=[2, 2, 2]),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["y"], name="head", kernel_shape=[1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7, 9, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 5, 4])],
        [init("w1", (4, 2, 3, 3, 3)), init("b1", (4,)), init("w2", (3, 4, 3, 3, 3)),
         init("b2", (3,)), init("w3", (1, 3, 1, 1, 1)), init("b3", (1,))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_rewrite_gives_the_3d_outputs_with_2d_convolutions_only() -> None:
    bench = load_bench()
    model = tiny_model()
    assert bench.rewritable_convs(model) == ["conv1", "conv2"]
    x = np.random.default_rng(1).normal(size=(1, 2, 7, 9, 8)).astype(np.float32)
    expected = run(model, x)
    assert expected.shape == (1, 1, 4, 5, 4)
    for selected in ({"conv1"}, {"conv2"}, {"conv1", "conv2"}):
        rewritten = bench.depth_stacked(model, selected)
        onnx.checker.check_model(rewritten)
        np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-5, atol=1e-5)
        kernels = [tuple(a.ints) for n in rewritten.graph.node if n.op_type == "Conv"
                   for a in n.attribute if a.name == "kernel_shape"]
        assert kernels.count((3, 3)) == len(selected)
        assert kernels.count((3, 3, 3)) == 2 - len(selected)
    both = bench.depth_stacked(model, {"conv1", "conv2"})
    assert [n.op_type for n in both.graph.node].count("LeakyRelu") == 1  # moved, not doubled
    assert {i.name for i in both.graph.initializer}.isdisjoint({"w1", "w2"})
    assert len(model.graph.node) == 4  # the input graph is left alone
    with pytest.raises(ValueError, match="head"):
        bench.depth_stacked(model, {"head"})


@pytest.mark.slow
def test_the_script_checks_and_times_the_bundled_levels_with_3x3x3_blocks(
    tmp_path: Path,
) -> None:
    """On the bundled model itself when it is 3x3x3, else on its levels with full
    blocks and seeded weights (``bench/inference.py --kernels full``)."""
    model_dir = BUNDLED_MODEL_DIR
    manifest = json.loads((BUNDLED_MODEL_DIR / "manifest.json").read_text())
    if manifest["training"]["model_config"].get("factorised", False):
        model_dir = load_bench_script("inference").seeded_model_dir(
            BUNDLED_MODEL_DIR, "full", tmp_path / "full")
    graph = onnx.load(str(model_dir / "model.onnx")).graph
    full = [node for node in graph.node if node.op_type == "Conv" and any(
        attr.name == "kernel_shape" and list(attr.ints) == [3, 3, 3] for attr in node.attribute)]
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "depth_stacked.py"), "--model",
         str(model_dir), "--repeat", "1", "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["convolutions"] == len(full) > 10  # every 3x3x3 block; the 1x1x1 head stays
    assert result["max_abs_diff"] < 1e-4
    assert len(result["each"]) == len(full)
    assert all(item["unchanged_ms"] > 0 and item["rewritten_ms"] > 0 for item in result["each"])
