"""From model outputs to the lesion and lung masks on the source grid.

:func:`postprocess` maps the lesion probabilities back to the source grid
(:func:`inference.preprocessing.to_source_grid`), thresholds them at the
manifest's ``lesion_threshold``, finds the lungs, restricts the lesions and
drops small lesion components. The result has exactly the voxels that go
into the DICOM-SEG, so SR volumes and SEG voxel counts agree.

Lung mask (:func:`extract_lungs`)
---------------------------------
Which source
    The manifest's "Lung" segment says it: ``hu_lung_extraction`` (HU only,
    the bundled model's choice) or ``lung_probability`` (the model's lung
    output thresholded at ``lesion_threshold``, then the same clean-up).
Coarse pass (blocks of whole source voxels of about 2.5 x 2 x 2 mm, so a
300 x 512 x 512 series costs about 2 s and 100-150 MB of temporaries)
    1. Air is HU < :data:`LUNG_AIR_HU`. Air connected, within its slice, to
       the in-plane border is outside air (room air, padding); the body is
       the largest connected component of the rest (so not the table, unless
       the patient lies on it without any gap), holes filled.
    2. Lung candidates are the other air components (6-connected). The two
       largest of at least :data:`MIN_LUNG_ML` (the second at least
       :data:`SECOND_LUNG_FRACTION` of the first) are the aerated lungs;
       smaller enclosed air (bowel gas, table pockets) is ignored. Large
       airways joined to the lungs stay in the mask.
    3. Lesion components inside the body are lung when they touch the
       aerated lungs, or when they are at least :data:`DETACHED_LESION_ML`
       (a fully consolidated lung has no air); other lesion components
       (e.g. below the diaphragm) are dropped. Holes are filled slice by
       slice (vessels and dense consolidation count as lung).
    4. Right/left: two separate lung components are told apart by their
       centroids (patient left is +x in LPS). Lungs that touch (anterior
       junction, airways) are separated by in-plane erosion (up to
       :data:`MAX_SPLIT_EROSION_MM`) into two seeds that then grow back
       through the region (a voxel takes the side that reaches it first);
       if erosion does not separate them, the split is the body's midline
       plane.
Full-resolution pass (slice chunks)
    A source voxel is lung when its nearest coarse voxel (or one next to it)
    is lung and it is air, lesion, or inside the coarse lung's interior;
    it takes that coarse voxel's side.

Lesion mask
-----------
Thresholded probabilities, restricted to the lung region above (so never in
outside air or outside the body), then 26-connected components below
``min_lesion_volume_ml`` (default :data:`MIN_LESION_VOLUME_ML`) are dropped.
The lung mask is the union of the lung and the final lesion mask: no lesion
voxel lies outside the lungs.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.analysis import LEFT_LUNG, RIGHT_LUNG, drop_small_components
from inference.geometry import Geometry
from inference.manifest import Manifest
from inference.preprocessing import to_source_grid
from inference.resample import CHUNK_SLICES

LOGGER = logging.getLogger(__name__)

__all__ = [
    "PostprocessResult",
    "postprocess",
    "extract_lungs",
    "lung_source",
    "LUNG_AIR_HU",
    "MIN_LESION_VOLUME_ML",
]

#: HU below which a voxel inside the body is air (aerated lung, airway).
LUNG_AIR_HU = -400.0
#: Default smallest lesion component kept (mL): 0.1 mL is a 4.6 mm cube, or 204
#: voxels of 0.7 x 0.7 x 1 mm. Example: ``postprocess(..., min_lesion_volume_ml=0.5)``.
MIN_LESION_VOLUME_ML = 0.1
#: Smallest enclosed air component that can be a lung (mL).
MIN_LUNG_ML = 30.0
#: The second lung must hold at least this fraction of the first one's air.
SECOND_LUNG_FRACTION = 0.05
#: Lesion components not touching aerated lung are kept from this size (mL).
DETACHED_LESION_ML = 50.0
#: Target spacing (mm) of the coarse grid, per axis (never finer than the source).
COARSE_SPACING_MM = (2.5, 2.0, 2.0)
#: Largest in-plane erosion used to separate touching lungs (mm).
MAX_SPLIT_EROSION_MM = 16.0

_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True
_IN_PLANE_4 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_4[1] = ndimage.generate_binary_structure(2, 1)
_FACES_6 = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class PostprocessResult:
    """Masks on the source grid.

    Attributes
    ----------
    lesion_mask: numpy.ndarray
        ``bool``: the final lesion voxels (what the SEG encodes).
    lung_mask: numpy.ndarray
        ``uint8``: 0 outside, 1 right lung, 2 left lung (patient sides).
    lung_source: str
        ``"hu_lung_extraction"`` or ``"lung_probability"``.
    dropped_components: int
        Lesion components removed for being smaller than the minimum volume.
    """

    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    lung_source: str
    dropped_components: int


def lung_source(manifest: Manifest) -> str:
    """Where the lung mask comes from: the manifest's "Lung" segment source.

    Parameters
    ----------
    manifest: Manifest

    Returns
    -------
    str
        ``"lung_probability"`` when a segment takes that source and the model
        has the output, ``"hu_lung_extraction"`` otherwise.
    """
    for segment in manifest.segments:
        if segment.source == "lung_probability" and manifest.output("lung_probability"):
            return "lung_probability"
    return "hu_lung_extraction"


# ----------------------------------------------------------------------
# Coarse grid helpers
# ----------------------------------------------------------------------
def _fold(block: np.ndarray, factor: int, axis: int, combine: np.ufunc) -> np.ndarray:
    """Combine each run of ``factor`` samples along ``axis`` (strided, no big temporaries)."""
    if factor == 1:
        return block
    index: list[slice] = [slice(None)] * block.ndim
    index[axis] = slice(0, None, factor)
    out = block[tuple(index)].copy()
    for offset in range(1, factor):
        index[axis] = slice(offset, None, factor)
        combine(out, block[tuple(index)], out=out)
    return out


def _labels_in(labels: np.ndarray, count: int, keep: Iterable[int]) -> np.ndarray:
    """``np.isin(labels, keep)`` for labels ``0..count``, by a lookup table (no sort)."""
    table = np.zeros(count + 1, dtype=bool)
    table[np.fromiter(keep, dtype=np.intp)] = True
    return table[labels]


@dataclass(frozen=True)
class _CoarseGrid:
    """Blocks of ``factors`` source voxels; ``maps[a][n]`` = block of index ``n``."""

    factors: tuple[int, int, int]
    geometry: Geometry
    maps: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def of(cls, geometry: Geometry) -> _CoarseGrid:
        fk, fi, fj = (
            max(1, int(round(target / s))) for s, target in zip(geometry.spacing, COARSE_SPACING_MM)
        )
        n_k, n_i, n_j = geometry.shape
        s_k, s_i, s_j = geometry.spacing
        origin = (
            np.asarray(geometry.origin, dtype=np.float64)
            + (fk - 1) / 2.0 * s_k * np.asarray(geometry.slice_direction)
            + (fi - 1) / 2.0 * s_i * np.asarray(geometry.column_direction)
            + (fj - 1) / 2.0 * s_j * np.asarray(geometry.row_direction)
        )
        coarse = Geometry(
            shape=(-(-n_k // fk), -(-n_i // fi), -(-n_j // fj)),
            spacing=(s_k * fk, s_i * fi, s_j * fj),
            origin=(float(origin[0]), float(origin[1]), float(origin[2])),
            row_direction=geometry.row_direction,
            column_direction=geometry.column_direction,
            slice_direction=geometry.slice_direction,
        )
        maps = (np.arange(n_k) // fk, np.arange(n_i) // fi, np.arange(n_j) // fj)
        return cls((fk, fi, fj), coarse, maps)

    def reduce(
        self, array: np.ndarray, how: str, clip: tuple[float, float] | None = None
    ) -> np.ndarray:
        """Block ``"mean"`` (float32) or ``"any"`` (bool) of a source array, chunked."""
        fk, fi, fj = self.factors
        n_k, n_i, n_j = array.shape
        ck, ci, cj = self.geometry.shape
        out = np.empty(self.geometry.shape, dtype=np.float32 if how == "mean" else bool)
        step = fk * max(1, CHUNK_SLICES // fk)
        for start in range(0, n_k, step):
            block = array[start : start + step]
            pad = (
                (0, -(-block.shape[0] // fk) * fk - block.shape[0]),
                (0, ci * fi - n_i),
                (0, cj * fj - n_j),
            )
            # Edge padding commutes with clipping: pad the (int16) source
            # first, then clip into the float32 copy that is needed anyway.
            if any(p[1] for p in pad):
                block = np.pad(block, pad, mode="edge")
            if clip is not None:
                block = np.clip(block, clip[0], clip[1], dtype=np.float32)
            if how == "mean" and block.dtype != np.float32:
                block = block.astype(np.float32)
            for axis, factor in enumerate(self.factors):
                block = _fold(block, factor, axis, np.add if how == "mean" else np.logical_or)
            lo = start // fk
            if how == "mean":
                block = block / np.float32(fk * fi * fj)
            out[lo : lo + block.shape[0]] = block
        return out

    def expand(self, coarse: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Nearest (block) upsampling of a coarse array over a source box."""
        k, i, j = (m[b] for m, b in zip(self.maps, box))
        return coarse[k][:, i][:, :, j]

    def source_box(self, coarse_mask: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Source index box covering the coarse voxels set in ``coarse_mask``."""
        box = []
        for axis, (f, n) in enumerate(zip(self.factors, (len(m) for m in self.maps))):
            other = tuple(a for a in range(3) if a != axis)
            used = np.nonzero(coarse_mask.any(axis=other))[0]
            if used.size == 0:
                return None
            box.append(slice(int(used[0]) * f, min(n, (int(used[-1]) + 1) * f)))
        return tuple(box)  # type: ignore[return-value]


def _border_connected(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` connected, within their slice, to the in-plane border."""
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    edges = (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1])
    border = np.unique(np.concatenate([edge.ravel() for edge in edges]))
    return _labels_in(labels, count, border[border > 0].tolist())


def _outside_air(air: np.ndarray) -> np.ndarray:
    """Air connected, within its slice, to the in-plane border."""
    return _border_connected(air, _IN_PLANE_8)


def _body(air: np.ndarray) -> np.ndarray:
    """The largest connected non-outside-air component (the patient, not the table)."""
    inside = ~_outside_air(air)
    labels, count = ndimage.label(inside, structure=_FACES_6)
    if count > 1:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        inside = labels == int(np.argmax(sizes))
    return _fill_holes_slicewise(inside)


def _fill_holes_slicewise(mask: np.ndarray) -> np.ndarray:
    """Fill, slice by slice, background not 4-connected to the in-plane border."""
    return ~_border_connected(~mask, _IN_PLANE_4)


def _aerated_lungs(candidates: np.ndarray, voxel_ml: float) -> np.ndarray:
    labels, count = ndimage.label(candidates, structure=_FACES_6)
    if count == 0:
        return np.zeros(candidates.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:] * voxel_ml
    order = np.argsort(sizes)[::-1]
    keep = [int(order[0]) + 1] if sizes[order[0]] >= MIN_LUNG_ML else []
    if keep and count > 1:
        second = sizes[order[1]]
        if second >= MIN_LUNG_ML and second >= SECOND_LUNG_FRACTION * sizes[order[0]]:
            keep.append(int(order[1]) + 1)
    return _labels_in(labels, count, keep) if keep else np.zeros(candidates.shape, dtype=bool)


def _seed_sides(seeds: np.ndarray, geometry: Geometry) -> np.ndarray | None:
    """Label the two largest components of ``seeds`` 1 (right) / 2 (left), or None."""
    labels, count = ndimage.label(seeds, structure=np.ones((3, 3, 3), dtype=bool))
    if count < 2:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(sizes)[::-1]
    first, second = int(order[0]) + 1, int(order[1]) + 1
    if sizes[second - 1] < SECOND_LUNG_FRACTION * sizes[first - 1]:
        return None
    centres = [
        geometry.index_to_patient(np.array([ndimage.center_of_mass(labels == n)]))[0][0]
        for n in (first, second)
    ]
    left, right = (first, second) if centres[0] > centres[1] else (second, first)
    sides = np.zeros(seeds.shape, dtype=np.uint8)
    sides[labels == right] = RIGHT_LUNG
    sides[labels == left] = LEFT_LUNG
    return sides


def _split_sides(region: np.ndarray, body: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Right (1) / left (2) labels of a coarse lung region."""
    sides = _seed_sides(region, geometry)
    if sides is None:
        eroded = region
        step_mm = min(geometry.spacing[1], geometry.spacing[2])
        for _ in range(max(1, int(MAX_SPLIT_EROSION_MM / step_mm))):
            eroded = ndimage.binary_erosion(eroded, structure=_IN_PLANE_4)
            if not eroded.any():
                break
            sides = _seed_sides(eroded, geometry)
            if sides is not None:
                break
    if sides is None:
        LOGGER.info("Lungs could not be separated by shape; splitting at the body midline")
        return _split_at_midline(region, body, geometry)
    # Every other region voxel goes to the side that reaches it first when
    # both seeds grow inside the region (ties: left); voxels no seed reaches
    # (detached pieces) go by the midline between the seeds.
    box = _box(region)
    sub_sides = sides[box]
    rest = region[box] & (sub_sides == 0)
    while rest.any():
        grown = ndimage.grey_dilation(sub_sides, footprint=np.ones((3, 3, 3), dtype=bool))
        reached = rest & (grown > 0)
        if not reached.any():
            break
        sub_sides[reached] = grown[reached]
        rest &= ~reached
    if rest.any():
        centres = [
            float(geometry.index_to_patient(np.array([ndimage.center_of_mass(sides == n)]))[0][0])
            for n in (RIGHT_LUNG, LEFT_LUNG)
        ]
        offset = np.array([b.start for b in box])
        idx = np.nonzero(rest)
        x = geometry.index_to_patient(np.stack(idx, axis=1) + offset)[:, 0]
        sub_sides[idx] = np.where(x > sum(centres) / 2.0, LEFT_LUNG, RIGHT_LUNG)
    return sides


def _box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of a non-empty mask."""
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        used = np.nonzero(mask.any(axis=other))[0]
        bounds.append(slice(int(used[0]), int(used[-1]) + 1))
    return (bounds[0], bounds[1], bounds[2])


def _split_at_midline(region: np.ndarray, body: np.ndarray, geometry: Geometry) -> np.ndarray:
    reference = body if body.any() else np.ones(region.shape, dtype=bool)
    centre = geometry.index_to_patient(np.array([ndimage.center_of_mass(reference)]))[0]
    x_axis = np.array([1.0, 0.0, 0.0])
    sides = np.zeros(region.shape, dtype=np.uint8)
    idx = np.nonzero(region)
    points = geometry.index_to_patient(np.stack(idx, axis=1))
    left = (points - centre) @ x_axis > 0
    sides[idx] = np.where(left, LEFT_LUNG, RIGHT_LUNG).astype(np.uint8)
    return sides


# ----------------------------------------------------------------------
# Lungs and lesions
# ----------------------------------------------------------------------
def _coarse_lungs(
    grid: _CoarseGrid,
    hu: np.ndarray,
    lesion_mask: np.ndarray | None,
    lung_candidate: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps 1-4 of the module docstring on the coarse grid.

    Returns ``(near, interior)``: side labels reaching one coarse voxel past
    the lung region, and the region's in-plane interior; ``None`` when no
    lung is found. Every other coarse temporary dies here.
    """
    coarse = grid.geometry
    voxel_ml = coarse.voxel_volume_ml
    air = grid.reduce(hu, "mean", clip=(-1024.0, 3071.0)) < LUNG_AIR_HU
    body = _body(air)
    if lung_candidate is not None:
        del air
        candidates = (grid.reduce(lung_candidate, "mean") >= 0.5) & body
    else:
        candidates = air & body
        del air
    aerated = _aerated_lungs(candidates, voxel_ml)
    del candidates
    region = aerated.copy()
    if lesion_mask is not None and lesion_mask.any():
        lesion_coarse = grid.reduce(lesion_mask, "any") & body
        labels, count = ndimage.label(lesion_coarse, structure=np.ones((3, 3, 3), dtype=bool))
        if count:
            near_lung = ndimage.binary_dilation(aerated, structure=_FACES_6)
            touching = np.unique(labels[near_lung & lesion_coarse])
            del near_lung
            sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_ml
            keep = {int(n) for n in touching if n > 0}
            keep |= {n for n in range(1, count + 1) if sizes[n] >= DETACHED_LESION_ML}
            if keep:
                region |= _labels_in(labels, count, keep)
        del labels, lesion_coarse
    del aerated
    region = _fill_holes_slicewise(region)
    if not region.any():
        return None
    sides = _split_sides(region, body, coarse)
    del body
    interior = ndimage.binary_erosion(region, structure=_IN_PLANE_4)
    del region
    # Let the region reach one coarse voxel further so full-resolution edges fit.
    grown = ndimage.grey_dilation(sides, footprint=_FACES_6)
    near = np.where(sides > 0, sides, grown).astype(np.uint8)
    return near, interior


def _own(mask: np.ndarray | None, overwrite: bool, geometry: Geometry) -> np.ndarray:
    """The lesion array to write: the caller's (overwrite), a copy, or zeros."""
    if mask is None:
        return np.zeros(geometry.shape, dtype=bool)
    if overwrite:
        if mask.dtype != bool or not mask.flags.writeable:
            raise ValueError('Argument "lesion_mask" should be a writeable boolean array.')
        return mask
    return np.array(mask, dtype=bool)


def extract_lungs(
    hu: np.ndarray,
    geometry: Geometry,
    lesion_mask: np.ndarray | None = None,
    lung_candidate: np.ndarray | None = None,
    min_lesion_volume_ml: float = MIN_LESION_VOLUME_ML,
    overwrite_lesion_mask: bool = False,
) -> PostprocessResult:
    """Right/left lung mask on the source grid, and the lesions restricted to it.

    Parameters
    ----------
    hu: numpy.ndarray
        Source HU ``[k, i, j]`` (``int16`` or float), shape ``geometry.shape``.
    geometry: Geometry
        Source geometry.
    lesion_mask: numpy.ndarray | None, optional
        Boolean lesion mask on the source grid (not modified unless
        ``overwrite_lesion_mask``).
    lung_candidate: numpy.ndarray | None, optional
        Boolean lung mask from the model (``lung_probability`` thresholded);
        replaces the HU air threshold as the source of aerated lung.
    min_lesion_volume_ml: float, optional
        Lesion components below this volume are dropped (26-connectivity).
    overwrite_lesion_mask: bool, optional
        Restrict ``lesion_mask`` in place and return it, saving one
        source-sized copy (``postprocess`` does, on its own temporary).

    Returns
    -------
    PostprocessResult
        ``lung_mask`` (``uint8``: 0, 1 right, 2 left) and the restricted
        ``lesion_mask`` (a new ``bool`` array, or ``lesion_mask`` itself with
        ``overwrite_lesion_mask``) with ``lesion_mask <= (lung_mask > 0)``.

    Raises
    ------
    ValueError
        If an array's shape disagrees with ``geometry``, ``min_lesion_volume_ml``
        is negative, or ``overwrite_lesion_mask`` is asked of a read-only or
        non-boolean mask.
    """
    arrays = {"hu": hu, "lesion_mask": lesion_mask, "lung_candidate": lung_candidate}
    for name, array in arrays.items():
        if array is not None and tuple(array.shape) != geometry.shape:
            raise ValueError(
                f'Argument "{name}" has shape {array.shape}, the geometry says {geometry.shape}.'
            )
    grid = _CoarseGrid.of(geometry)
    source = "hu_lung_extraction" if lung_candidate is None else "lung_probability"
    coarse = _coarse_lungs(grid, hu, lesion_mask, lung_candidate)
    if coarse is None:
        LOGGER.warning("No lung found in the volume; the lung and lesion masks are empty")
        empty = _own(lesion_mask, overwrite_lesion_mask, geometry)
        empty[...] = False
        return PostprocessResult(
            lesion_mask=empty,
            lung_mask=np.zeros(geometry.shape, dtype=np.uint8),
            lung_source=source,
            dropped_components=0,
        )
    near, interior = coarse

    dropped = 0
    n_k = geometry.shape[0]
    lesions = _own(lesion_mask, overwrite_lesion_mask, geometry)
    if lesion_mask is not None:
        near_lung = near > 0
        for k in range(0, n_k, CHUNK_SLICES):
            chunk = lesions[k : k + CHUNK_SLICES]
            if not chunk.any():
                continue
            # Only the chunk's lesion box: outside it the mask is False already.
            rows = np.flatnonzero(chunk.any(axis=(0, 2)))
            columns = np.flatnonzero(chunk.any(axis=(0, 1)))
            sub = (
                slice(k, k + chunk.shape[0]),
                slice(int(rows[0]), int(rows[-1]) + 1),
                slice(int(columns[0]), int(columns[-1]) + 1),
            )
            lesions[sub] &= grid.expand(near_lung, sub)
        dropped = drop_small_components(lesions, geometry, min_lesion_volume_ml)
    lungs = np.zeros(geometry.shape, dtype=np.uint8)
    box = grid.source_box(near > 0) or (slice(0, 0), slice(0, 0), slice(0, 0))
    chunks = [
        (slice(k, min(k + CHUNK_SLICES, box[0].stop)), box[1], box[2])
        for k in range(box[0].start, box[0].stop, CHUNK_SLICES)
    ]
    for sub in chunks:
        lungish = grid.expand(interior, sub)
        if lung_candidate is not None:
            lungish |= lung_candidate[sub]
        else:
            lungish |= hu[sub] < LUNG_AIR_HU
        lungish |= lesions[sub]
        # side * lungish: a multiply instead of a boolean-mask assignment.
        np.multiply(grid.expand(near, sub), lungish, out=lungs[sub])
    return PostprocessResult(
        lesion_mask=lesions, lung_mask=lungs, lung_source=source, dropped_components=dropped
    )


def postprocess(
    outputs: dict[str, np.ndarray],
    model_geometry: Geometry,
    hu: np.ndarray,
    geometry: Geometry,
    manifest: Manifest,
    min_lesion_volume_ml: float = MIN_LESION_VOLUME_ML,
) -> PostprocessResult:
    """Lesion and lung masks on the source grid from the model's outputs.

    Parameters
    ----------
    outputs: dict[str, numpy.ndarray]
        :meth:`inference.session.ModelSession.run` output, keyed by role.
    model_geometry: Geometry
        Geometry of the model grid (``ModelInput.geometry``).
    hu: numpy.ndarray
        Source HU volume.
    geometry: Geometry
        Source geometry.
    manifest: Manifest
        For ``lesion_threshold`` and the lung segment's source.
    min_lesion_volume_ml: float, optional
        Smallest lesion component kept (default 0.1 mL).

    Returns
    -------
    PostprocessResult

    Raises
    ------
    ValueError
        If an output is missing or has the wrong shape, or
        ``min_lesion_volume_ml`` is negative.
    """
    if not min_lesion_volume_ml >= 0:
        raise ValueError('Argument "min_lesion_volume_ml" should be a non-negative number.')
    if "lesion_probability" not in outputs:
        raise ValueError('Argument "outputs" has no "lesion_probability".')
    threshold = manifest.lesion_threshold
    lesion_src = to_source_grid(
        outputs["lesion_probability"].reshape(model_geometry.shape),
        model_geometry,
        geometry,
        threshold=threshold,
    )
    source = lung_source(manifest)
    candidate = None
    if source == "lung_probability":
        if "lung_probability" not in outputs:
            raise ValueError('Argument "outputs" has no "lung_probability".')
        candidate = to_source_grid(
            outputs["lung_probability"].reshape(model_geometry.shape),
            model_geometry,
            geometry,
            threshold=threshold,
        )
    before = int(np.count_nonzero(lesion_src))
    result = extract_lungs(
        hu,
        geometry,
        lesion_mask=lesion_src,
        lung_candidate=candidate,
        min_lesion_volume_ml=min_lesion_volume_ml,
        overwrite_lesion_mask=True,
    )
    LOGGER.debug(
        "Lesion voxels: %d thresholded, %d kept (%d small components dropped); lungs from %s",
        before,
        int(np.count_nonzero(result.lesion_mask)),
        result.dropped_components,
        result.lung_source,
    )
    return result
