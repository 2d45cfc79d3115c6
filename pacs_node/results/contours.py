"""Closed outlines of a 2-D mask as polylines along pixel edges (image coordinates).

The outline of a region is the chain of pixel edges that separate a region
pixel from a background pixel. Coordinates are ``(column, row)`` pixel
corners in the image coordinate system of PS3.3 C.10.5.1.2 (GSPS ``PIXEL``
units, as in cornerstone): ``(0, 0)`` is the top-left corner of the top-left
pixel, ``(columns, rows)`` the bottom-right corner of the bottom-right pixel.
A polyline follows the region's boundary exactly (no smoothing); straight
runs are merged, so a square region gives 5 points (closed: the last point
repeats the first).
"""
from __future__ import annotations

import logging

import numpy as np

LOGGER = logging.getLogger(__name__)

__all__ = ["mask_outlines", "polygon_area"]

# Pixel (r, c) edges, clockwise on screen (rows down): (dr0, dc0) -> (dr1, dc1)
# as corner offsets, and the neighbour that must be background.
_EDGES = (
    ((0, 0), (0, 1), (-1, 0)),  # top: left -> right
    ((0, 1), (1, 1), (0, 1)),  # right: top -> bottom
    ((1, 1), (1, 0), (1, 0)),  # bottom: right -> left
    ((1, 0), (0, 0), (0, -1)),  # left: bottom -> top
)


def _boundary_edges(mask: np.ndarray) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    padded = np.pad(mask, 1)
    rows, columns = mask.shape
    edges: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for start, end, (dr, dc) in _EDGES:
        neighbour = padded[1 + dr: 1 + dr + rows, 1 + dc: 1 + dc + columns]
        r, c = np.nonzero(mask & ~neighbour)
        for row, column in zip(r.tolist(), c.tolist()):
            edges.append(((row + start[0], column + start[1]), (row + end[0], column + end[1])))
    return edges


def _simplify(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop the points in the middle of straight runs (``points`` is closed)."""
    ring = points[:-1]
    kept = []
    n = len(ring)
    for index, point in enumerate(ring):
        before, after = ring[index - 1], ring[(index + 1) % n]
        d1 = (point[0] - before[0], point[1] - before[1])
        d2 = (after[0] - point[0], after[1] - point[1])
        if d1[0] * d2[1] - d1[1] * d2[0] != 0:
            kept.append(point)
    if not kept:
        return points
    return [*kept, kept[0]]


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Every closed outline (outer boundaries and holes) of a 2-D mask.

    Parameters
    ----------
    mask: numpy.ndarray
        2-D boolean.

    Returns
    -------
    list[numpy.ndarray]
        One ``(N, 2)`` ``float64`` array of ``(column, row)`` pixel-corner
        coordinates per outline, first point repeated last, largest enclosed
        area first. Outer boundaries run clockwise on screen, holes
        counter-clockwise. Empty for an empty mask.

    Raises
    ------
    ValueError
        If ``mask`` is not a 2-D boolean array.
    """
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError('Argument "mask" should be a 2-D boolean array.')
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    columns = np.flatnonzero(mask.any(axis=0))
    top, left = int(rows[0]), int(columns[0])
    window = mask[top: int(rows[-1]) + 1, left: int(columns[-1]) + 1]
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (r0, c0), (r1, c1) in _boundary_edges(window):
        outgoing.setdefault((r0 + top, c0 + left), []).append((r1 + top, c1 + left))
    loops: list[np.ndarray] = []
    while outgoing:
        first = next(iter(outgoing))
        points = [first]
        current = first
        while True:
            ends = outgoing[current]
            following = ends.pop()
            if not ends:
                del outgoing[current]
            points.append(following)
            current = following
            if current == first:
                break
        simplified = _simplify(points)
        loops.append(np.array([(c, r) for r, c in simplified], dtype=np.float64))
    loops.sort(key=lambda loop: -abs(polygon_area(loop)))
    return loops


def polygon_area(points: np.ndarray) -> float:
    """Signed area (pixels) of a closed polyline; positive when clockwise on screen.

    Parameters
    ----------
    points: numpy.ndarray
        ``(N, 2)`` ``(column, row)`` points, first repeated last.

    Returns
    -------
    float
        Shoelace area; its absolute value is the enclosed pixel count for an
        outline from :func:`mask_outlines`.
    """
    x, y = points[:, 0], points[:, 1]
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2.0)
