"""Add the lesion gate to an exported joint model by editing its ONNX graph.

:class:`inference.model.ProbabilityModel` gates the lesion map at export::

    P_out = P * (1 - p[gate])

(``P`` the lesion subnet's probabilities, ``p`` the class probabilities,
``gate`` the class whose probability empties the map, ``no_pneumonia``).
:func:`add_lesion_gate` writes the same product into the graph of a model
directory that was exported without it, for models whose training
checkpoint is not at hand (the bundled 1.1.0). The edit appends four nodes
after the two outputs (``Gather``, ``Sub``, ``Unsqueeze``, ``Mul``) and
renames the ungated tensor, which the classification subnet keeps reading;
no weight changes. A parity check runs both graphs in ONNX Runtime on a
phantom and fails the edit when the gated output is not the source's
lesion map times ``1 - p[gate]``, or the class probabilities differ.

This module needs ``onnx`` and the export helpers (the ``train`` extra).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.manifest import Manifest

LOGGER = logging.getLogger(__name__)

__all__ = ["GATE_TOLERANCE", "GateReport", "add_lesion_gate"]

#: Largest allowed difference between the gated graph and the source graph's
#: outputs combined in numpy (same float32 operations, so rounding only).
GATE_TOLERANCE = 1e-6

#: Suffix of the renamed, ungated lesion tensor inside the edited graph.
UNGATED_SUFFIX = "_ungated"


@dataclass(frozen=True)
class GateReport:
    """What :func:`add_lesion_gate` wrote and measured."""

    directory: Path
    source_version: str
    model_version: str
    gate_class: str
    opset: int
    size_bytes: int
    parity_lesion_diff: float
    parity_class_diff: float
    parity_gate_factor: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        data = dataclasses.asdict(self)
        data["directory"] = str(self.directory)
        return data


def add_lesion_gate(
    source: str | Path,
    directory: str | Path,
    model_version: str,
    gate_class: str = "no_pneumonia",
    parity_tensor: np.ndarray | None = None,
    tolerance: float = GATE_TOLERANCE,
    overwrite: bool = False,
    parity_seed: int = 7,
) -> GateReport:
    """Write a copy of the model directory ``source`` with the lesion gate.

    Parameters
    ----------
    source: str | Path
        An exported joint model directory without a gate.
    directory: str | Path
        Output model directory (``model.onnx`` + ``manifest.json``); other
        files in it are left alone.
    model_version: str
        Version of the gated model; must differ from the source's.
    gate_class: str, optional
        Class key whose probability empties the lesion map.
    parity_tensor: numpy.ndarray | None, optional
        Model input for the parity check; ``None`` generates a phantom scan
        (:func:`inference.export.parity_input` with ``parity_seed``).
    tolerance: float, optional
        Largest allowed absolute difference of the parity check.
    overwrite: bool, optional
        Replace an existing ``model.onnx`` / ``manifest.json`` in ``directory``.
    parity_seed: int, optional
        Seed of the parity phantom when ``parity_tensor`` is ``None``.

    Returns
    -------
    GateReport

    Raises
    ------
    ValueError
        If the source is gated already, is not a joint model, lacks an
        output, or the gate class or version is wrong.
    FileExistsError
        If ``directory`` holds a model and ``overwrite`` is false.
    inference.export.ExportError
        If the edited graph is invalid or the parity check fails (nothing
        written).
    """
    import onnx

    from inference.export import (
        ExportError,
        stamp_metadata,
        check_onnx_file,
        onnx_outputs,
        parity_input,
    )

    source, directory = Path(source), Path(directory)
    manifest = Manifest.load(source / "manifest.json")
    _check_gateable(manifest, gate_class, model_version)
    if not overwrite and (directory / "model.onnx").exists():
        raise FileExistsError(f"{directory / 'model.onnx'} exists (use overwrite)")
    lesion_spec = manifest.output("lesion_probability")
    class_spec = manifest.output("class_probabilities")
    assert lesion_spec is not None and class_spec is not None  # _check_gateable
    model = onnx.load(str(source / "model.onnx"))
    _insert_gate(model, lesion_spec.name, class_spec.name, manifest.class_keys.index(gate_class))
    gated = dataclasses.replace(
        manifest,
        model_version=model_version,
        lesion_gate=gate_class,
        training={
            **manifest.training,
            "derived_from": {
                "model_version": manifest.model_version,
                "edit": f"lesion gate 1 - p({gate_class}) added to the ONNX graph "
                "(deepsc-node gate); weights unchanged",
            },
        },
    )
    if parity_tensor is None:
        parity_tensor = parity_input(manifest, seed=parity_seed)
    parity_tensor = np.ascontiguousarray(parity_tensor, dtype=np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".gate-") as tmp:
        tmp_path = Path(tmp)
        onnx_path = tmp_path / "model.onnx"
        onnx.save_model(model, str(onnx_path), save_as_external_data=False)
        opset = check_onnx_file(onnx_path)
        stamp_metadata(onnx_path, gated)
        names = (lesion_spec.name, class_spec.name)
        lesion_s, class_s = onnx_outputs(
            source / "model.onnx", manifest.input.name, parity_tensor, names
        )
        lesion_g, class_g = onnx_outputs(onnx_path, manifest.input.name, parity_tensor, names)
        factor = 1.0 - class_s[:, manifest.class_keys.index(gate_class)]
        expected = lesion_s * factor[:, None, None, None, None].astype(np.float32)
        lesion_diff = float(np.max(np.abs(lesion_g - expected)))
        class_diff = float(np.max(np.abs(class_g - class_s)))
        LOGGER.info(
            "gate parity: max |diff| lesion %.3g, classes %.3g (gate factor %.4f)",
            lesion_diff, class_diff, float(factor[0]),
        )
        if not max(lesion_diff, class_diff) <= tolerance:
            raise ExportError(
                f"gate parity check failed: lesion {lesion_diff:.3g}, classes "
                f"{class_diff:.3g} > {tolerance:g}"
            )
        manifest_path = gated.save(tmp_path / "manifest.json")
        Manifest.load(manifest_path)
        for name in ("model.onnx", "manifest.json"):
            shutil.move(str(tmp_path / name), str(directory / name))
    return GateReport(
        directory=directory,
        source_version=manifest.model_version,
        model_version=model_version,
        gate_class=gate_class,
        opset=opset,
        size_bytes=(directory / "model.onnx").stat().st_size,
        parity_lesion_diff=lesion_diff,
        parity_class_diff=class_diff,
        parity_gate_factor=float(factor[0]),
    )


def _check_gateable(manifest: Manifest, gate_class: str, model_version: str) -> None:
    """Refuse what cannot be gated, naming the reason."""
    if manifest.lesion_gate is not None:
        raise ValueError(f"the model is gated already (lesion_gate {manifest.lesion_gate!r})")
    task = manifest.training.get("task", "joint")
    if task != "joint":
        raise ValueError(
            f'a lesion gate needs a joint model (a classifier to gate with), not task "{task}"'
        )
    if gate_class not in manifest.class_keys:
        raise ValueError(
            f'Argument "gate_class" should be one of {list(manifest.class_keys)}, '
            f"not {gate_class!r}."
        )
    for role in ("lesion_probability", "class_probabilities"):
        if manifest.output(role) is None:
            raise ValueError(f'the model has no "{role}" output to gate')
    if not model_version or model_version == manifest.model_version:
        raise ValueError(
            f'Argument "model_version" should name a new version, not {model_version!r} '
            "(the source's)"
        )


def _insert_gate(model: Any, lesion: str, classes: str, index: int) -> None:
    """Rename the lesion output ``lesion`` inside the graph and append the gate."""
    from onnx import TensorProto, helper

    graph = model.graph
    ungated = lesion + UNGATED_SUFFIX
    for node in graph.node:
        node.input[:] = [ungated if name == lesion else name for name in node.input]
        node.output[:] = [ungated if name == lesion else name for name in node.output]
    for info in graph.value_info:
        if info.name == lesion:
            info.name = ungated
    prefix = "/lesion_gate/"
    graph.initializer.extend([
        helper.make_tensor(prefix + "index", TensorProto.INT64, [1], [index]),
        helper.make_tensor(prefix + "one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor(prefix + "axes", TensorProto.INT64, [3], [2, 3, 4]),
    ])
    graph.node.extend([
        helper.make_node("Gather", [classes, prefix + "index"], [prefix + "p"], axis=1,
                         name=prefix + "Gather"),
        helper.make_node("Sub", [prefix + "one", prefix + "p"], [prefix + "keep"],
                         name=prefix + "Sub"),
        helper.make_node("Unsqueeze", [prefix + "keep", prefix + "axes"], [prefix + "keep5"],
                         name=prefix + "Unsqueeze"),
        helper.make_node("Mul", [ungated, prefix + "keep5"], [lesion], name=prefix + "Mul"),
    ])

