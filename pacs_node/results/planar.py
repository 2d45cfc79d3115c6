"""Planar geometry of one lesion on its largest slice, for TID 1410 groups.

Plain numpy/scipy, no DICOM. Coordinates follow the DICOM image coordinate
system of PS3.3 C.18.6.1.1 (SCOORD): ``(x, y) = (column, row)``, the top left
corner of the top left pixel is ``(0, 0)``, so pixel ``[i, j]`` covers
``[j, j + 1] x [i, i + 1]`` and its centre is ``(j + 0.5, i + 0.5)``.

The outline is traced along pixel edges ("crack following"): the closed
polygon encloses exactly the pixels of the outlined region, so its shoelace
area is the pixel count times the pixel area, and what a viewer draws is the
boundary of the pixels the report measures. Collinear vertices are dropped:
only the corners of the staircase remain.

What is outlined: on the slice where the lesion has the most voxels (the
largest slice in the acquisition plane, axial for chest CT; the lowest slice
index on a tie), the largest 4-connected region of the lesion, with its holes
filled. 4-connectivity plus filled holes makes the outline one simple closed
polygon (a region joined only through a pixel corner would pinch it). Area
and longest diameter describe that polygon: other, smaller parts of the same
lesion on that slice are not in it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from pacs_node.results.contours import mask_outlines

LOGGER = logging.getLogger(__name__)

__all__ = [
    "PlanarOutline",
    "largest_slice",
    "largest_region",
    "trace_outline",
    "polygon_area",
    "longest_diameter",
    "planar_outline",
]

_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class PlanarOutline:
    """The outline of a lesion on one slice and its planar measurements.

    Attributes
    ----------
    slice_index: int
        Index ``k`` of the slice (in ``[k, i, j]`` volume order).
    points: numpy.ndarray
        ``(n, 2)`` float image coordinates ``(column, row)`` of the closed
        polygon; the last point repeats the first.
    pixel_count: int
        Number of pixels inside the polygon.
    area_mm2: float
        Area enclosed by the polygon (mm²).
    longest_diameter_mm: float
        Largest distance between two points of the polygon (mm).
    diameter_endpoints: numpy.ndarray
        ``(2, 2)`` image coordinates of the two points at that distance.
    """

    slice_index: int
    points: np.ndarray
    pixel_count: int
    area_mm2: float
    longest_diameter_mm: float
    diameter_endpoints: np.ndarray


def _check_mask(mask: np.ndarray, ndim: int, name: str) -> None:
    if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != ndim:
        raise ValueError(f'Argument "{name}" should be a {ndim}-D boolean numpy array.')
    if not mask.any():
        raise ValueError(f'Argument "{name}" should hold at least one voxel.')


def _check_spacing(pixel_spacing: tuple[float, float]) -> tuple[float, float]:
    try:
        row_spacing, column_spacing = (float(v) for v in pixel_spacing)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            'Argument "pixel_spacing" should be two numbers (row, column spacing in mm).'
        ) from exc
    if not (np.isfinite(row_spacing) and np.isfinite(column_spacing)) or min(
        row_spacing, column_spacing
    ) <= 0:
        raise ValueError('Argument "pixel_spacing" should be two positive numbers.')
    return row_spacing, column_spacing


def largest_slice(mask: np.ndarray) -> int:
    """Index of the slice holding the most voxels of a ``[k, i, j]`` mask.

    Parameters
    ----------
    mask: numpy.ndarray
        Boolean 3-D mask, not empty.

    Returns
    -------
    int
        The slice index; the lowest one on a tie.

    Raises
    ------
    ValueError
        If ``mask`` is not a non-empty 3-D boolean array.
    """
    _check_mask(mask, 3, "mask")
    return int(np.argmax(np.count_nonzero(mask, axis=(1, 2))))


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a 2-D mask, holes filled.

    Parameters
    ----------
    mask: numpy.ndarray
        Boolean ``[row, column]`` mask, not empty.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the same shape (the first region in raster order on a
        tie).

    Raises
    ------
    ValueError
        If ``mask`` is not a non-empty 2-D boolean array.
    """
    _check_mask(mask, 2, "mask")
    labels, count = ndimage.label(mask, structure=_CROSS)
    if count > 1:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        region = labels == int(np.argmax(sizes))
    else:
        region = labels == 1
    return ndimage.binary_fill_holes(region, structure=_CROSS)


def trace_outline(region: np.ndarray) -> np.ndarray:
    """Closed polygon along the pixel edges of a simply connected region.

    Parameters
    ----------
    region: numpy.ndarray
        Boolean ``[row, column]`` mask of one 4-connected region without
        holes (as returned by :func:`largest_region`).

    Returns
    -------
    numpy.ndarray
        ``(n + 1, 2)`` float image coordinates ``(column, row)`` of the
        ``n`` corners, clockwise on screen (rows grow downwards), the first
        corner repeated at the end.

    Raises
    ------
    ValueError
        If ``region`` is empty, not 2-D boolean, or its boundary is not one
        closed curve (several regions, or holes).
    """
    _check_mask(region, 2, "region")
    outlines = mask_outlines(region)
    if len(outlines) != 1:
        raise ValueError(
            'Argument "region" should be one 4-connected region without holes '
            f"(it has {len(outlines)} outlines)."
        )
    (outline,) = outlines
    if len({(float(x), float(y)) for x, y in outline[:-1]}) != len(outline) - 1:
        raise ValueError(
            'Argument "region" should be one 4-connected region without holes '
            "(its boundary touches itself)."
        )
    return outline


def polygon_area(points: np.ndarray, pixel_spacing: tuple[float, float]) -> float:
    """Area (mm²) of a closed polygon in image coordinates (shoelace formula).

    Parameters
    ----------
    points: numpy.ndarray
        ``(n, 2)`` ``(column, row)`` vertices; closing the polygon by
        repeating the first point is optional.
    pixel_spacing: tuple[float, float]
        ``(row spacing, column spacing)`` in mm (PixelSpacing order).

    Returns
    -------
    float
        The enclosed area, always non-negative.

    Raises
    ------
    ValueError
        If ``points`` is not an ``(n, 2)`` array or the spacing is not positive.
    """
    row_spacing, column_spacing = _check_spacing(pixel_spacing)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError('Argument "points" should be an (n, 2) array.')
    x, y = points[:, 0], points[:, 1]
    twice = float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return abs(twice) / 2.0 * row_spacing * column_spacing


def longest_diameter(
    points: np.ndarray, pixel_spacing: tuple[float, float]
) -> tuple[float, np.ndarray]:
    """Largest distance (mm) between two vertices of a polygon.

    The largest distance between two points of a polygon is reached at two
    vertices of its convex hull, so only hull vertices are compared.

    Parameters
    ----------
    points: numpy.ndarray
        ``(n, 2)`` ``(column, row)`` vertices.
    pixel_spacing: tuple[float, float]
        ``(row spacing, column spacing)`` in mm.

    Returns
    -------
    tuple[float, numpy.ndarray]
        The distance and the ``(2, 2)`` image coordinates of its end points.

    Raises
    ------
    ValueError
        If ``points`` is not an ``(n, 2)`` array with ``n >= 2``, or the
        spacing is not positive.
    """
    row_spacing, column_spacing = _check_spacing(pixel_spacing)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
        raise ValueError('Argument "points" should be an (n, 2) array with n >= 2.')
    scaled = points * np.array([column_spacing, row_spacing])
    candidates = np.unique(scaled, axis=0)
    if len(candidates) > 3:
        try:
            candidates = candidates[ConvexHull(candidates).vertices]
        except QhullError:  # all on one line: every point is a candidate
            pass
    distances = np.linalg.norm(candidates[:, None, :] - candidates[None, :, :], axis=-1)
    a, b = np.unravel_index(int(np.argmax(distances)), distances.shape)
    ends = candidates[[a, b]] / np.array([column_spacing, row_spacing])
    return float(distances[a, b]), ends


def planar_outline(mask: np.ndarray, pixel_spacing: tuple[float, float]) -> PlanarOutline:
    """Outline, area and longest diameter of a 3-D lesion on its largest slice.

    Parameters
    ----------
    mask: numpy.ndarray
        Boolean ``[k, i, j]`` mask of one lesion (any other voxel empty).
    pixel_spacing: tuple[float, float]
        ``(row spacing, column spacing)`` in mm.

    Returns
    -------
    PlanarOutline
        See the module docstring for what is outlined.

    Raises
    ------
    ValueError
        If ``mask`` is empty or not a 3-D boolean array, or the spacing is not
        positive.
    """
    spacing = _check_spacing(pixel_spacing)
    k = largest_slice(mask)
    region = largest_region(mask[k])
    points = trace_outline(region)
    diameter, ends = longest_diameter(points[:-1], spacing)
    return PlanarOutline(
        slice_index=k,
        points=points,
        pixel_count=int(np.count_nonzero(region)),
        area_mm2=polygon_area(points, spacing),
        longest_diameter_mm=diameter,
        diameter_endpoints=ends,
    )
