"""The model contract: ``manifest.json`` beside ``model.onnx``.

A model directory holds exactly two files the node reads:

``model.onnx``
    A self-contained ONNX graph (opset >= 17, no external data).
``manifest.json``
    Everything the node needs to run the graph; nothing is guessed from the
    graph itself. The schema (``format_version`` 1)::

        {
          "format": "deepsc-node-model",
          "format_version": 1,
          "model_name": "DeepSC-Node phantom model",
          "model_version": "1.0.0",
          "description": "...",
          "input": {"name": "ct", "layout": "NCDHW", "dtype": "float32",
                    "shape": [1, 1, 64, 128, 128]},
          "grid": {"shape": [64, 128, 128], "spacing_mm": [5.0, 3.0, 3.0],
                   "placement": "lung_center", "fill_hu": -1024.0},
          "intensity": {"clip_hu": [-1024.0, 600.0], "offset_hu": -212.0,
                        "scale_hu": 812.0},
          "outputs": [
            {"role": "lesion_probability", "name": "lesion_probability",
             "dtype": "float32", "shape": [1, 1, 64, 128, 128]},
            {"role": "class_probabilities", "name": "class_probabilities",
             "dtype": "float32", "shape": [1, 3]}
          ],
          "lesion_threshold": 0.5,
          "classes": [
            {"key": "covid19", "display": "COVID-19 pattern",
             "code": {"value": "840539006", "scheme": "SCT", "meaning": "..."}},
            ...
          ],
          "segments": [
            {"label": "Lesion", "source": "lesion_probability",
             "category": {"value": "49755003", "scheme": "SCT",
                          "meaning": "Morphologically Abnormal Structure"},
             "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}},
            {"label": "Lung", "source": "hu_lung_extraction", ...}
          ],
          "training": {"data": "synthetic chest-CT phantoms ...", ...},
          "intended_use": "Research use only, not for diagnosis. ...",
          "lesion_gate": "no_pneumonia"
        }

Model input
    ``x = (clip(hu, clip_hu[0], clip_hu[1]) - offset_hu) / scale_hu`` on the
    model grid, float32, layout ``NCDHW`` with ``D, H, W`` = slices, rows,
    columns (:mod:`inference.geometry` conventions).
Model grid
    ``grid.shape`` voxels of ``grid.spacing_mm`` (slice, row, column), axes
    parallel to the source volume's axes. ``placement`` says where the grid's
    centre goes: ``"lung_center"`` (centre of the HU-based lung bounding box,
    falling back to the volume centre) or ``"volume_center"``. Voxels outside
    the source volume get ``fill_hu``.
Outputs (roles)
    ``lesion_probability`` (required): ``[1, 1, D, H, W]`` in [0, 1].
    ``class_probabilities`` (required): ``[1, n_classes]``, rows sum to 1, in
    the order of ``classes``.
    ``lung_probability`` (optional): ``[1, 1, D, H, W]`` in [0, 1].
Segment sources
    ``lesion_probability`` / ``lung_probability`` (a model output, thresholded
    at ``lesion_threshold``) or ``hu_lung_extraction`` (numpy post-processing).
Lesion gate (optional)
    ``lesion_gate``: absent or ``null`` (the lesion output is the lesion
    subnet's map), or a class key: the graph multiplies the lesion map by
    ``1 - class_probabilities[key]`` (:class:`inference.model.ProbabilityModel`),
    so that a scan called ``"no_pneumonia"`` gets no lesions. The graph does
    the gating; the key records that it does.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import ManifestError

LOGGER = logging.getLogger(__name__)

__all__ = [
    "CodeSpec",
    "ClassSpec",
    "SegmentSpec",
    "TensorSpec",
    "GridSpec",
    "IntensitySpec",
    "Manifest",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_VERSION",
    "OUTPUT_ROLES",
    "SEGMENT_SOURCES",
    "RESEARCH_USE_STATEMENT",
]

MANIFEST_FORMAT = "deepsc-node-model"
MANIFEST_FORMAT_VERSION = 1

#: Output roles the node understands; the first two are required.
OUTPUT_ROLES = ("lesion_probability", "class_probabilities", "lung_probability")

#: Where a segment's mask comes from.
SEGMENT_SOURCES = ("lesion_probability", "lung_probability", "hu_lung_extraction")

#: The statement every output of a model trained on phantoms carries.
RESEARCH_USE_STATEMENT = (
    "Research use only, not for diagnosis. The bundled model is trained on "
    "synthetic chest-CT phantoms."
)

_DTYPES = ("float32", "float16")
_PLACEMENTS = ("lung_center", "volume_center")


def _require(data: Mapping[str, Any], key: str, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ManifestError(prefix or "<root>", "should be a JSON object")
    if key not in data:
        raise ManifestError(f"{prefix}{key}", "is missing")
    return data[key]


def _str(data: Mapping[str, Any], key: str, prefix: str) -> str:
    value = _require(data, key, prefix)
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{prefix}{key}", "should be a non-empty string")
    return value


def _numbers(
    data: Mapping[str, Any], key: str, prefix: str, length: int, positive: bool = False
) -> tuple[float, ...]:
    value = _require(data, key, prefix)
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != length
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ManifestError(f"{prefix}{key}", f"should be a list of {length} numbers")
    if positive and not all(v > 0 for v in value):
        raise ManifestError(f"{prefix}{key}", "should contain only positive numbers")
    return tuple(float(v) for v in value)


def _number(data: Mapping[str, Any], key: str, prefix: str) -> float:
    value = _require(data, key, prefix)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ManifestError(f"{prefix}{key}", "should be a number")
    return float(value)


def _shape(data: Mapping[str, Any], key: str, prefix: str) -> tuple[int, ...]:
    value = _require(data, key, prefix)
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ManifestError(f"{prefix}{key}", "should be a list of positive integers")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class CodeSpec:
    """A coded concept (value, coding scheme designator, meaning)."""

    value: str
    scheme: str
    meaning: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str) -> CodeSpec:
        """Validate and build from JSON; errors name ``prefix``."""
        value = _str(data, "value", prefix)
        if len(value) > 16:
            raise ManifestError(f"{prefix}value", "should be at most 16 characters (VR SH)")
        meaning = _str(data, "meaning", prefix)
        if len(meaning) > 64:
            raise ManifestError(f"{prefix}meaning", "should be at most 64 characters (VR LO)")
        scheme = _str(data, "scheme", prefix)
        if len(scheme) > 16:
            raise ManifestError(f"{prefix}scheme", "should be at most 16 characters (VR SH)")
        return cls(value=value, scheme=scheme, meaning=meaning)


@dataclass(frozen=True)
class ClassSpec:
    """One output class, in the order of the class-probability vector."""

    key: str
    display: str
    code: CodeSpec

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str) -> ClassSpec:
        """Validate and build from JSON; errors name ``prefix``."""
        return cls(
            key=_str(data, "key", prefix),
            display=_str(data, "display", prefix),
            code=CodeSpec.from_dict(_require(data, "code", prefix), f"{prefix}code."),
        )


@dataclass(frozen=True)
class SegmentSpec:
    """One DICOM-SEG segment and where its mask comes from."""

    label: str
    source: str
    category: CodeSpec
    type: CodeSpec

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str) -> SegmentSpec:
        """Validate and build from JSON; errors name ``prefix``."""
        source = _str(data, "source", prefix)
        if source not in SEGMENT_SOURCES:
            raise ManifestError(f"{prefix}source", f"should be one of {SEGMENT_SOURCES}")
        return cls(
            label=_str(data, "label", prefix),
            source=source,
            category=CodeSpec.from_dict(
                _require(data, "category", prefix), f"{prefix}category."
            ),
            type=CodeSpec.from_dict(_require(data, "type", prefix), f"{prefix}type."),
        )


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and static shape of a graph input or output."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    role: str = "input"
    layout: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str, role: str) -> TensorSpec:
        """Validate and build from JSON; errors name ``prefix``."""
        dtype = _str(data, "dtype", prefix)
        if dtype not in _DTYPES:
            raise ManifestError(f"{prefix}dtype", f"should be one of {_DTYPES}")
        layout = data.get("layout", "")
        return cls(
            name=_str(data, "name", prefix),
            dtype=dtype,
            shape=_shape(data, "shape", prefix),
            role=role,
            layout=str(layout),
        )


@dataclass(frozen=True)
class GridSpec:
    """The voxel grid the model expects."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    placement: str = "lung_center"
    fill_hu: float = -1024.0


@dataclass(frozen=True)
class IntensitySpec:
    """HU window and normalisation: ``(clip(hu, lo, hi) - offset) / scale``."""

    clip_hu: tuple[float, float]
    offset_hu: float
    scale_hu: float


@dataclass(frozen=True)
class Manifest:
    """A validated ``manifest.json`` (see the module docstring for the schema)."""

    model_name: str
    model_version: str
    description: str
    input: TensorSpec
    grid: GridSpec
    intensity: IntensitySpec
    outputs: tuple[TensorSpec, ...]
    lesion_threshold: float
    classes: tuple[ClassSpec, ...]
    segments: tuple[SegmentSpec, ...]
    training: dict[str, Any] = field(default_factory=dict)
    intended_use: str = RESEARCH_USE_STATEMENT
    lesion_gate: str | None = None

    # ------------------------------------------------------------------
    def output(self, role: str) -> TensorSpec | None:
        """The output with ``role``, or ``None`` if the model has none."""
        for spec in self.outputs:
            if spec.role == role:
                return spec
        return None

    @property
    def class_keys(self) -> tuple[str, ...]:
        """Class keys in probability order."""
        return tuple(c.key for c in self.classes)

    # ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Validate a parsed manifest.

        Raises
        ------
        ManifestError
            Naming the first field that is missing or wrong.
        """
        fmt = _str(data, "format", "")
        if fmt != MANIFEST_FORMAT:
            raise ManifestError("format", f'should be "{MANIFEST_FORMAT}"')
        version = _require(data, "format_version", "")
        if version != MANIFEST_FORMAT_VERSION:
            raise ManifestError(
                "format_version", f"should be {MANIFEST_FORMAT_VERSION}, not {version!r}"
            )
        input_spec = TensorSpec.from_dict(_require(data, "input", ""), "input.", "input")
        if input_spec.layout != "NCDHW":
            raise ManifestError("input.layout", 'should be "NCDHW"')
        if len(input_spec.shape) != 5 or input_spec.shape[:2] != (1, 1):
            raise ManifestError("input.shape", "should be [1, 1, D, H, W]")

        grid_data = _require(data, "grid", "")
        grid_shape = _shape(grid_data, "shape", "grid.")
        if len(grid_shape) != 3:
            raise ManifestError("grid.shape", "should be [D, H, W]")
        if grid_shape != input_spec.shape[2:]:
            raise ManifestError("grid.shape", f"{grid_shape} disagrees with input.shape")
        placement = grid_data.get("placement", "lung_center")
        if placement not in _PLACEMENTS:
            raise ManifestError("grid.placement", f"should be one of {_PLACEMENTS}")
        fill = _number(grid_data, "fill_hu", "grid.") if "fill_hu" in grid_data else -1024.0
        grid = GridSpec(
            shape=grid_shape,
            spacing_mm=_numbers(grid_data, "spacing_mm", "grid.", 3, positive=True),  # type: ignore[arg-type]
            placement=placement,
            fill_hu=fill,
        )

        intensity_data = _require(data, "intensity", "")
        clip = _numbers(intensity_data, "clip_hu", "intensity.", 2)
        if clip[0] >= clip[1]:
            raise ManifestError("intensity.clip_hu", "low should be below high")
        scale = _number(intensity_data, "scale_hu", "intensity.")
        if scale <= 0:
            raise ManifestError("intensity.scale_hu", "should be a positive number")
        intensity = IntensitySpec(
            clip_hu=clip,  # type: ignore[arg-type]
            offset_hu=_number(intensity_data, "offset_hu", "intensity."),
            scale_hu=scale,
        )

        raw_outputs = _require(data, "outputs", "")
        if not isinstance(raw_outputs, Sequence) or isinstance(raw_outputs, str):
            raise ManifestError("outputs", "should be a list")
        outputs = []
        for index, item in enumerate(raw_outputs):
            prefix = f"outputs[{index}]."
            role = _str(item, "role", prefix)
            if role not in OUTPUT_ROLES:
                raise ManifestError(f"{prefix}role", f"should be one of {OUTPUT_ROLES}")
            outputs.append(TensorSpec.from_dict(item, prefix, role))
        roles = [o.role for o in outputs]
        for required in OUTPUT_ROLES[:2]:
            if required not in roles:
                raise ManifestError("outputs", f'needs an output with role "{required}"')
        if len(set(roles)) != len(roles):
            raise ManifestError("outputs", "has a role twice")

        raw_classes = _require(data, "classes", "")
        if not isinstance(raw_classes, Sequence) or len(raw_classes) < 2:
            raise ManifestError("classes", "should be a list of at least two classes")
        classes = tuple(
            ClassSpec.from_dict(item, f"classes[{i}].") for i, item in enumerate(raw_classes)
        )
        if len({c.key for c in classes}) != len(classes):
            raise ManifestError("classes", "has a key twice")
        for spec in outputs:
            if spec.role == "class_probabilities" and spec.shape != (1, len(classes)):
                raise ManifestError(
                    f"outputs[{roles.index(spec.role)}].shape",
                    f"should be [1, {len(classes)}] for {len(classes)} classes",
                )
            if spec.role in ("lesion_probability", "lung_probability") and (
                spec.shape != (1, 1, *grid_shape)
            ):
                raise ManifestError(
                    f"outputs[{roles.index(spec.role)}].shape",
                    f"should be [1, 1, {', '.join(map(str, grid_shape))}]",
                )

        raw_segments = _require(data, "segments", "")
        if not isinstance(raw_segments, Sequence) or not raw_segments:
            raise ManifestError("segments", "should be a non-empty list")
        segments = tuple(
            SegmentSpec.from_dict(item, f"segments[{i}].") for i, item in enumerate(raw_segments)
        )
        for index, segment in enumerate(segments):
            if segment.source in OUTPUT_ROLES and segment.source not in roles:
                raise ManifestError(
                    f"segments[{index}].source", f'names output role "{segment.source}" '
                    "that the model does not have"
                )

        threshold = data.get("lesion_threshold", 0.5)
        if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ManifestError("lesion_threshold", "should be a number in (0, 1)")
        training = data.get("training", {})
        if not isinstance(training, Mapping):
            raise ManifestError("training", "should be a JSON object")
        gate = data.get("lesion_gate")
        if gate is not None and gate not in {c.key for c in classes}:
            raise ManifestError(
                "lesion_gate", f"should be null or one of the class keys {[c.key for c in classes]}"
            )
        return cls(
            model_name=_str(data, "model_name", ""),
            model_version=_str(data, "model_version", ""),
            description=str(data.get("description", "")),
            input=input_spec,
            grid=grid,
            intensity=intensity,
            outputs=tuple(outputs),
            lesion_threshold=float(threshold),
            classes=classes,
            segments=segments,
            training=dict(training),
            intended_use=_str(data, "intended_use", ""),
            lesion_gate=gate,
        )

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and validate ``manifest.json`` (or a model directory holding it).

        Raises
        ------
        ManifestError
            If the file is missing, is not JSON, or a field is wrong.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ManifestError("<file>", f"cannot read {path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError("<file>", f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written by the exporter (inverse of :meth:`from_dict`)."""

        def tensor(spec: TensorSpec) -> dict[str, Any]:
            out: dict[str, Any] = {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)}
            if spec.role != "input":
                out = {"role": spec.role, **out}
            else:
                out["layout"] = spec.layout
            return out

        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "description": self.description,
            "input": tensor(self.input),
            "grid": {
                "shape": list(self.grid.shape),
                "spacing_mm": list(self.grid.spacing_mm),
                "placement": self.grid.placement,
                "fill_hu": self.grid.fill_hu,
            },
            "intensity": {
                "clip_hu": list(self.intensity.clip_hu),
                "offset_hu": self.intensity.offset_hu,
                "scale_hu": self.intensity.scale_hu,
            },
            "outputs": [tensor(o) for o in self.outputs],
            "lesion_threshold": self.lesion_threshold,
            "classes": [asdict(c) for c in self.classes],
            "segments": [asdict(s) for s in self.segments],
            "training": dict(self.training),
            "intended_use": self.intended_use,
        }
        if self.lesion_gate is not None:
            data["lesion_gate"] = self.lesion_gate
        return data

    def save(self, path: str | Path) -> Path:
        """Write ``manifest.json`` (``path`` may be the model directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path
