"""The inference pipeline: HU volume + geometry in, :class:`InferenceResult` out.

Pure compute: reading DICOM (:func:`inference.volume.build_volume`) and
writing results (``pacs_node``) stay outside. One :class:`InferencePipeline`
wraps one :class:`~inference.session.ModelSession` (built once by
:func:`~inference.session.load_model`) and can run any number of volumes.

Stages and their :class:`~inference.result.Timings` fields
    ``preprocess``  :func:`inference.preprocessing.prepare_input`
    ``inference``   :meth:`inference.session.ModelSession.run`
    ``postprocess`` :func:`inference.postprocessing.postprocess` (masks on
                    the source grid)
    ``analysis``    :func:`inference.analysis.analyse_lesions`

Memory: besides the caller's HU array the pipeline holds the model-grid
arrays (a few MB), the ``bool`` lesion mask and the ``uint8`` lung mask
(1 byte per source voxel each) and slice-chunk temporaries; no full-size
float copy of the source volume is made.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference.analysis import analyse_lesions
from inference.errors import InferenceError
from inference.geometry import Geometry
from inference.manifest import Manifest
from inference.postprocessing import MIN_LESION_VOLUME_ML, postprocess
from inference.preprocessing import prepare_input
from inference.result import InferenceResult, Timings
from inference.session import ModelSession, load_model
from inference.volume import CTVolume

LOGGER = logging.getLogger(__name__)

__all__ = ["InferencePipeline", "class_probabilities"]

#: Largest accepted deviation of the class probabilities' sum from 1.
PROBABILITY_SUM_TOLERANCE = 1e-3


def class_probabilities(array: np.ndarray, manifest: Manifest) -> tuple[float, ...]:
    """Validate the model's class probabilities and return them summing to 1.

    Parameters
    ----------
    array: numpy.ndarray
        The ``class_probabilities`` output, ``[1, n_classes]``.
    manifest: Manifest
        For the number of classes.

    Returns
    -------
    tuple[float, ...]
        One probability per class in manifest order, renormalised (in
        float64) so that they sum to 1.

    Raises
    ------
    InferenceError
        If the vector has the wrong length, is not finite, has negative
        entries, or does not sum to 1 within
        :data:`PROBABILITY_SUM_TOLERANCE` (the graph must end in a softmax).
    """
    values = np.asarray(array, dtype=np.float64).ravel()
    n_classes = len(manifest.classes)
    if values.size != n_classes:
        raise InferenceError(
            f"class_probabilities has {values.size} values for {n_classes} classes"
        )
    if not np.all(np.isfinite(values)) or np.any(values < -1e-6):
        raise InferenceError("class_probabilities has non-finite or negative values")
    total = float(values.sum())
    if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
        raise InferenceError(f"class_probabilities sums to {total:.6f}, not 1")
    values = np.clip(values, 0.0, None)
    values /= values.sum()
    return tuple(float(v) for v in values)


class InferencePipeline:
    """Run one model on CT volumes.

    Parameters
    ----------
    model: ModelSession
        The loaded model (see :func:`inference.session.load_model`).
    min_lesion_volume_ml: float, optional
        Lesion components (26-connected) smaller than this are dropped from
        the lesion mask before analysis (default 0.1 mL).

    Raises
    ------
    TypeError
        If ``model`` is not a :class:`ModelSession`.
    ValueError
        If ``min_lesion_volume_ml`` is negative or not finite.
    """

    def __init__(
        self, model: ModelSession, *, min_lesion_volume_ml: float = MIN_LESION_VOLUME_ML
    ) -> None:
        if not isinstance(model, ModelSession):
            raise TypeError('Argument "model" should be an inference.session.ModelSession.')
        if (
            not isinstance(min_lesion_volume_ml, (int, float))
            or not math.isfinite(min_lesion_volume_ml)
            or min_lesion_volume_ml < 0
        ):
            raise ValueError('Argument "min_lesion_volume_ml" should be a non-negative number.')
        self.model = model
        self.min_lesion_volume_ml = float(min_lesion_volume_ml)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        min_lesion_volume_ml: float = MIN_LESION_VOLUME_ML,
    ) -> InferencePipeline:
        """Load a model directory and wrap it (see :func:`inference.session.load_model`).

        Parameters
        ----------
        model_dir: str | pathlib.Path
            Directory holding ``model.onnx`` and ``manifest.json``.
        providers: Sequence[str] | None, optional
            Execution providers in order of preference.
        intra_op_threads, inter_op_threads: int | None, optional
            ONNX Runtime thread counts.
        min_lesion_volume_ml: float, optional
            As for the constructor.

        Returns
        -------
        InferencePipeline

        Raises
        ------
        ModelLoadError, ManifestError, ValueError, TypeError
            As :func:`inference.session.load_model`.
        """
        model = load_model(
            model_dir,
            providers=providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
        )
        return cls(model, min_lesion_volume_ml=min_lesion_volume_ml)

    @property
    def manifest(self) -> Manifest:
        """The model's manifest."""
        return self.model.manifest

    def run(self, hu: np.ndarray, geometry: Geometry) -> InferenceResult:
        """Segment, classify and analyse one HU volume.

        Parameters
        ----------
        hu: numpy.ndarray
            ``[k, i, j]`` Hounsfield units (``int16`` or float) with
            ``geometry.shape``; not modified.
        geometry: Geometry
            The volume's geometry.

        Returns
        -------
        InferenceResult
            Masks on ``geometry``, class probabilities in manifest order,
            lesion analysis, model name/version, the provider that ran and
            the stage timings.

        Raises
        ------
        TypeError
            If ``hu`` is not a real-valued numpy array or ``geometry`` not a
            :class:`Geometry`.
        ValueError
            If their shapes disagree.
        InferenceError
            If the model's outputs break the contract (see
            :func:`class_probabilities`).
        """
        if not isinstance(geometry, Geometry):
            raise TypeError('Argument "geometry" should be an inference.geometry.Geometry.')
        if not isinstance(hu, np.ndarray) or hu.dtype.kind not in "iuf":
            raise TypeError('Argument "hu" should be a real-valued numpy array.')
        if tuple(hu.shape) != geometry.shape:
            raise ValueError(
                f'Argument "hu" has shape {hu.shape}, the geometry says {geometry.shape}.'
            )
        manifest = self.manifest
        timings = Timings()

        start = time.perf_counter()
        prepared = prepare_input(hu, geometry, manifest)
        timings.preprocess = time.perf_counter() - start

        start = time.perf_counter()
        outputs = self.model.run(prepared.tensor)
        timings.inference = time.perf_counter() - start
        model_geometry = prepared.geometry
        del prepared
        probabilities = class_probabilities(outputs["class_probabilities"], manifest)

        start = time.perf_counter()
        masks = postprocess(
            outputs,
            model_geometry,
            hu,
            geometry,
            manifest,
            min_lesion_volume_ml=self.min_lesion_volume_ml,
        )
        del outputs
        timings.postprocess = time.perf_counter() - start

        start = time.perf_counter()
        analysis = analyse_lesions(masks.lesion_mask, masks.lung_mask, hu, geometry)
        timings.analysis = time.perf_counter() - start

        result = InferenceResult(
            geometry=geometry,
            lesion_mask=masks.lesion_mask,
            lung_mask=masks.lung_mask,
            class_keys=manifest.class_keys,
            class_probabilities=probabilities,
            analysis=analysis,
            model_name=manifest.model_name,
            model_version=manifest.model_version,
            provider=self.model.provider,
            timings=timings,
        )
        best = int(np.argmax(probabilities))
        LOGGER.info(
            "Inference with %s %s on %s: predicted %s (p=%.3f), %d lesion(s), %.1f mL "
            "(%.1f %% of lung); timings preprocess %.2f s, inference %.2f s, "
            "postprocess %.2f s, analysis %.2f s",
            manifest.model_name,
            manifest.model_version,
            self.model.provider,
            result.predicted_class,
            probabilities[best],
            len(analysis.lesions),
            analysis.total_lesion_volume_ml,
            analysis.region("total").percent,
            timings.preprocess,
            timings.inference,
            timings.postprocess,
            timings.analysis,
        )
        return result

    def run_volume(self, volume: CTVolume) -> InferenceResult:
        """:meth:`run` on a :class:`~inference.volume.CTVolume`.

        Parameters
        ----------
        volume: CTVolume

        Returns
        -------
        InferenceResult
        """
        return self.run(volume.hu, volume.geometry)
