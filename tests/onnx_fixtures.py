"""Tiny ONNX graphs and model directories for runtime tests.

These graphs test the runtime (session, pipeline, post-processing), not the
model: they compute a closed-form function of the input.

``lesion_probability = Sigmoid(k (x - lo)) * Sigmoid(k (hi - x))``
    a soft HU band ``[hu_low, hu_high]`` in normalised units (``x`` is the
    model input, ``(clip(hu) - offset) / scale``);
``lung_probability = Sigmoid(k (air - x))``
    voxels darker than ``hu_air`` (optional output);
``class_probabilities = Softmax(mean(lesion_probability) * w + b)``
    more lesion -> more "covid19" (class 0), less -> "no_pneumonia" (last);
    ``w = linspace(gain, -gain)``, ``b = linspace(-1, 1)``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.manifest_fixtures import manifest_dict

#: Intensity normalisation of :func:`tests.manifest_fixtures.manifest_dict`.
OFFSET_HU = -212.0
SCALE_HU = 812.0
#: Steepness of the sigmoids, per normalised unit.
STEEPNESS = 200.0


def _norm(hu: float) -> float:
    return (hu - OFFSET_HU) / SCALE_HU


def band_graph(
    shape: tuple[int, int, int],
    *,
    hu_low: float = 150.0,
    hu_high: float = 450.0,
    hu_air: float = -400.0,
    input_name: str = "ct",
    input_rank: int = 5,
    input_dtype: int = TensorProto.FLOAT,
    n_classes: int = 3,
    lesion_name: str = "lesion_probability",
    class_name: str = "class_probabilities",
    with_lung: bool = False,
    dynamic_batch: bool = False,
    extra_input: bool = False,
    class_gain: float = 2000.0,
    opset: int = 17,
) -> onnx.ModelProto:
    """A graph with the roles of the model contract (see the module docstring).

    Parameters
    ----------
    shape: tuple[int, int, int]
        ``(D, H, W)`` of the model grid.
    hu_low, hu_high: float, optional
        HU band that counts as lesion.
    hu_air: float, optional
        HU below which ``lung_probability`` is high.
    input_name: str, optional
        Name of the graph input.
    input_rank: int, optional
        5 (``[1, 1, D, H, W]``) or 4 (``[1, D, H, W]``, a deliberate mismatch).
    input_dtype: int, optional
        ``TensorProto.FLOAT`` or ``TensorProto.FLOAT16`` (cast inside).
    n_classes: int, optional
        Length of the class-probability vector.
    lesion_name, class_name: str, optional
        Output names.
    with_lung: bool, optional
        Add a ``lung_probability`` output.
    dynamic_batch: bool, optional
        Declare the batch dimension as a symbol ``"N"``.
    extra_input: bool, optional
        Add a second required input ``"extra"`` (added to the lesion output).
    class_gain: float, optional
        Logit of class 0 is ``gain * mean(lesion) - 1``, of the last class
        ``1 - gain * mean(lesion)``: "covid19" wins once about 1/2000 of
        the model grid is lesion.
    opset: int, optional
        Default-domain opset.

    Returns
    -------
    onnx.ModelProto
    """
    batch: Any = "N" if dynamic_batch else 1
    spatial = [batch, 1, *shape] if input_rank == 5 else [batch, *shape]
    inputs = [helper.make_tensor_value_info(input_name, input_dtype, spatial)]
    nodes = []
    source = input_name
    if input_dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [input_name], ["x32"], to=TensorProto.FLOAT))
        source = "x32"
    init = [
        numpy_helper.from_array(np.array(STEEPNESS, np.float32), "k"),
        numpy_helper.from_array(np.array(_norm(hu_low), np.float32), "lo"),
        numpy_helper.from_array(np.array(_norm(hu_high), np.float32), "hi"),
        numpy_helper.from_array(
            np.linspace(class_gain, -class_gain, n_classes, dtype=np.float32)[None, :], "w"
        ),
        numpy_helper.from_array(
            np.linspace(-1.0, 1.0, n_classes, dtype=np.float32)[None, :], "b"
        ),
        numpy_helper.from_array(np.array([1, 1], np.int64), "shape11"),
    ]
    nodes += [
        helper.make_node("Sub", [source, "lo"], ["d_lo"]),
        helper.make_node("Mul", ["d_lo", "k"], ["z_lo"]),
        helper.make_node("Sigmoid", ["z_lo"], ["s_lo"]),
        helper.make_node("Sub", ["hi", source], ["d_hi"]),
        helper.make_node("Mul", ["d_hi", "k"], ["z_hi"]),
        helper.make_node("Sigmoid", ["z_hi"], ["s_hi"]),
    ]
    lesion_out = lesion_name
    if extra_input:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, spatial))
        nodes.append(helper.make_node("Mul", ["s_lo", "s_hi"], ["band"]))
        nodes.append(helper.make_node("Add", ["band", "extra"], [lesion_out]))
    else:
        nodes.append(helper.make_node("Mul", ["s_lo", "s_hi"], [lesion_out]))
    nodes += [
        helper.make_node("ReduceMean", [lesion_out], ["mean"], keepdims=0),
        helper.make_node("Reshape", ["mean", "shape11"], ["mean11"]),
        helper.make_node("Mul", ["mean11", "w"], ["scaled"]),
        helper.make_node("Add", ["scaled", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [class_name], axis=-1),
    ]
    outputs = [
        helper.make_tensor_value_info(lesion_out, TensorProto.FLOAT, spatial),
        helper.make_tensor_value_info(class_name, TensorProto.FLOAT, [1, n_classes]),
    ]
    if with_lung:
        init.append(numpy_helper.from_array(np.array(_norm(hu_air), np.float32), "air"))
        nodes += [
            helper.make_node("Sub", ["air", source], ["d_air"]),
            helper.make_node("Mul", ["d_air", "k"], ["z_air"]),
            helper.make_node("Sigmoid", ["z_air"], ["lung_probability"]),
        ]
        outputs.append(
            helper.make_tensor_value_info("lung_probability", TensorProto.FLOAT, spatial)
        )
    graph = helper.make_graph(nodes, "band_model", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model_dir(
    directory: Path,
    model: onnx.ModelProto | None = None,
    manifest: dict[str, Any] | None = None,
    *,
    external_data: bool = False,
) -> Path:
    """Write ``model.onnx`` + ``manifest.json`` into ``directory``.

    Parameters
    ----------
    directory: pathlib.Path
        Created if missing.
    model: onnx.ModelProto | None, optional
        Default: :func:`band_graph` for the manifest's grid.
    manifest: dict | None, optional
        Default: :func:`tests.manifest_fixtures.manifest_dict`.
    external_data: bool, optional
        Save every initializer in a ``model.data`` file beside the graph.

    Returns
    -------
    pathlib.Path
        ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    manifest = manifest if manifest is not None else manifest_dict()
    if model is None:
        model = band_graph(tuple(manifest["grid"]["shape"]))
    if external_data:
        onnx.save(
            model,
            str(directory / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.data",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(directory / "model.onnx"))
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return directory


def band_model_dir(
    directory: Path,
    shape: tuple[int, int, int] = (16, 32, 32),
    spacing: tuple[float, float, float] = (10.0, 12.0, 12.0),
    *,
    with_lung: bool = False,
    lung_source: str = "hu_lung_extraction",
    placement: str = "lung_center",
    **graph_kwargs: Any,
) -> Path:
    """A consistent model directory: band graph + matching manifest.

    Parameters
    ----------
    directory: pathlib.Path
        Where to write it.
    shape, spacing: tuple, optional
        Model grid.
    with_lung: bool, optional
        Give the graph and manifest a ``lung_probability`` output.
    lung_source: str, optional
        Source of the manifest's "Lung" segment.
    placement: str, optional
        ``grid.placement``.
    **graph_kwargs
        Passed to :func:`band_graph`.

    Returns
    -------
    pathlib.Path
    """
    manifest = manifest_dict(shape=shape, spacing=spacing, with_lung=with_lung)
    manifest["grid"]["placement"] = placement
    for segment in manifest["segments"]:
        if segment["label"] == "Lung":
            segment["source"] = lung_source
    model = band_graph(shape, with_lung=with_lung, **graph_kwargs)
    return write_model_dir(directory, model, manifest)


# ----------------------------------------------------------------------
# A synthetic chest for runtime tests
# ----------------------------------------------------------------------
#: HU of the synthetic chest's materials.
AIR_HU = -1000
LUNG_HU = -850
TISSUE_HU = 40
TABLE_HU = 100
LESION_HU = 300
PADDING_HU = -3024


def synthetic_chest(
    shape: tuple[int, int, int] = (40, 96, 96),
    spacing: tuple[float, float, float] = (5.0, 4.0, 4.0),
    *,
    feet_first: bool = False,
    joined: bool = False,
    lesions: tuple[tuple[tuple[float, float, float], float], ...] = (),
    seed: int = 0,
) -> tuple[np.ndarray, Any, np.ndarray]:
    """A chest-like HU volume: body, two air boxes as lungs, table, padding.

    The geometry is axial LPS (rows along +y = posterior, columns along +x =
    patient left), centred on the origin of patient space. The patient's
    right lung is the box at negative x, the left lung at positive x. Each
    lung spans z in [-60, +60] mm.

    Parameters
    ----------
    shape, spacing: tuple, optional
        Grid.
    feet_first: bool, optional
        Store slices with decreasing z (``slice_direction = (0, 0, -1)``);
        the anatomy in patient space is the same.
    joined: bool, optional
        Join the lungs by an air bridge (an "anterior junction").
    lesions: tuple, optional
        ``((x, y, z), radius)`` spheres in mm painted with
        :data:`LESION_HU`.
    seed: int, optional
        Noise seed (noise std 10 HU).

    Returns
    -------
    tuple[numpy.ndarray, Geometry, numpy.ndarray]
        ``int16`` HU, geometry, and the uint8 truth lung mask (1 right,
        2 left, without the bridge).
    """
    from inference.geometry import Geometry

    n_k, n_i, n_j = shape
    extent = np.array([(n - 1) * s for n, s in zip(shape, spacing)])
    origin_z = -extent[0] / 2 if not feet_first else extent[0] / 2
    geometry = Geometry(
        shape=shape,
        spacing=spacing,
        origin=(-extent[2] / 2, -extent[1] / 2, origin_z),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, -1.0 if feet_first else 1.0),
    )
    z = origin_z + np.arange(n_k) * spacing[0] * (-1.0 if feet_first else 1.0)
    y = -extent[1] / 2 + np.arange(n_i) * spacing[1]
    x = -extent[2] / 2 + np.arange(n_j) * spacing[2]
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    body = (xx / 150.0) ** 2 + (yy / 105.0) ** 2 <= 1.0
    hu[body] = TISSUE_HU
    table = (yy > 118) & (yy < 128) & (np.abs(xx) < 160)
    hu[table] = TABLE_HU
    truth = np.zeros(shape, dtype=np.uint8)
    in_z = np.abs(zz) <= 60
    right = in_z & (xx > -110) & (xx < -20) & (np.abs(yy) < 60)
    left = in_z & (xx > 20) & (xx < 100) & (np.abs(yy) < 60)
    truth[right] = 1
    truth[left] = 2
    hu[right | left] = LUNG_HU
    if joined:
        bridge = in_z & (np.abs(xx) <= 20) & (yy > -60) & (yy < -40)
        hu[bridge] = LUNG_HU
    for (cx, cy, cz), radius in lesions:
        sphere = (xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2 <= radius**2
        hu[sphere] = LESION_HU
    rng = np.random.default_rng(seed)
    hu += rng.normal(0.0, 10.0, shape).astype(np.float32)
    scan_circle = xx**2 + yy**2 <= (min(extent[1], extent[2]) / 2) ** 2
    hu[~scan_circle] = PADDING_HU
    return np.rint(hu).astype(np.int16), geometry, truth
