"""Does ONNX Runtime run a 3x3x3 convolution faster as a 2D convolution? One run.

Usage (from the repository root)::

    /work/venv/bin/python bench/depth_stacked.py [--model inference/bundled_model]
        [--threads 2] [--repeat 10] [--json]

The question behind it (issue 6, item 5: ONNX Runtime <= 0.6x torch): ONNX
Runtime's CPU provider runs a 3D convolution as im2col + SGEMM, while its
2D convolutions can use MLAS's blocked NCHWc kernels. A ``3x3x3``
convolution with padding 1 is exactly a ``3x3`` 2D convolution over the
depth slices if the three depth neighbours of each slice are stacked as
channels::

    x [1, C, D, H, W] -> Pad depth by 1 -> Slice x3 (depth offsets 0, 1, 2, depth stride s_d)
      -> Concat (channels) [1, 3C, D', H, W] -> Transpose, Reshape [D', 3C, H, W]
      -> Conv 3x3 (weights W[:, :, k_d] stacked along the input channels, same bias,
         in-plane strides) -> LeakyRelu (moved here, element-wise)
      -> Reshape, Transpose [1, C_out, D', H', W']

:func:`depth_stacked` writes that rewrite into a copy of the model's graph
for the convolutions named (weights unchanged). The script checks that the
rewritten graph gives the model's outputs (largest absolute difference), then
times, in this process and alternating with the unchanged graph (median of
``--repeat`` calls after two warm-ups, ``--threads`` intra-op threads):
the whole graph with every ``3x3x3`` convolution rewritten, and each
convolution rewritten alone. Positive gains mean the rewrite is faster.

The question was asked of the ``3x3x3`` bundled model 1.1.1. The bundled
model 1.2.0 has (2+1)D blocks, whose only ``3x3x3`` convolution is the stem;
to time its levels with ``3x3x3`` blocks, give ``--model`` a directory written
by ``bench/inference.py``'s :func:`seeded_model_dir` with ``kernels="full"``
(as ``tests/test_depth_stacked_bench.py`` does), or 1.1.1 from git history
(``git show f0495d6:inference/bundled_model/model.onnx``, with its manifest).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.timing import median_p90, time_calls  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "inference" / "bundled_model"


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _shapes(model: Any) -> dict[str, list[int]]:
    """Static shape of every value of ``model`` (ONNX shape inference)."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    return {
        value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*graph.value_info, *graph.input, *graph.output]
    }


def rewritable_convs(model: Any) -> list[str]:
    """Names of the ``3x3x3`` convolutions with padding 1 and no dilation or groups."""
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in weights:
            continue
        shape = numpy_helper.to_array(weights[node.input[1]]).shape
        attrs = _attributes(node)
        if (
            shape[2:] == (3, 3, 3)
            and list(attrs.get("pads", [])) == [1] * 6
            and int(attrs.get("group", 1)) == 1
            and list(attrs.get("dilations", [1, 1, 1])) == [1, 1, 1]
            and len(node.input) == 3
        ):
            names.append(node.name)
    return names


def depth_stacked(model: Any, selected: set[str]) -> Any:
    """A copy of ``model`` with the convolutions ``selected`` rewritten as 2D ones.

    Parameters
    ----------
    model: onnx.ModelProto
        A graph with a batch of 1 and static shapes.
    selected: set[str]
        Node names, a subset of :func:`rewritable_convs`.

    Returns
    -------
    onnx.ModelProto
        The rewritten copy (see the module docstring); ``model`` is unchanged.

    Raises
    ------
    ValueError
        If a selected node is not a rewritable convolution, or the batch is not 1.
    """
    from onnx import helper, numpy_helper

    unknown = selected - set(rewritable_convs(model))
    if unknown:
        raise ValueError(f"not rewritable 3x3x3 convolutions: {sorted(unknown)}")
    model = copy.deepcopy(model)
    graph = model.graph
    shapes = _shapes(model)
    weights = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes: list[Any] = []
    moved: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.name in moved:
            continue
        if node.name not in selected:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        c_out, c_in = weight.shape[:2]
        sd, sh, sw = (int(s) for s in _attributes(node).get("strides", [1, 1, 1]))
        n, _, depth, height, width = shapes[node.input[0]]
        if n != 1:
            raise ValueError(f"{node.name}: batch {n}, the rewrite needs 1")
        out_depth = (depth - 1) // sd + 1
        out_h, out_w = (height - 1) // sh + 1, (width - 1) // sw + 1
        prefix = f"/depth_stacked/{index}/"

        def constant(name: str, values: list[int]) -> str:
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(values, dtype=np.int64), prefix + name)
            )
            return prefix + name

        stacked = np.concatenate([weight[:, :, k] for k in range(3)], axis=1)
        graph.initializer.append(
            numpy_helper.from_array(stacked.astype(np.float32), prefix + "weight")
        )
        pads = constant("pads", [0, 0, 1, 0, 0, 0, 0, 1, 0, 0])
        nodes.append(helper.make_node("Pad", [node.input[0], pads], [prefix + "padded"],
                                      name=prefix + "Pad"))
        slices = []
        for k in range(3):
            nodes.append(helper.make_node(
                "Slice",
                [prefix + "padded", constant(f"start{k}", [k]),
                 constant(f"end{k}", [k + sd * (out_depth - 1) + 1]),
                 constant(f"axis{k}", [2]), constant(f"step{k}", [sd])],
                [prefix + f"slice{k}"], name=prefix + f"Slice{k}",
            ))
            slices.append(prefix + f"slice{k}")
        nodes.append(helper.make_node("Concat", slices, [prefix + "stacked"], axis=1,
                                      name=prefix + "Concat"))
        nodes.append(helper.make_node("Transpose", [prefix + "stacked"], [prefix + "dmajor"],
                                      perm=[0, 2, 1, 3, 4], name=prefix + "Transpose"))
        nodes.append(helper.make_node(
            "Reshape", [prefix + "dmajor", constant("slices_shape", [out_depth, 3 * c_in, height,
                                                                width])],
            [prefix + "slices"], name=prefix + "Reshape"))
        nodes.append(helper.make_node(
            "Conv", [prefix + "slices", prefix + "weight", node.input[2]], [prefix + "conv"],
            kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[sh, sw], name=prefix + "Conv"))
        last, output = prefix + "conv", node.output[0]
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "LeakyRelu":
            nodes.append(helper.make_node(
                "LeakyRelu", [last], [prefix + "activated"],
                alpha=float(_attributes(after[0]).get("alpha", 0.01)),
                name=prefix + "LeakyRelu"))
            last, output = prefix + "activated", after[0].output[0]
            moved.add(after[0].name)
        nodes.append(helper.make_node(
            "Reshape", [last, constant("volume_shape", [1, out_depth, c_out, out_h, out_w])],
            [prefix + "volume"], name=prefix + "Unreshape"))
        nodes.append(helper.make_node("Transpose", [prefix + "volume"], [output],
                                      perm=[0, 2, 1, 3, 4], name=prefix + "Untranspose"))
    used = {name for node in nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    return model


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _median_ms(session: Any, feed: dict[str, np.ndarray], repeat: int) -> float:
    times = time_calls(lambda: session.run(None, feed), repeat)
    return median_p90(times)["median_s"] * 1e3


def run(model_dir: Path, threads: int, repeat: int) -> dict[str, Any]:
    """Check the rewrite and time it; returns the figures the script prints."""
    import onnx

    from inference.export import parity_input
    from inference.manifest import Manifest

    manifest = Manifest.load(model_dir)
    model = onnx.load(str(model_dir / "model.onnx"))
    feed = {manifest.input.name: parity_input(manifest, seed=7, matrix=192)}
    convs = rewritable_convs(model)
    base = _session(model, threads)
    everything = _session(depth_stacked(model, set(convs)), threads)
    expected, got = base.run(None, feed), everything.run(None, feed)
    result: dict[str, Any] = {
        "convolutions": len(convs),
        "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got)),
        "whole": {"unchanged_ms": _median_ms(base, feed, repeat),
                  "rewritten_ms": _median_ms(everything, feed, repeat)},
        "each": [],
    }
    for name in convs:
        alone = _session(depth_stacked(model, {name}), threads)
        unchanged_ms = _median_ms(base, feed, repeat)
        rewritten_ms = _median_ms(alone, feed, repeat)
        result["each"].append({"node": name, "unchanged_ms": unchanged_ms,
                               "rewritten_ms": rewritten_ms,
                               "gain_ms": unchanged_ms - rewritten_ms})
    return result


def main() -> int:
    """Print the check and the timings."""
    parser = argparse.ArgumentParser(
        description="ONNX Runtime: 3x3x3 convolutions as 2D convolutions over depth-stacked "
        "slices, against the unchanged graph (exact rewrite, same weights)."
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per median")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = run(args.model, args.threads, args.repeat)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    whole = result["whole"]
    print(f"model: {args.model}  threads {args.threads}  repeat {args.repeat}")
    print(f"{result['convolutions']} 3x3x3 convolutions; largest output difference after the "
          f"rewrite {result['max_abs_diff']:.2g}")
    print(f"whole graph: unchanged {whole['unchanged_ms']:.1f} ms, all rewritten "
          f"{whole['rewritten_ms']:.1f} ms (ratio {whole['rewritten_ms'] / whole['unchanged_ms']:.2f})")
    print(f"{'convolution rewritten alone':<58}{'unchanged':>10}{'rewritten':>10}{'gain':>8}")
    for item in result["each"]:
        print(f"{item['node'][-58:]:<58}{item['unchanged_ms']:>10.1f}"
              f"{item['rewritten_ms']:>10.1f}{item['gain_ms']:>+8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
