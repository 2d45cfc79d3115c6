"""Generate a synthetic chest-CT phantom: HU volume, masks, label, geometry.

``generate_phantom(spec)`` draws the anatomy, the vessel and bronchial trees
and the lesions from independent random streams seeded by ``spec.seed``
(none of them depends on the grid), then samples the continuous fields on
the grid of the spec.

Geometry (DICOM LPS, head first supine): axial slices with
``row_direction = (1, 0, 0)`` and ``column_direction = (0, 1, 0)``;
``slice_direction = (0, 0, 1)`` (the default cross product), so slice 0 is
the most *inferior* (caudal) slice and ``z`` grows with the slice index.
The patient's right lung is at negative ``x`` (image left in the usual
radiological display) and has lung label 1; the left lung has label 2.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from inference.geometry import Geometry
from inference.phantom.anatomy import Anatomy
from inference.phantom.lesions import Lesion, LesionNoise, plan_lesions
from inference.phantom.render import Renderer
from inference.phantom.spec import PhantomSpec, normalize_label, sample_spec
from inference.phantom.vessels import VesselTrees, build_trees

LOGGER = logging.getLogger(__name__)

__all__ = ["Phantom", "PhantomPlan", "generate_phantom", "phantom_geometry", "plan_phantom"]

#: Seed-sequence tags of the grid-independent random streams.
STREAMS: dict[str, int] = {"anatomy": 1, "trees": 2, "lesions": 3, "noise_fields": 4}

#: Voxels per rendered slab (bounds the working memory to a few hundred MB).
SLAB_VOXELS = 6_000_000


@dataclass(frozen=True)
class Phantom:
    """A rendered phantom.

    Attributes
    ----------
    hu: numpy.ndarray
        int16 ``[slice, row, column]`` Hounsfield units; ``padding_value``
        outside the reconstruction circle, ``-1024..3071`` inside.
    lesion_mask: numpy.ndarray
        bool, same shape: voxels whose lesion field is above 0.5 (inside the
        lungs). Distractors are not lesions.
    lung_mask: numpy.ndarray
        uint8, same shape: 0 outside, 1 patient's right lung, 2 left lung.
    label: str
        ``"covid19"``, ``"cap"`` or ``"no_pneumonia"``.
    geometry: inference.geometry.Geometry
        Placement in LPS (see the module docstring).
    padding_value: int
        HU of the voxels outside the reconstruction circle (-2000 or -3024).
    spec: PhantomSpec
        The parameters it was generated from.
    lesions: tuple[str, ...]
        Kind of each lesion and distractor (``"ggo"``, ``"consolidation"``,
        ``"bronchopneumonia"``, ``"nodule"``, ``"atelectasis"``).
    """

    hu: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    label: str
    geometry: Geometry
    padding_value: int
    spec: PhantomSpec
    lesions: tuple[str, ...] = ()

    @property
    def lesion_volume_ml(self) -> float:
        """Volume of the lesion mask (mL)."""
        return float(np.count_nonzero(self.lesion_mask)) * self.geometry.voxel_volume_ml

    @property
    def lung_volume_ml(self) -> float:
        """Volume of the lung mask (mL)."""
        return float(np.count_nonzero(self.lung_mask)) * self.geometry.voxel_volume_ml

    @property
    def involvement(self) -> float:
        """Lesion volume as a fraction of the lung volume (0 if no lung)."""
        lung = np.count_nonzero(self.lung_mask)
        return float(np.count_nonzero(self.lesion_mask)) / lung if lung else 0.0

    def summary(self) -> dict[str, object]:
        """JSON-serialisable description (label, spec, volumes; no arrays)."""
        return {
            "label": self.label,
            "seed": self.spec.seed,
            "shape": list(self.hu.shape),
            "padding_value": self.padding_value,
            "lesion_volume_ml": round(self.lesion_volume_ml, 3),
            "lung_volume_ml": round(self.lung_volume_ml, 3),
            "involvement_percent": round(100.0 * self.involvement, 3),
            "lesions": list(self.lesions),
            "geometry": self.geometry.to_dict(),
            "spec": asdict(self.spec),
            "intended_use": "Synthetic phantom for research use only, not for diagnosis.",
        }


def phantom_geometry(spec: PhantomSpec) -> Geometry:
    """The LPS geometry of ``spec``'s grid (see the module docstring).

    Parameters
    ----------
    spec: PhantomSpec

    Returns
    -------
    inference.geometry.Geometry
    """
    m, ps, n, thk = spec.matrix, spec.pixel_spacing, spec.n_slices, spec.slice_thickness
    origin = (
        spec.fov_center[0] - (m - 1) / 2.0 * ps,
        spec.fov_center[1] - (m - 1) / 2.0 * ps,
        spec.table_z + spec.scan_center_z - (n - 1) / 2.0 * thk,
    )
    return Geometry(
        shape=(n, m, m),
        spacing=(thk, ps, ps),
        origin=origin,
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, 1.0),
    )


def _stream(spec: PhantomSpec, name: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, 0xD5C, STREAMS[name]])


@dataclass(frozen=True)
class PhantomPlan:
    """The continuous (grid-free) model of a phantom, before sampling.

    Attributes
    ----------
    spec: PhantomSpec
    anatomy: inference.phantom.anatomy.Anatomy
        Body, skeleton, mediastinum, lungs (``anatomy.lung_distance`` is the
        lung field the lung mask samples).
    trees: inference.phantom.vessels.VesselTrees
    lesions: tuple[inference.phantom.lesions.Lesion, ...]
        Lesions, then distractors (``in_mask`` false).
    noise: inference.phantom.lesions.LesionNoise
        Texture and shape fields.
    """

    spec: PhantomSpec
    anatomy: Anatomy
    trees: VesselTrees
    lesions: tuple[Lesion, ...]
    noise: LesionNoise

    def to_phantom_frame(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` LPS points (mm) to the phantom frame (``(x, y, z)``)."""
        spec = self.spec
        offset = np.array([spec.fov_center[0] + spec.body_offset[0],
                           spec.fov_center[1] + spec.body_offset[1], spec.table_z])
        return np.asarray(points, dtype=np.float64) - offset


def plan_phantom(spec: PhantomSpec) -> PhantomPlan:
    """Draw the anatomy, trees and lesions of ``spec`` (no voxels yet).

    Parameters
    ----------
    spec: PhantomSpec

    Returns
    -------
    PhantomPlan
        The same for every grid of the same patient.
    """
    anatomy = Anatomy.from_spec(spec, _stream(spec, "anatomy"))
    trees = build_trees(anatomy, _stream(spec, "trees"))
    noise = LesionNoise.create(anatomy, _stream(spec, "noise_fields"))
    lesions = plan_lesions(spec, anatomy, trees, _stream(spec, "lesions"), noise)
    return PhantomPlan(spec, anatomy, trees, tuple(lesions), noise)


def generate_phantom(
    spec: PhantomSpec | int,
    label: str | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> Phantom:
    """Generate a phantom.

    Two forms: ``generate_phantom(spec)`` renders a :class:`PhantomSpec`;
    ``generate_phantom(seed, label=None)`` is ``generate_phantom(
    sample_spec(seed, label))``.

    Parameters
    ----------
    spec: PhantomSpec | int
        The parameters, or a seed for :func:`sample_spec`.
    label: str | None
        Only with a seed: the class (key or short name); ``None`` draws it.
    progress: Callable[[int], None] | None
        Called with the number of slices finished after each slab.

    Returns
    -------
    Phantom
        Same spec, same arrays (bit for bit) on every call.

    Raises
    ------
    TypeError
        If ``spec`` is neither a spec nor an integer, or ``label`` is given
        with a spec.
    ValueError
        If the seed or label is invalid.
    """
    if isinstance(spec, PhantomSpec):
        if label is not None:
            raise TypeError('Argument "label" should only be given with a seed.')
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = sample_spec(int(spec), None if label is None else normalize_label(label))
    else:
        raise TypeError('Argument "spec" should be a PhantomSpec or an integer seed.')
    start = time.perf_counter()
    plan = plan_phantom(spec)
    planned = time.perf_counter()

    renderer = Renderer(spec, plan.anatomy, plan.trees, list(plan.lesions), plan.noise)
    shape = spec.shape
    hu = np.empty(shape, dtype=np.int16)
    lesion_mask = np.zeros(shape, dtype=bool)
    lung_mask = np.zeros(shape, dtype=np.uint8)
    step = max(1, SLAB_VOXELS // (spec.matrix * spec.matrix * renderer.sub_slices))
    for k0 in range(0, spec.n_slices, step):
        k1 = min(spec.n_slices, k0 + step)
        renderer.render(k0, k1, hu, lesion_mask, lung_mask)
        if progress is not None:
            progress(k1 - k0)
    LOGGER.debug(
        "phantom seed=%d label=%s shape=%s: planned in %.2f s, rendered in %.2f s",
        spec.seed, spec.label, shape, planned - start, time.perf_counter() - planned,
    )
    return Phantom(
        hu=hu,
        lesion_mask=lesion_mask,
        lung_mask=lung_mask,
        label=spec.label,
        geometry=phantom_geometry(spec),
        padding_value=spec.padding_value,
        spec=spec,
        lesions=tuple(lesion.kind for lesion in plan.lesions),
    )
