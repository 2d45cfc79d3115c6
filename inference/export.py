"""ONNX export of a trained network: ``model.onnx`` + ``manifest.json``.

:func:`export_model` writes a model directory the node loads
(:mod:`inference.manifest` is the contract):

* ``model.onnx``: one self-contained graph, exported with the TorchScript
  exporter (``dynamo=False``) at opset :data:`OPSET` with static shapes, the
  weights stored inside the file (no ``.data`` file). Sigmoid and softmax are
  inside the graph (:class:`inference.model.ProbabilityModel`), so the
  outputs are probabilities. Checked with ``onnx.checker`` and for opset and
  external data after writing.
* ``manifest.json``: built by :func:`build_manifest` and validated by
  :meth:`inference.manifest.Manifest.from_dict` before it is written.

Parity check: the exported graph runs in ONNX Runtime (CPU) on a prepared
phantom scan and on the same input in torch; if the largest absolute
difference of the probabilities exceeds ``tolerance`` (1e-4) the export
fails with :class:`ExportError` and nothing is left in the output directory.

This module imports torch (the ``train`` extra).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.codes import DEFAULT_CLASSES, DEFAULT_SEGMENTS
from inference.errors import InferenceError
from inference.manifest import RESEARCH_USE_STATEMENT, Manifest
from inference.model import CLASS_KEYS, DeepSCNet, ModelConfig, ProbabilityModel, build_model

LOGGER = logging.getLogger(__name__)

__all__ = [
    "ExportError",
    "ExportReport",
    "OPSET",
    "PARITY_TOLERANCE",
    "DEFAULT_GRID_SHAPE",
    "DEFAULT_SPACING_MM",
    "DEFAULT_CLIP_HU",
    "CLASSES",
    "SEGMENTS",
    "build_manifest",
    "load_checkpoint_network",
    "export_model",
    "onnx_outputs",
    "stamp_metadata",
    "parity_input",
    "check_onnx_file",
]

#: ONNX opset of the exported graph.
OPSET = 17
#: Largest allowed |p_onnx - p_torch| of the parity check.
PARITY_TOLERANCE = 1e-4

#: Model grid of the bundled model: (slices, rows, columns) and mm spacing.
DEFAULT_GRID_SHAPE = (64, 96, 96)
DEFAULT_SPACING_MM = (5.0, 4.0, 4.0)
#: HU window; normalisation maps it to [-1, 1].
DEFAULT_CLIP_HU = (-1024.0, 600.0)

#: Output classes in probability order and DICOM-SEG segments, with their
#: codes (:mod:`inference.codes`, shared with the DICOM encoders).
CLASSES: tuple[dict[str, Any], ...] = DEFAULT_CLASSES
SEGMENTS: tuple[dict[str, Any], ...] = DEFAULT_SEGMENTS


class ExportError(InferenceError):
    """The exported graph is invalid or disagrees with torch."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and measured."""

    directory: Path
    model_path: Path
    manifest_path: Path
    opset: int
    size_bytes: int
    parity_max_abs_diff: float
    parity_lesion_diff: float
    parity_class_diff: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return {
            "directory": str(self.directory),
            "model": str(self.model_path),
            "manifest": str(self.manifest_path),
            "opset": self.opset,
            "size_bytes": self.size_bytes,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "parity_lesion_diff": self.parity_lesion_diff,
            "parity_class_diff": self.parity_class_diff,
        }


def build_manifest(
    grid_shape: tuple[int, int, int] = DEFAULT_GRID_SHAPE,
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
    clip_hu: tuple[float, float] = DEFAULT_CLIP_HU,
    model_name: str = "DeepSC-Node phantom model",
    model_version: str = "1.0.0",
    description: str = (
        "Joint 3D lesion segmentation and COVID-19 / CAP / no-pneumonia classification "
        "(DeepSC-COVID style), trained on synthetic chest-CT phantoms."
    ),
    training: Mapping[str, Any] | None = None,
    lesion_threshold: float = 0.5,
    placement: str = "lung_center",
    lesion_gate: str | None = None,
) -> Manifest:
    """The manifest of a model with this grid and intensity window.

    The normalisation maps the HU window to [-1, 1]:
    ``offset = (lo + hi) / 2``, ``scale = (hi - lo) / 2``.

    Parameters
    ----------
    grid_shape, spacing_mm: tuple
        Model grid ``(slices, rows, columns)`` and its spacing in mm.
    clip_hu: tuple[float, float]
        HU window.
    model_name, model_version, description: str
        Identification written into SEG and SR by the node.
    training: Mapping | None
        What the model was trained on and how (free-form JSON object).
    lesion_threshold: float
        Probability threshold of the lesion mask.
    placement: str
        Grid placement (``"lung_center"`` or ``"volume_center"``).
    lesion_gate: str | None
        Class key that gates the lesion map inside the graph
        (``"no_pneumonia"``, joint networks only; see
        :class:`inference.model.ProbabilityModel`), or ``None``.

    Returns
    -------
    Manifest
        Validated by :meth:`Manifest.from_dict`.
    """
    low, high = float(clip_hu[0]), float(clip_hu[1])
    shape = [int(n) for n in grid_shape]
    data = {
        "format": "deepsc-node-model",
        "format_version": 1,
        "model_name": model_name,
        "model_version": model_version,
        "description": description,
        "input": {"name": "ct", "layout": "NCDHW", "dtype": "float32", "shape": [1, 1, *shape]},
        "grid": {
            "shape": shape,
            "spacing_mm": [float(s) for s in spacing_mm],
            "placement": placement,
            "fill_hu": -1024.0,
        },
        "intensity": {
            "clip_hu": [low, high],
            "offset_hu": (low + high) / 2.0,
            "scale_hu": (high - low) / 2.0,
        },
        "outputs": [
            {"role": "lesion_probability", "name": "lesion_probability", "dtype": "float32",
             "shape": [1, 1, *shape]},
            {"role": "class_probabilities", "name": "class_probabilities", "dtype": "float32",
             "shape": [1, len(CLASSES)]},
        ],
        "lesion_threshold": float(lesion_threshold),
        "classes": [dict(c) for c in CLASSES],
        "segments": [dict(s) for s in SEGMENTS],
        "training": dict(training or {}),
        "intended_use": RESEARCH_USE_STATEMENT
        + " It will not transfer to real CT without training on site data.",
        "lesion_gate": lesion_gate,
    }
    return Manifest.from_dict(json.loads(json.dumps(data)))


def load_checkpoint_network(
    checkpoint: str | Path | Mapping[str, Any],
) -> tuple[DeepSCNet, dict[str, Any]]:
    """Rebuild the network of a training checkpoint (in ``eval`` mode).

    Parameters
    ----------
    checkpoint: str | Path | Mapping
        Path of a ``.pt`` file written by :mod:`inference.train`, or its
        loaded content.

    Returns
    -------
    tuple[DeepSCNet, dict]
        The network and the checkpoint dictionary.

    Raises
    ------
    ExportError
        If the file is not a deepsc-node checkpoint.
    """
    if isinstance(checkpoint, Mapping):
        data = dict(checkpoint)
    else:
        try:
            data = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
        except (OSError, RuntimeError) as exc:
            raise ExportError(f"cannot read checkpoint {checkpoint}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != "deepsc-node-checkpoint":
        raise ExportError(f"{checkpoint} is not a deepsc-node training checkpoint")
    network = build_model(ModelConfig.from_dict(data["model_config"]))
    network.load_state_dict(data["model_state"])
    network.eval()
    return network, data


def check_onnx_file(path: str | Path, min_opset: int = OPSET) -> int:
    """Check a written graph: valid, self-contained, opset >= ``min_opset``.

    Returns
    -------
    int
        The default-domain opset of the graph.

    Raises
    ------
    ExportError
        If a check fails.
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"{path.name}: initializer {tensor.name} uses external data")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} is not a valid ONNX model: {exc}") from exc
    opset = max(
        (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0
    )
    if opset < min_opset:
        raise ExportError(f"{path.name} has opset {opset}, at least {min_opset} is required")
    return opset


def parity_input(manifest: Manifest, seed: int = 7, matrix: int = 192) -> np.ndarray:
    """A prepared phantom scan ``[1, 1, D, H, W]`` for the parity check.

    Parameters
    ----------
    manifest: Manifest
        Grid and intensity of the model.
    seed: int, optional
        Phantom seed (a COVID-19 case, so the lesion map is not empty).
    matrix: int, optional
        In-plane matrix of the phantom (it is resampled to the grid anyway).

    Returns
    -------
    numpy.ndarray
        ``float32`` model input.
    """
    from inference.dataset import phantom_case
    from inference.preprocessing import prepare_input

    case = phantom_case(seed, 0, matrix=matrix)
    return prepare_input(case.hu, case.geometry, manifest).tensor


def onnx_outputs(
    path: Path,
    name: str,
    x: np.ndarray,
    outputs: tuple[str, ...] = ("lesion_probability", "class_probabilities"),
) -> list[np.ndarray]:
    """Run the graph at ``path`` on ``x`` (input ``name``) with the CPU provider
    and return ``outputs`` in order (the parity checks of export and gate)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )
    return [np.asarray(a) for a in session.run(list(outputs), {name: x})]


def export_model(
    network: DeepSCNet,
    directory: str | Path,
    manifest: Manifest,
    parity_tensor: np.ndarray | None = None,
    tolerance: float = PARITY_TOLERANCE,
    overwrite: bool = False,
) -> ExportReport:
    """Export ``network`` to ONNX and write the model directory.

    Parameters
    ----------
    network: DeepSCNet
        The trained network.
    directory: str | Path
        Output model directory (``model.onnx`` + ``manifest.json``).
    manifest: Manifest
        Its manifest; grid and outputs must fit the network.
    parity_tensor: numpy.ndarray | None, optional
        Model input for the parity check; ``None`` generates a phantom scan
        (:func:`parity_input`).
    tolerance: float, optional
        Largest allowed absolute probability difference.
    overwrite: bool, optional
        Replace an existing ``model.onnx`` / ``manifest.json``.

    Returns
    -------
    ExportReport

    Raises
    ------
    ValueError
        If the manifest does not fit the network (grid, classes, or a
        ``lesion_gate`` on a single-task network).
    FileExistsError
        If the directory holds a model and ``overwrite`` is false.
    ExportError
        If the graph is invalid or the parity check fails (nothing written).
    """
    directory = Path(directory)
    shape = manifest.grid.shape
    network.config.check_shape(shape)
    if manifest.class_keys != CLASS_KEYS[: network.config.n_classes]:
        raise ValueError(f'Argument "manifest" classes should be {CLASS_KEYS}.')
    if not overwrite and (directory / "model.onnx").exists():
        raise FileExistsError(f"{directory / 'model.onnx'} exists (use overwrite)")
    if parity_tensor is None:
        parity_tensor = parity_input(manifest)
    parity_tensor = np.ascontiguousarray(parity_tensor, dtype=np.float32)
    if parity_tensor.shape != (1, 1, *shape):
        raise ValueError(
            f'Argument "parity_tensor" should have shape {(1, 1, *shape)}, '
            f"not {parity_tensor.shape}."
        )
    network = network.to("cpu").eval()
    wrapper = ProbabilityModel(network, gate_class=manifest.lesion_gate).eval()
    dummy = torch.zeros((1, 1, *shape), dtype=torch.float32)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as tmp:
        tmp_path = Path(tmp)
        onnx_path = tmp_path / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # presence_score's top-k size is a Python int of a static shape.
            warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(onnx_path),
                input_names=[manifest.input.name],
                output_names=["lesion_probability", "class_probabilities"],
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        extra = sorted(p.name for p in tmp_path.iterdir() if p.name != "model.onnx")
        if extra:
            raise ExportError(f"the exporter wrote extra files {extra}; expected one model.onnx")
        opset = check_onnx_file(onnx_path)
        stamp_metadata(onnx_path, manifest)
        with torch.no_grad():
            lesion_t, class_t = wrapper(torch.from_numpy(parity_tensor))
        lesion_o, class_o = onnx_outputs(onnx_path, manifest.input.name, parity_tensor)
        lesion_diff = float(np.max(np.abs(lesion_o - lesion_t.numpy())))
        class_diff = float(np.max(np.abs(class_o - class_t.numpy())))
        worst = max(lesion_diff, class_diff)
        LOGGER.info(
            "parity ONNX Runtime vs torch: max |diff| lesion %.3g, classes %.3g",
            lesion_diff,
            class_diff,
        )
        if not worst <= tolerance:
            raise ExportError(
                f"parity check failed: max |p_onnx - p_torch| = {worst:.3g} > {tolerance:g}"
            )
        manifest_path = manifest.save(tmp_path / "manifest.json")
        Manifest.load(manifest_path)
        for name in ("model.onnx", "manifest.json"):
            shutil.move(str(tmp_path / name), str(directory / name))
    model_path = directory / "model.onnx"
    return ExportReport(
        directory=directory,
        model_path=model_path,
        manifest_path=directory / "manifest.json",
        opset=opset,
        size_bytes=model_path.stat().st_size,
        parity_max_abs_diff=worst,
        parity_lesion_diff=lesion_diff,
        parity_class_diff=class_diff,
    )


def stamp_metadata(path: Path, manifest: Manifest) -> None:
    """Write name, version and intended use into the graph's metadata (replacing
    earlier entries of the same keys, so a re-stamped graph holds one of each)."""
    import onnx

    model = onnx.load(str(path))
    model.doc_string = f"{manifest.model_name} {manifest.model_version}. {manifest.intended_use}"
    keys = ("model_name", "model_version", "intended_use", "classes")
    kept = [entry for entry in model.metadata_props if entry.key not in keys]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in (
        ("model_name", manifest.model_name),
        ("model_version", manifest.model_version),
        ("intended_use", manifest.intended_use),
        ("classes", json.dumps(list(manifest.class_keys))),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(path), save_as_external_data=False)
