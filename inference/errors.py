"""Errors raised by the :mod:`inference` package.

All domain failures derive from :class:`InferenceError`; argument errors use
the built-in ``ValueError`` / ``TypeError``.
"""
from __future__ import annotations

__all__ = [
    "InferenceError",
    "ManifestError",
    "ModelLoadError",
    "VolumeError",
    "SeriesNotVolumetricError",
]


class InferenceError(Exception):
    """Base class of the inference package's domain errors."""


class ManifestError(InferenceError):
    """A model manifest is missing, malformed, or disagrees with its graph.

    Parameters
    ----------
    field: str
        Dotted path of the manifest field at fault, e.g. ``"input.shape"``.
    message: str
        What is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f'manifest field "{field}": {message}')


class ModelLoadError(InferenceError):
    """A model directory cannot be loaded (missing files, unreadable graph)."""


class VolumeError(InferenceError):
    """A set of images cannot be turned into a volume the model may see.

    The message is a human-readable reason suitable for recording on a job
    (no PHI: UIDs and counts only).
    """


class SeriesNotVolumetricError(VolumeError):
    """The series is not a single regularly spaced stack of parallel slices."""
