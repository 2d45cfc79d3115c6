"""Lesion analysis on the source grid: components, volumes, sides, zones, involvement.

Definitions (they fill :class:`inference.result.LesionAnalysis`)
-----------------------------------------------------------------
Components
    Connected components of the lesion mask with **26-connectivity** (voxels
    touching by a face, an edge or a corner are one lesion), numbered 1..n
    by decreasing voxel count (ties: by position).
Volume
    ``voxel_count * geometry.voxel_volume_ml``.
Mean HU
    Mean of the source HU over the component's voxels.
Side
    The patient side (lung mask label 1 = right, 2 = left) holding most of
    the component's voxels. A component with no voxel in either lung (or a
    tie) takes the side of its centroid: patient left is +x in LPS, split at
    the midpoint between the two lungs' centroids (or the volume centre).
Zones
    Upper / middle / lower third of **each lung's own craniocaudal extent in
    patient z** (LPS +z is superior), measured between the lowest and the
    highest voxel centre of that lung; never by slice index, so slices
    stored head-first or feet-first give the same zones. A lesion's zone is
    the zone of its side's lung holding most of its voxels.
Involvement
    For ``"total"``, ``"left"``, ``"right"`` and every ``"<side>_<zone>"``:
    lung volume of the region, lesion volume inside it, and
    ``100 * lesion / lung`` (0 when the region has no lung).

Memory: components are labelled on the bounding box of the mask only, in
``uint16`` when fewer than 65536 components (``int32`` otherwise); region
counts are accumulated slice chunk by slice chunk.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.geometry import Geometry
from inference.result import SIDES, ZONES, Lesion, LesionAnalysis, LungInvolvement

LOGGER = logging.getLogger(__name__)

__all__ = [
    "Components",
    "label_components",
    "drop_small_components",
    "analyse_lesions",
    "CONNECTIVITY",
    "RIGHT_LUNG",
    "LEFT_LUNG",
]

#: Connectivity of lesion components (26: faces, edges and corners).
CONNECTIVITY = 26
#: Lung mask label of the patient's right lung.
RIGHT_LUNG = 1
#: Lung mask label of the patient's left lung.
LEFT_LUNG = 2
#: Source slices per step when accumulating region counts.
CHUNK_SLICES = 16

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
_SIDE_LABELS = {"right": RIGHT_LUNG, "left": LEFT_LUNG}


@dataclass(frozen=True)
class Components:
    """Connected components of a mask, labelled inside its bounding box.

    Attributes
    ----------
    labels: numpy.ndarray
        ``uint16`` or ``int32`` labels of the cropped mask (0 background).
    box: tuple[slice, slice, slice]
        Where ``labels`` sits in the full array.
    count: int
        Number of components.
    objects: tuple[tuple[slice, slice, slice], ...]
        Bounding slices of component ``n`` (at index ``n - 1``) inside
        ``labels``.
    """

    labels: np.ndarray
    box: tuple[slice, slice, slice]
    count: int
    objects: tuple[tuple[slice, slice, slice], ...]

    def voxel_count(self, number: int) -> int:
        """Voxels of component ``number`` (1-based)."""
        return int(np.count_nonzero(self.labels[self.objects[number - 1]] == number))


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    along_k = np.nonzero(mask.any(axis=(1, 2)))[0]
    if along_k.size == 0:
        return None
    sub = mask[int(along_k[0]) : int(along_k[-1]) + 1]
    along_i = np.nonzero(sub.any(axis=(0, 2)))[0]
    along_j = np.nonzero(sub.any(axis=(0, 1)))[0]
    return (
        slice(int(along_k[0]), int(along_k[-1]) + 1),
        slice(int(along_i[0]), int(along_i[-1]) + 1),
        slice(int(along_j[0]), int(along_j[-1]) + 1),
    )


def label_components(mask: np.ndarray) -> Components:
    """Label the 26-connected components of a boolean 3-D mask.

    Parameters
    ----------
    mask: numpy.ndarray
        Boolean ``[k, i, j]`` array.

    Returns
    -------
    Components

    Raises
    ------
    ValueError
        If ``mask`` is not a 3-D boolean array.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 3 or mask.dtype != bool:
        raise ValueError('Argument "mask" should be a 3-D boolean numpy array.')
    box = _bounding_box(mask)
    if box is None:
        empty = np.zeros((0, 0, 0), dtype=np.uint16)
        return Components(empty, (slice(0, 0), slice(0, 0), slice(0, 0)), 0, ())
    crop = mask[box]
    labels = np.empty(crop.shape, dtype=np.uint16)
    try:
        count = int(ndimage.label(crop, structure=_STRUCTURE_26, output=labels))
    except RuntimeError:  # more than 65535 components
        labels = np.empty(crop.shape, dtype=np.int32)
        count = int(ndimage.label(crop, structure=_STRUCTURE_26, output=labels))
    objects = tuple(ndimage.find_objects(labels, max_label=count))
    return Components(labels, box, count, objects)


def drop_small_components(mask: np.ndarray, geometry: Geometry, min_volume_ml: float) -> int:
    """Remove 26-connected components smaller than ``min_volume_ml``, in place.

    Parameters
    ----------
    mask: numpy.ndarray
        Boolean ``[k, i, j]`` array with ``geometry.shape``; modified in place.
    geometry: Geometry
        For the voxel volume.
    min_volume_ml: float
        Components with ``voxel_count * voxel volume < min_volume_ml`` go.

    Returns
    -------
    int
        Number of components removed.

    Raises
    ------
    ValueError
        If the shapes disagree or ``min_volume_ml`` is negative.
    """
    if tuple(mask.shape) != geometry.shape:
        raise ValueError(f'Argument "mask" has shape {mask.shape}, the geometry {geometry.shape}.')
    if not min_volume_ml >= 0:
        raise ValueError('Argument "min_volume_ml" should be a non-negative number.')
    if min_volume_ml == 0:
        return 0
    min_voxels = min_volume_ml / geometry.voxel_volume_ml
    components = label_components(mask)
    view = mask[components.box]
    removed = 0
    for number, obj in enumerate(components.objects, start=1):
        box_voxels = int(np.prod([s.stop - s.start for s in obj]))
        # A box smaller than the limit needs no count (saves a big temporary
        # for large components, which are counted only when their box is big).
        if box_voxels >= min_voxels and components.voxel_count(number) >= min_voxels:
            continue
        view[obj][components.labels[obj] == number] = False
        removed += 1
    if removed:
        LOGGER.debug("Dropped %d lesion components below %.3f mL", removed, min_volume_ml)
    return removed


# ----------------------------------------------------------------------
# Patient z and lung extents
# ----------------------------------------------------------------------
def _z_terms(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-axis contributions to the LPS z of voxel centres."""
    affine = geometry.affine
    k, i, j = (np.arange(n, dtype=np.float64) for n in geometry.shape)
    return (
        affine[2, 3] + affine[2, 0] * k,
        affine[2, 1] * i,
        affine[2, 2] * j,
    )


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK_SLICES):
        yield slice(start, min(start + CHUNK_SLICES, n))


def _z_block(terms: tuple[np.ndarray, np.ndarray, np.ndarray], chunk: slice) -> np.ndarray:
    """Patient z of a slice chunk; ``(n, 1, 1)`` for axial slices (broadcast it)."""
    zk, zi, zj = terms
    if not zi.any() and not zj.any():
        return zk[chunk][:, None, None]
    return zk[chunk][:, None, None] + zi[None, :, None] + zj[None, None, :]


def _lung_extents(
    lung_mask: np.ndarray, terms: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> dict[int, tuple[float, float]]:
    """``{label: (z_min, z_max)}`` of voxel centres for each lung present."""
    lows = {RIGHT_LUNG: np.inf, LEFT_LUNG: np.inf}
    highs = {RIGHT_LUNG: -np.inf, LEFT_LUNG: -np.inf}
    for chunk in _chunks(lung_mask.shape[0]):
        block = lung_mask[chunk]
        if not block.any():
            continue
        z = np.broadcast_to(_z_block(terms, chunk), block.shape)
        for label in (RIGHT_LUNG, LEFT_LUNG):
            inside = block == label
            if inside.any():
                values = z[inside]
                lows[label] = min(lows[label], float(values.min()))
                highs[label] = max(highs[label], float(values.max()))
    return {
        label: (lows[label], highs[label]) for label in lows if np.isfinite(lows[label])
    }


def _zone_of(z: np.ndarray, extent: tuple[float, float]) -> np.ndarray:
    """0 = upper, 1 = middle, 2 = lower (indices into :data:`ZONES`)."""
    low, high = extent
    third = (high - low) / 3.0
    zone = np.full(z.shape, 1, dtype=np.int8)
    zone[z >= high - third] = 0
    zone[z < low + third] = 2
    return zone


# ----------------------------------------------------------------------
# The analysis
# ----------------------------------------------------------------------
def analyse_lesions(
    lesion_mask: np.ndarray,
    lung_mask: np.ndarray,
    hu: np.ndarray,
    geometry: Geometry,
) -> LesionAnalysis:
    """Components, per-lesion measurements and lung involvement.

    Parameters
    ----------
    lesion_mask: numpy.ndarray
        Boolean ``[k, i, j]`` lesion mask on the source grid.
    lung_mask: numpy.ndarray
        ``uint8`` lung mask, 0 outside, 1 right lung, 2 left lung.
    hu: numpy.ndarray
        Source HU (``int16`` or float).
    geometry: Geometry
        The source geometry; all arrays have ``geometry.shape``.

    Returns
    -------
    LesionAnalysis
        Lesions by decreasing volume and the involvement of ``"total"``,
        ``"left"``, ``"right"`` and the six ``"<side>_<zone>"`` regions.

    Raises
    ------
    ValueError
        If an array has the wrong shape or type.
    """
    for name, array in (("lesion_mask", lesion_mask), ("lung_mask", lung_mask), ("hu", hu)):
        if not isinstance(array, np.ndarray) or tuple(array.shape) != geometry.shape:
            raise ValueError(
                f'Argument "{name}" should be a numpy array of shape {geometry.shape}.'
            )
    if lesion_mask.dtype != bool:
        raise ValueError('Argument "lesion_mask" should be a boolean array.')
    if lung_mask.dtype != np.uint8:
        raise ValueError('Argument "lung_mask" should be a uint8 array (0, 1 right, 2 left).')

    voxel_ml = geometry.voxel_volume_ml
    terms = _z_terms(geometry)
    extents = _lung_extents(lung_mask, terms)
    involvement, lesion_voxels = _involvement(lesion_mask, lung_mask, terms, extents, voxel_ml)
    lesions = _lesions(lesion_mask, lung_mask, hu, geometry, terms, extents)
    return LesionAnalysis(
        lesions=lesions,
        involvement=involvement,
        total_lesion_volume_ml=lesion_voxels * voxel_ml,
    )


def _involvement(
    lesion_mask: np.ndarray,
    lung_mask: np.ndarray,
    terms: tuple[np.ndarray, np.ndarray, np.ndarray],
    extents: dict[int, tuple[float, float]],
    voxel_ml: float,
) -> tuple[tuple[LungInvolvement, ...], int]:
    # code = 3 * (label - 1) + zone for lung voxels: 0..2 right, 3..5 left.
    lung_counts = np.zeros(6, dtype=np.int64)
    lesion_counts = np.zeros(6, dtype=np.int64)
    lesion_total = 0
    for chunk in _chunks(lung_mask.shape[0]):
        lesion_block = lesion_mask[chunk]
        lesion_total += int(np.count_nonzero(lesion_block))
        block = lung_mask[chunk]
        if not block.any():
            continue
        z = np.broadcast_to(_z_block(terms, chunk), block.shape)
        for label, extent in extents.items():
            inside = block == label
            zone = _zone_of(z[inside], extent)
            base = 3 * (label - 1)
            lung_counts[base : base + 3] += np.bincount(zone, minlength=3)
            lesion_zone = zone[lesion_block[inside]]
            lesion_counts[base : base + 3] += np.bincount(lesion_zone, minlength=3)

    def entry(region: str, lung: int, lesion: int) -> LungInvolvement:
        return LungInvolvement(
            region=region,
            lung_volume_ml=lung * voxel_ml,
            lesion_volume_ml=lesion * voxel_ml,
            percent=100.0 * lesion / lung if lung else 0.0,
        )

    items = [entry("total", int(lung_counts.sum()), int(lesion_counts.sum()))]
    for side in SIDES:
        base = 3 * (_SIDE_LABELS[side] - 1)
        items.append(
            entry(
                side,
                int(lung_counts[base : base + 3].sum()),
                int(lesion_counts[base : base + 3].sum()),
            )
        )
    for side in SIDES:
        base = 3 * (_SIDE_LABELS[side] - 1)
        for offset, zone_name in enumerate(ZONES):
            items.append(
                entry(
                    f"{side}_{zone_name}",
                    int(lung_counts[base + offset]),
                    int(lesion_counts[base + offset]),
                )
            )
    return tuple(items), lesion_total


def _midline_x(lung_mask: np.ndarray, geometry: Geometry) -> float:
    """LPS x separating the lungs: midpoint of their centroids, or the volume centre."""
    centroids = []
    step = max(1, lung_mask.shape[1] // 128)
    sub = lung_mask[:, ::step, ::step]
    for label in (RIGHT_LUNG, LEFT_LUNG):
        idx = np.nonzero(sub == label)
        if idx[0].size == 0:
            break
        mean = np.array([idx[0].mean(), idx[1].mean() * step, idx[2].mean() * step])
        centroids.append(geometry.index_to_patient(mean[None, :])[0][0])
    if len(centroids) == 2:
        return float(sum(centroids) / 2.0)
    return float(geometry.center[0])


def _zone_counts(
    part: np.ndarray,
    start: np.ndarray,
    terms: tuple[np.ndarray, np.ndarray, np.ndarray],
    extent: tuple[float, float],
) -> np.ndarray:
    """Voxels of ``part`` (a box at ``start``) in the upper, middle, lower zone."""
    zk, zi, zj = terms
    rows = slice(int(start[1]), int(start[1]) + part.shape[1])
    cols = slice(int(start[2]), int(start[2]) + part.shape[2])
    counts = np.zeros(3, dtype=np.int64)
    for chunk in _chunks(part.shape[0]):
        block = part[chunk]
        ks = slice(int(start[0]) + chunk.start, int(start[0]) + chunk.stop)
        z = np.broadcast_to(
            zk[ks][:, None, None] + zi[rows][None, :, None] + zj[cols][None, None, :],
            block.shape,
        )
        counts += np.bincount(_zone_of(z[block], extent), minlength=3)
    return counts


def _lesions(
    lesion_mask: np.ndarray,
    lung_mask: np.ndarray,
    hu: np.ndarray,
    geometry: Geometry,
    terms: tuple[np.ndarray, np.ndarray, np.ndarray],
    extents: dict[int, tuple[float, float]],
) -> tuple[Lesion, ...]:
    components = label_components(lesion_mask)
    if components.count == 0:
        return ()
    box = components.box
    offset = np.array([box[0].start, box[1].start, box[2].start])
    lung_box = lung_mask[box]
    hu_box = hu[box]
    midline: float | None = None
    all_extent = (
        min(e[0] for e in extents.values()) if extents else float(terms[0].min()),
        max(e[1] for e in extents.values()) if extents else float(terms[0].max()),
    )
    raw = []
    for number, obj in enumerate(components.objects, start=1):
        part = components.labels[obj] == number
        count = int(np.count_nonzero(part))
        start = offset + np.array([s.start for s in obj])
        centroid_index = np.array(
            [
                float(np.dot(np.arange(n), part.sum(axis=axes))) / count
                for n, axes in zip(part.shape, ((1, 2), (0, 2), (0, 1)))
            ]
        ) + start
        centroid = geometry.index_to_patient(centroid_index[None, :])[0]
        labels_in = lung_box[obj][part]
        right = int(np.count_nonzero(labels_in == RIGHT_LUNG))
        left = int(np.count_nonzero(labels_in == LEFT_LUNG))
        if right != left:
            side = "right" if right > left else "left"
        else:
            if midline is None:
                midline = _midline_x(lung_mask, geometry)
            side = "left" if centroid[0] > midline else "right"
        extent = extents.get(_SIDE_LABELS[side], all_extent)
        zones = _zone_counts(part, start, terms, extent)
        best = np.flatnonzero(zones == zones.max())
        if best.size > 1:  # tie: the zone of the centroid
            zone_index = int(_zone_of(np.array([centroid[2]]), extent)[0])
        else:
            zone_index = int(best[0])
        mean_hu = float(hu_box[obj][part].sum(dtype=np.float64)) / count
        stop = start + np.array(part.shape)
        bbox = (
            int(start[0]), int(stop[0]), int(start[1]), int(stop[1]), int(start[2]), int(stop[2])
        )
        raw.append((count, bbox, mean_hu, side, ZONES[zone_index], centroid))
    raw.sort(key=lambda item: (-item[0], item[1]))
    voxel_ml = geometry.voxel_volume_ml
    return tuple(
        Lesion(
            index=position,
            voxel_count=count,
            volume_ml=count * voxel_ml,
            mean_hu=mean_hu,
            side=side,
            zone=zone,
            centroid_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
            bbox=bbox,
        )
        for position, (count, bbox, mean_hu, side, zone, centroid) in enumerate(raw, start=1)
    )
