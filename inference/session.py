"""The ONNX Runtime session of a model directory, checked against its manifest.

:func:`load_model` (the factory) builds one :class:`ModelSession` per model
directory: it validates ``manifest.json``, refuses a ``model.onnx`` that
points to external data, creates the ``onnxruntime.InferenceSession`` with
explicit providers (CPU last) and threads through ``SessionOptions``, reads
the graph's input/output names, element types and shapes once, and checks
them against the manifest. A mismatch raises
:class:`~inference.errors.ManifestError` naming the manifest field.

Providers
    Default ``("CUDAExecutionProvider", "CPUExecutionProvider")``. Requested
    providers that this onnxruntime build does not offer are dropped with a
    WARNING (``get_available_providers()`` may list CUDA on a machine
    without a GPU; the provider that really runs is read back from
    ``session.get_providers()`` and a CUDA request that ended on CPU is
    logged as a WARNING too). With the default list (no explicit request)
    the same fallback is logged at INFO: a CPU-only node is a normal setup.
    Unknown provider names raise ``ValueError``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from inference.errors import ManifestError, ModelLoadError
from inference.manifest import Manifest, TensorSpec

LOGGER = logging.getLogger(__name__)

__all__ = [
    "ModelSession",
    "load_model",
    "resolve_providers",
    "external_tensors",
    "DEFAULT_PROVIDERS",
    "MODEL_FILE",
    "MANIFEST_FILE",
]

#: Providers tried by default, fastest first; CPU is always last.
DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
#: Graph file inside a model directory.
MODEL_FILE = "model.onnx"
#: Manifest file inside a model directory.
MANIFEST_FILE = "manifest.json"

_CPU = "CPUExecutionProvider"
#: Manifest dtype -> ONNX Runtime type string.
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)"}
_NUMPY_TYPES = {"float32": np.float32, "float16": np.float16}
#: Exceptions onnxruntime raises while loading a graph (pybind11 classes
#: deriving from ``Exception`` only, plus the built-ins it also uses).
_ORT_LOAD_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError) + tuple(
    getattr(_ort_state, name)
    for name in (
        "Fail",
        "InvalidGraph",
        "InvalidProtobuf",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "RuntimeException",
        "NotImplemented",
        "EPFail",
    )
    if isinstance(getattr(_ort_state, name, None), type)
)


def resolve_providers(providers: Sequence[str] | None = None) -> list[str]:
    """The execution providers to ask for, CPU last, unavailable ones dropped.

    Parameters
    ----------
    providers: Sequence[str] | None, optional
        Provider names in order of preference; ``None`` means
        :data:`DEFAULT_PROVIDERS`. ``CPUExecutionProvider`` is appended when
        missing.

    Returns
    -------
    list[str]
        Names this onnxruntime build offers, CPU last. Dropped names are
        logged: WARNING when ``providers`` was given, INFO for the default.

    Raises
    ------
    TypeError
        If ``providers`` is a string or holds non-strings.
    ValueError
        If a name is not an ONNX Runtime provider, or CPU is not last.
    """
    level = logging.WARNING if providers is not None else logging.INFO
    if providers is None:
        providers = DEFAULT_PROVIDERS
    if isinstance(providers, str) or not all(isinstance(p, str) for p in providers):
        raise TypeError('Argument "providers" should be a sequence of provider names.')
    requested = list(dict.fromkeys(providers))
    unknown = [p for p in requested if p not in ort.get_all_providers()]
    if unknown:
        raise ValueError(
            f'Argument "providers" names unknown execution providers: {", ".join(unknown)}.'
        )
    if _CPU in requested and requested[-1] != _CPU:
        raise ValueError(f'Argument "providers" should list {_CPU} last.')
    if _CPU not in requested:
        requested.append(_CPU)
    available = set(ort.get_available_providers())
    kept = [p for p in requested if p in available]
    for name in requested:
        if name not in available:
            LOGGER.log(
                level,
                "%s requested but not available in this onnxruntime build; falling back to %s",
                name,
                kept[0],
            )
    return kept


# ----------------------------------------------------------------------
# External data check (minimal protobuf walk; the node does not need onnx)
# ----------------------------------------------------------------------
def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: memoryview) -> list[tuple[int, int, Any]]:
    """Top-level ``(field, wire_type, value)`` of one protobuf message."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    value: Any
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((field, wire, value))
    return out


def _tensor_is_external(tensor: memoryview) -> bool:
    # TensorProto: external_data = 13, data_location = 14 (EXTERNAL = 1).
    for field, wire, value in _fields(tensor):
        if field == 14 and wire == 0 and value == 1:
            return True
        if field == 13 and wire == 2:
            return True
    return False


def _graph_external_tensors(graph: memoryview) -> list[str]:
    """Names (or ``"?"``) of tensors in a GraphProto stored as external data."""
    external: list[str] = []
    for field, wire, value in _fields(graph):
        if wire != 2:
            continue
        if field == 5 and _tensor_is_external(value):  # initializer
            names = [bytes(v).decode("utf-8", "replace") for f, w, v in _fields(value) if f == 8]
            external.append(names[0] if names else "?")
        elif field == 15:  # sparse_initializer: values = 1, indices = 2
            if any(f in (1, 2) and _tensor_is_external(v) for f, _, v in _fields(value)):
                external.append("?")
        elif field == 1:  # node -> attribute (5) -> t (5), g (6), tensors (10), graphs (11)
            for n_field, _, attribute in _fields(value):
                if n_field != 5:
                    continue
                for a_field, a_wire, a_value in _fields(attribute):
                    if a_wire == 2 and a_field in (5, 10) and _tensor_is_external(a_value):
                        external.append("?")
                    elif a_wire == 2 and a_field in (6, 11):
                        external.extend(_graph_external_tensors(a_value))
    return external


def external_tensors(model_bytes: bytes) -> list[str]:
    """Names of tensors of an ONNX ``ModelProto`` that live in external files.

    Parameters
    ----------
    model_bytes: bytes
        The serialised model.

    Returns
    -------
    list[str]
        Empty for a self-contained model.

    Raises
    ------
    ValueError
        If the bytes are not a well-formed protobuf message.
    """
    view = memoryview(model_bytes)
    external: list[str] = []
    for field, wire, value in _fields(view):
        if field == 7 and wire == 2:  # ModelProto.graph
            external.extend(_graph_external_tensors(value))
    return external


# ----------------------------------------------------------------------
# The session
# ----------------------------------------------------------------------
def _dims_compatible(graph_dim: Any, manifest_dim: int) -> bool:
    return not isinstance(graph_dim, int) or graph_dim <= 0 or graph_dim == manifest_dim


def _check_tensor(spec: TensorSpec, arg: Any, prefix: str) -> None:
    expected_type = _ORT_TYPES[spec.dtype]
    if arg.type != expected_type:
        raise ManifestError(
            f"{prefix}dtype",
            f'is "{spec.dtype}" but graph tensor "{spec.name}" has type {arg.type}',
        )
    shape = list(arg.shape) if arg.shape is not None else None
    if shape is None or len(shape) != len(spec.shape):
        rank = "unknown" if shape is None else len(shape)
        raise ManifestError(
            f"{prefix}shape",
            f"has rank {len(spec.shape)} but graph tensor \"{spec.name}\" has rank {rank}",
        )
    bad = [
        axis
        for axis, (g, m) in enumerate(zip(shape, spec.shape))
        if not _dims_compatible(g, m)
    ]
    if bad:
        raise ManifestError(
            f"{prefix}shape",
            f"is {list(spec.shape)} but graph tensor \"{spec.name}\" has shape {shape}",
        )


class ModelSession:
    """An ONNX Runtime session for one model directory, checked against its manifest.

    Prefer :func:`load_model`. The graph's input/output names and shapes are
    read once here; :meth:`run` only feeds and fetches.

    Parameters
    ----------
    model_dir: str | pathlib.Path
        Directory holding ``model.onnx`` and ``manifest.json``.
    providers: Sequence[str] | None, optional
        Execution providers in order of preference (see
        :func:`resolve_providers`); default :data:`DEFAULT_PROVIDERS`.
    intra_op_threads: int | None, optional
        ``SessionOptions.intra_op_num_threads`` (``None`` or 0: onnxruntime's
        default, one per physical core).
    inter_op_threads: int | None, optional
        ``SessionOptions.inter_op_num_threads``.

    Attributes
    ----------
    manifest: Manifest
    model_dir: pathlib.Path
    provider: str
        The execution provider that really runs the graph (the first of
        ``session.get_providers()``).
    providers: tuple[str, ...]
        All providers of the session, in priority order.

    Raises
    ------
    ModelLoadError
        If the directory, ``model.onnx`` or ``manifest.json`` is missing,
        the graph is unreadable, or it uses external data.
    ManifestError
        If the manifest is invalid or disagrees with the graph (the error's
        ``field`` names the manifest field).
    ValueError, TypeError
        For bad provider or thread arguments.
    """

    def __init__(
        self,
        model_dir: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        for name, value in (
            ("intra_op_threads", intra_op_threads),
            ("inter_op_threads", inter_op_threads),
        ):
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f'Argument "{name}" should be an integer or None.')
            if value < 0:
                raise ValueError(f'Argument "{name}" should be a non-negative integer.')
        requested = resolve_providers(providers)
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelLoadError(f"model directory {self.model_dir} does not exist")
        model_path = self.model_dir / MODEL_FILE
        if not model_path.is_file():
            raise ModelLoadError(f"{MODEL_FILE} is missing in {self.model_dir}")
        if not (self.model_dir / MANIFEST_FILE).is_file():
            raise ModelLoadError(f"{MANIFEST_FILE} is missing in {self.model_dir}")
        self.manifest = Manifest.load(self.model_dir / MANIFEST_FILE)

        try:
            model_bytes = model_path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {model_path}: {exc.strerror}") from exc
        try:
            external = external_tensors(model_bytes)
        except ValueError as exc:
            raise ModelLoadError(f"{model_path} is not a valid ONNX model: {exc}") from exc
        if external:
            raise ModelLoadError(
                f"{model_path} keeps {len(external)} tensor(s) in external data files "
                f"(e.g. {external[0]!r}); export a self-contained model.onnx"
            )

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
        try:
            self._session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=requested
            )
        except _ORT_LOAD_ERRORS as exc:
            raise ModelLoadError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        del model_bytes

        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        self.provider: str = self.providers[0]
        if requested[0] != self.provider:
            LOGGER.log(
                logging.WARNING if providers is not None else logging.INFO,
                "%s requested but the session runs on %s (falling back)",
                requested[0],
                self.provider,
            )
        self._inputs = {arg.name: arg for arg in self._session.get_inputs()}
        self._outputs = {arg.name: arg for arg in self._session.get_outputs()}
        self._check_graph()
        self.input_name: str = self.manifest.input.name
        self._input_dtype = _NUMPY_TYPES[self.manifest.input.dtype]
        self._output_names = [spec.name for spec in self.manifest.outputs]
        self._roles = [spec.role for spec in self.manifest.outputs]
        LOGGER.info(
            "Model %s %s loaded from %s; execution provider %s",
            self.manifest.model_name,
            self.manifest.model_version,
            self.model_dir,
            self.provider,
        )

    # ------------------------------------------------------------------
    def _check_graph(self) -> None:
        spec = self.manifest.input
        if spec.name not in self._inputs:
            raise ManifestError(
                "input.name",
                f'"{spec.name}" is not an input of the graph (inputs: '
                f'{", ".join(sorted(self._inputs))})',
            )
        extra = sorted(set(self._inputs) - {spec.name})
        if extra:
            raise ManifestError(
                "input.name",
                f"the graph needs inputs the manifest does not describe: {', '.join(extra)}",
            )
        _check_tensor(spec, self._inputs[spec.name], "input.")
        for index, output in enumerate(self.manifest.outputs):
            prefix = f"outputs[{index}]."
            if output.name not in self._outputs:
                raise ManifestError(
                    f"{prefix}name",
                    f'"{output.name}" is not an output of the graph (outputs: '
                    f'{", ".join(sorted(self._outputs))})',
                )
            _check_tensor(output, self._outputs[output.name], prefix)

    # ------------------------------------------------------------------
    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on one input tensor.

        Parameters
        ----------
        tensor: numpy.ndarray
            Array of ``manifest.input.shape`` (converted to the manifest's
            dtype if needed).

        Returns
        -------
        dict[str, numpy.ndarray]
            One array per manifest output, keyed by role
            (``"lesion_probability"``, ``"class_probabilities"``, and
            ``"lung_probability"`` where the model has it).

        Raises
        ------
        TypeError
            If ``tensor`` is not a numpy array.
        ValueError
            If its shape is not the manifest's input shape.
        ManifestError
            If the graph returns an output whose shape disagrees with the
            manifest (possible only with dynamic graph dimensions).
        """
        if not isinstance(tensor, np.ndarray):
            raise TypeError('Argument "tensor" should be a numpy array.')
        if tuple(tensor.shape) != self.manifest.input.shape:
            raise ValueError(
                f'Argument "tensor" has shape {tensor.shape}; the model expects '
                f"{self.manifest.input.shape}."
            )
        feed = np.ascontiguousarray(tensor, dtype=self._input_dtype)
        arrays = self._session.run(self._output_names, {self.input_name: feed})
        result: dict[str, np.ndarray] = {}
        for index, (role, array) in enumerate(zip(self._roles, arrays)):
            expected = self.manifest.outputs[index].shape
            if tuple(array.shape) != expected:
                raise ManifestError(
                    f"outputs[{index}].shape",
                    f"is {list(expected)} but the graph returned {list(array.shape)}",
                )
            result[role] = array
        return result

    def __repr__(self) -> str:
        return (
            f"ModelSession(model_dir={os.fspath(self.model_dir)!r}, "
            f"model={self.manifest.model_name!r} {self.manifest.model_version!r}, "
            f"provider={self.provider!r})"
        )


def load_model(
    model_dir: str | Path,
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
) -> ModelSession:
    """Build the session of a model directory (the factory; see :class:`ModelSession`).

    Parameters
    ----------
    model_dir: str | pathlib.Path
        Directory holding ``model.onnx`` and ``manifest.json``.
    providers: Sequence[str] | None, optional
        Execution providers in order of preference.
    intra_op_threads: int | None, optional
        Threads inside one operator.
    inter_op_threads: int | None, optional
        Threads across operators.

    Returns
    -------
    ModelSession

    Raises
    ------
    ModelLoadError, ManifestError, ValueError, TypeError
        As :class:`ModelSession`.
    """
    return ModelSession(
        model_dir,
        providers=providers,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
    )
