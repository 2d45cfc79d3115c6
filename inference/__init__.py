"""deepsc-node inference: volumes, phantoms, the joint model and its runtime.

Never imports pynetdicom and never talks to the database.
"""
import logging

from inference.errors import (
    InferenceError,
    ManifestError,
    ModelLoadError,
    SeriesNotVolumetricError,
    VolumeError,
)
from inference.geometry import Geometry
from inference.manifest import Manifest
from inference.result import InferenceResult, Lesion, LesionAnalysis, LungInvolvement

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Geometry",
    "InferenceError",
    "InferenceResult",
    "Lesion",
    "LesionAnalysis",
    "LungInvolvement",
    "Manifest",
    "ManifestError",
    "ModelLoadError",
    "SeriesNotVolumetricError",
    "VolumeError",
]
