"""From a HU volume on the scanner's grid to the model's input, and back.

The model grid (``manifest.grid``) has fixed spacing and shape and the same
axis directions as the source volume. :func:`prepare_input`

1. resamples the whole source volume to the model spacing (antialiased
   linear, :mod:`inference.resample`), after clipping HU to the manifest's
   window so padding values (-2000, -3024) never blur into the body;
2. places the model grid: centred on the bounding box of the lungs found by
   HU thresholding (``placement = "lung_center"``), or on the volume centre;
3. crops or pads (with ``grid.fill_hu``) to ``grid.shape``;
4. normalises: ``(clip(hu) - offset_hu) / scale_hu``.

:func:`to_source_grid` maps a model-grid map (lesion probabilities) back onto
the source grid, slice chunk by slice chunk, optionally thresholding to a
boolean mask. Voxels outside the model grid get 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.geometry import Geometry
from inference.manifest import GridSpec, IntensitySpec, Manifest
from inference.resample import CHUNK_SLICES, axis_weights, resample_separable

LOGGER = logging.getLogger(__name__)

__all__ = [
    "ModelInput",
    "prepare_input",
    "resample_to_spacing",
    "find_lungs",
    "place_grid",
    "normalise",
    "to_source_grid",
    "resample_to_geometry",
]

#: HU below which a voxel inside the body counts as air (lung or airway).
AIR_THRESHOLD_HU = -500.0
#: Smallest air component (mL) kept as lung when placing the grid.
MIN_LUNG_COMPONENT_ML = 50.0


@dataclass(frozen=True)
class ModelInput:
    """The model's input and where it sits in patient space.

    Attributes
    ----------
    tensor: numpy.ndarray
        ``float32`` array ``(1, 1, D, H, W)``, normalised.
    hu: numpy.ndarray
        ``float32`` array ``(D, H, W)``: the clipped HU on the model grid.
    geometry: Geometry
        Geometry of the model grid.
    """

    tensor: np.ndarray
    hu: np.ndarray
    geometry: Geometry


def _axis_vectors(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(geometry.slice_direction, dtype=np.float64),
        np.asarray(geometry.column_direction, dtype=np.float64),
        np.asarray(geometry.row_direction, dtype=np.float64),
    )


def resample_to_spacing(
    volume: np.ndarray,
    geometry: Geometry,
    spacing: tuple[float, float, float],
    clip: tuple[float, float] | None = None,
) -> tuple[np.ndarray, Geometry]:
    """Resample a whole volume to another spacing, keeping its extent.

    Parameters
    ----------
    volume: numpy.ndarray
        ``[k, i, j]`` array with ``geometry.shape``.
    geometry: Geometry
        Geometry of ``volume``.
    spacing: tuple[float, float, float]
        Target ``(slice, row, column)`` spacing in mm.
    clip: tuple[float, float] | None, optional
        Clip values to this range before resampling.

    Returns
    -------
    tuple[numpy.ndarray, Geometry]
        The ``float32`` resampled volume and its geometry (same directions,
        same physical centre).
    """
    if tuple(volume.shape) != geometry.shape:
        raise ValueError(
            f'Argument "volume" has shape {volume.shape}, the geometry says {geometry.shape}.'
        )
    weights = []
    shape = []
    origin = np.asarray(geometry.origin, dtype=np.float64)
    for n_in, s_in, s_out, direction in zip(
        geometry.shape, geometry.spacing, spacing, _axis_vectors(geometry)
    ):
        scale = s_out / s_in
        n_out = max(1, int(round(n_in / scale)))
        # Centre the new samples on the old extent.
        offset = ((n_in - 1) - (n_out - 1) * scale) / 2.0
        weights.append(axis_weights(n_in, n_out, scale, offset))
        shape.append(n_out)
        origin = origin + offset * s_in * direction
    array = resample_separable(volume, weights[0], weights[1], weights[2], clip=clip)
    new_geometry = Geometry(
        shape=tuple(shape),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin=tuple(origin),
        row_direction=geometry.row_direction,
        column_direction=geometry.column_direction,
        slice_direction=geometry.slice_direction,
    )
    return array, new_geometry


def find_lungs(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Air inside the body: a coarse lung (and airway) mask from HU alone.

    Air components that touch the in-plane border of the scan are outside the
    body and dropped; the remaining components of at least
    :data:`MIN_LUNG_COMPONENT_ML` are kept, at most the two largest (two
    lungs, or one when they are joined through the airways).

    Parameters
    ----------
    hu: numpy.ndarray
        ``[k, i, j]`` HU array (any resolution; coarse is fine and fast).
    spacing: tuple[float, float, float]
        Voxel spacing in mm, for the volume threshold.

    Returns
    -------
    numpy.ndarray
        Boolean mask, empty when no lung-like air is found.
    """
    air = hu < AIR_THRESHOLD_HU
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
    sizes[0] = 0.0
    sizes[border] = 0.0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    keep = [int(i) for i in np.argsort(sizes)[::-1][:2] if sizes[i] * voxel_ml >= MIN_LUNG_COMPONENT_ML]
    if not keep:
        return np.zeros(hu.shape, dtype=bool)
    return np.isin(labels, keep)


def place_grid(
    array: np.ndarray,
    geometry: Geometry,
    grid: GridSpec,
    centre_index: np.ndarray,
    fill: float,
) -> tuple[np.ndarray, Geometry]:
    """Crop or pad ``array`` to ``grid.shape`` around ``centre_index``.

    Parameters
    ----------
    array: numpy.ndarray
        ``[k, i, j]`` array already at ``grid.spacing_mm``.
    geometry: Geometry
        Its geometry.
    grid: GridSpec
        The model grid.
    centre_index: numpy.ndarray
        Fractional ``(k, i, j)`` index of ``array`` that becomes the grid
        centre.
    fill: float
        Value of model voxels outside ``array``.

    Returns
    -------
    tuple[numpy.ndarray, Geometry]
        The ``grid.shape`` array and the model-grid geometry.
    """
    shape = np.asarray(grid.shape)
    start = np.rint(np.asarray(centre_index, dtype=np.float64) - (shape - 1) / 2.0).astype(int)
    out = np.full(grid.shape, fill, dtype=np.float32)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + shape, array.shape)
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[dst_lo[0] : dst_hi[0], dst_lo[1] : dst_hi[1], dst_lo[2] : dst_hi[2]] = array[
            src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]
        ]
    origin = geometry.index_to_patient(start[None, :].astype(np.float64))[0]
    model_geometry = Geometry(
        shape=grid.shape,
        spacing=geometry.spacing,
        origin=tuple(origin),
        row_direction=geometry.row_direction,
        column_direction=geometry.column_direction,
        slice_direction=geometry.slice_direction,
    )
    return out, model_geometry


def normalise(hu: np.ndarray, intensity: IntensitySpec) -> np.ndarray:
    """``(clip(hu) - offset_hu) / scale_hu`` as ``float32``."""
    low, high = intensity.clip_hu
    out = np.clip(hu, low, high).astype(np.float32)
    out -= np.float32(intensity.offset_hu)
    out /= np.float32(intensity.scale_hu)
    return out


def prepare_input(volume: np.ndarray, geometry: Geometry, manifest: Manifest) -> ModelInput:
    """Turn a source HU volume into the model's input.

    Parameters
    ----------
    volume: numpy.ndarray
        HU values ``[k, i, j]`` with ``geometry.shape`` (int16 or float).
    geometry: Geometry
        Geometry of the source volume.
    manifest: Manifest
        The model's manifest (grid and intensity).

    Returns
    -------
    ModelInput
    """
    grid = manifest.grid
    clip = manifest.intensity.clip_hu
    lowres, low_geometry = resample_to_spacing(volume, geometry, grid.spacing_mm, clip=clip)
    centre = (np.asarray(low_geometry.shape, dtype=np.float64) - 1.0) / 2.0
    if grid.placement == "lung_center":
        lungs = find_lungs(lowres, low_geometry.spacing)
        if lungs.any():
            idx = np.nonzero(lungs)
            centre = np.array([(float(a.min()) + float(a.max())) / 2.0 for a in idx])
        else:
            LOGGER.info("No lung-like air found; model grid centred on the volume")
    fill = float(np.clip(grid.fill_hu, clip[0], clip[1]))
    hu, model_geometry = place_grid(lowres, low_geometry, grid, centre, fill)
    tensor = normalise(hu, manifest.intensity)[None, None]
    return ModelInput(tensor=tensor, hu=hu, geometry=model_geometry)


def _weights_to(input_geometry: Geometry, output_geometry: Geometry) -> list[np.ndarray]:
    """Per-axis weights that sample ``input_geometry`` at ``output_geometry``."""
    if not all(
        np.allclose(a, b, atol=1e-4)
        for a, b in zip(_axis_vectors(input_geometry), _axis_vectors(output_geometry))
    ):
        raise ValueError("The model grid and the source volume should have the same axes.")
    delta = np.asarray(output_geometry.origin) - np.asarray(input_geometry.origin)
    weights = []
    for n_in, n_out, s_in, s_out, direction in zip(
        input_geometry.shape,
        output_geometry.shape,
        input_geometry.spacing,
        output_geometry.spacing,
        _axis_vectors(output_geometry),
    ):
        offset = float(np.dot(delta, direction)) / s_in
        weights.append(axis_weights(n_in, n_out, s_out / s_in, offset))
    return weights


#: Margin below the threshold under which :func:`to_source_grid` skips a
#: chunk whose model values cannot reach the threshold (float32 rounding of
#: a convex combination is ~1e-7).
SKIP_MARGIN = 1e-4


def to_source_grid(
    values: np.ndarray,
    model_geometry: Geometry,
    source_geometry: Geometry,
    threshold: float | None = None,
    chunk: int = CHUNK_SLICES,
) -> np.ndarray:
    """Map a model-grid array back onto the source grid.

    Parameters
    ----------
    values: numpy.ndarray
        ``(D, H, W)`` array on ``model_geometry`` (e.g. lesion probability).
    model_geometry: Geometry
        Geometry of ``values`` (from :func:`prepare_input`).
    source_geometry: Geometry
        The source volume's geometry.
    threshold: float | None, optional
        If given, return ``values >= threshold`` as a boolean mask (computed
        chunk by chunk, so no float copy of the source size is held).
    chunk: int, optional
        Source slices per step.

    Returns
    -------
    numpy.ndarray
        ``float32`` values, or ``bool`` when ``threshold`` is given, with
        ``source_geometry.shape``; 0 / False outside the model grid.

    Raises
    ------
    ValueError
        If the two grids do not share their axes or shapes disagree.
    """
    if tuple(values.shape) != model_geometry.shape:
        raise ValueError(
            f'Argument "values" has shape {values.shape}, the model grid {model_geometry.shape}.'
        )
    w_k, w_i, w_j = _weights_to(model_geometry, source_geometry)
    dtype = bool if threshold is not None else np.float32
    out = np.zeros(source_geometry.shape, dtype=dtype)
    flat = np.asarray(values, dtype=np.float32).reshape(values.shape[0], -1)
    rows_used = np.nonzero(w_k.any(axis=1))[0]
    if rows_used.size == 0:
        return out
    # Each output value is a convex combination of model values (weights >= 0,
    # rows summing to 1 or 0), so a chunk whose model slices all stay below
    # the threshold (with a margin far above float32 rounding) is all False:
    # most of a lesion map is skipped without computing it.
    slice_max = flat.max(axis=1) if threshold is not None and flat.size else None
    for start in range(int(rows_used[0]), int(rows_used[-1]) + 1, chunk):
        stop = min(start + chunk, int(rows_used[-1]) + 1)
        if slice_max is not None and threshold is not None:
            contributing = w_k[start:stop].any(axis=0)
            if float(slice_max[contributing].max()) < threshold - SKIP_MARGIN:
                continue
        block = (w_k[start:stop] @ flat).reshape(stop - start, *values.shape[1:])
        block = np.matmul(w_i, block) @ w_j.T
        if threshold is not None:
            out[start:stop] = block >= threshold
        else:
            out[start:stop] = block
    return out


def resample_to_geometry(
    volume: np.ndarray,
    source_geometry: Geometry,
    target_geometry: Geometry,
    fill: float = 0.0,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """Resample a source array onto any grid that shares its axes.

    Used to bring training targets (lesion masks as ``float``) onto the
    model grid that :func:`prepare_input` chose for the image.

    Parameters
    ----------
    volume: numpy.ndarray
        ``[k, i, j]`` array with ``source_geometry.shape``.
    source_geometry: Geometry
        Its geometry.
    target_geometry: Geometry
        The grid to sample (same directions as the source).
    fill: float, optional
        Value of target voxels outside the source volume.
    clip: tuple[float, float] | None, optional
        Clip source values before resampling.

    Returns
    -------
    numpy.ndarray
        ``float32`` array with ``target_geometry.shape``.
    """
    if tuple(volume.shape) != source_geometry.shape:
        raise ValueError(
            f'Argument "volume" has shape {volume.shape}, the geometry says '
            f"{source_geometry.shape}."
        )
    w_k, w_i, w_j = _weights_to(source_geometry, target_geometry)
    out = resample_separable(volume, w_k, w_i, w_j, clip=clip)
    if fill != 0.0:
        inside = (
            (w_k.sum(axis=1) > 0)[:, None, None]
            & (w_i.sum(axis=1) > 0)[None, :, None]
            & (w_j.sum(axis=1) > 0)[None, None, :]
        )
        out[~inside] = fill
    return out
