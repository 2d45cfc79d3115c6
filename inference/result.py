"""What the inference pipeline returns: masks on the source grid, class
probabilities and the lesion analysis.

These plain dataclasses are the seam between :mod:`inference` (which fills
them) and :mod:`pacs_node` (which encodes them as DICOM-SEG, TID 1500 SR and
``result.json``). They hold no pydicom or database objects.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.geometry import Geometry

LOGGER = logging.getLogger(__name__)

__all__ = ["Lesion", "LungInvolvement", "LesionAnalysis", "InferenceResult", "Timings"]

#: Lung side values ("left"/"right" are the *patient's* left and right).
SIDES = ("left", "right")
#: Craniocaudal thirds of each lung, by the lung's own extent.
ZONES = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Lesion:
    """One connected lesion component (26-connectivity) on the source grid.

    Attributes
    ----------
    index: int
        1-based, ordered by decreasing volume.
    voxel_count: int
        Number of voxels of the component in the source-grid lesion mask.
    volume_ml: float
        ``voxel_count * voxel volume``.
    mean_hu: float
        Mean HU of the source volume over the component.
    side: str
        ``"left"`` or ``"right"`` (patient side holding most of its voxels).
    zone: str
        ``"upper"``, ``"middle"`` or ``"lower"`` third of that lung.
    centroid_mm: tuple[float, float, float]
        LPS centroid.
    bbox: tuple[int, int, int, int, int, int]
        ``(k0, k1, i0, i1, j0, j1)`` half-open voxel bounds.
    """

    index: int
    voxel_count: int
    volume_ml: float
    mean_hu: float
    side: str
    zone: str
    centroid_mm: tuple[float, float, float]
    bbox: tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class LungInvolvement:
    """Lesion burden of one region (a lung, a zone, or both lungs).

    Attributes
    ----------
    region: str
        ``"total"``, ``"left"``, ``"right"``, or ``"<side>_<zone>"``.
    lung_volume_ml: float
    lesion_volume_ml: float
        Lesion volume inside that region's lung mask.
    percent: float
        ``100 * lesion / lung`` (0 when the lung volume is 0).
    """

    region: str
    lung_volume_ml: float
    lesion_volume_ml: float
    percent: float


@dataclass(frozen=True)
class LesionAnalysis:
    """Connected components and involvement of a lesion mask."""

    lesions: tuple[Lesion, ...]
    involvement: tuple[LungInvolvement, ...]
    total_lesion_volume_ml: float

    def region(self, name: str) -> LungInvolvement:
        """The involvement entry called ``name`` (``"total"``, ``"left"``...)."""
        for item in self.involvement:
            if item.region == name:
                return item
        raise KeyError(name)


@dataclass
class Timings:
    """Seconds spent in each stage, for logs and benchmarks."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    analysis: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON."""
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


@dataclass
class InferenceResult:
    """The outcome of running a model on one CT volume.

    Attributes
    ----------
    geometry: Geometry
        The source volume's geometry; both masks have ``geometry.shape``.
    lesion_mask: numpy.ndarray
        ``bool`` array, lesion voxels on the source grid.
    lung_mask: numpy.ndarray
        ``uint8`` array on the source grid: 0 outside, 1 right lung, 2 left
        lung (patient sides).
    class_keys: tuple[str, ...]
        Class keys in the manifest's order.
    class_probabilities: tuple[float, ...]
        Same order as ``class_keys``; sums to 1.
    analysis: LesionAnalysis
    model_name: str
    model_version: str
    provider: str
        The ONNX Runtime execution provider that really ran.
    timings: Timings
    """

    geometry: Geometry
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    class_keys: tuple[str, ...]
    class_probabilities: tuple[float, ...]
    analysis: LesionAnalysis
    model_name: str
    model_version: str
    provider: str = "CPUExecutionProvider"
    timings: Timings = field(default_factory=Timings)

    @property
    def predicted_class(self) -> str:
        """Key of the most probable class."""
        return self.class_keys[int(np.argmax(self.class_probabilities))]

    @property
    def has_lesions(self) -> bool:
        """Whether the lesion mask has any voxel."""
        return bool(self.lesion_mask.any())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no masks), used for ``result.json``."""
        return {
            "model": {"name": self.model_name, "version": self.model_version},
            "provider": self.provider,
            "predicted_class": self.predicted_class,
            "class_probabilities": {
                k: round(float(p), 6) for k, p in zip(self.class_keys, self.class_probabilities)
            },
            "total_lesion_volume_ml": round(self.analysis.total_lesion_volume_ml, 3),
            "involvement": [
                {
                    "region": item.region,
                    "lung_volume_ml": round(item.lung_volume_ml, 3),
                    "lesion_volume_ml": round(item.lesion_volume_ml, 3),
                    "percent": round(item.percent, 3),
                }
                for item in self.analysis.involvement
            ],
            "lesions": [
                {
                    "index": lesion.index,
                    "voxel_count": lesion.voxel_count,
                    "volume_ml": round(lesion.volume_ml, 3),
                    "mean_hu": round(lesion.mean_hu, 1),
                    "side": lesion.side,
                    "zone": lesion.zone,
                    "centroid_mm": [round(v, 2) for v in lesion.centroid_mm],
                }
                for lesion in self.analysis.lesions
            ],
            "geometry": self.geometry.to_dict(),
            "timings_s": self.timings.to_dict(),
        }
