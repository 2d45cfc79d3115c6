"""Continuous fields in millimetres: edge ramps, lattice noise and shapes.

Every structure of a phantom is a function of the position in millimetres,
so the same phantom can be sampled on any voxel grid. Two ways of sampling
exist and give the same values:

* on a *grid*: three 1D coordinate vectors ``zs, ys, xs`` (the voxel grid is
  axis aligned in the phantom's frame), the result has shape
  ``(len(zs), len(ys), len(xs))``;
* at *points*: arrays ``X, Y, Z`` of any broadcastable shapes.

Signed distances are negative inside a shape and positive outside (mm).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

LOGGER = logging.getLogger(__name__)

__all__ = [
    "BSplineNoise",
    "Capsule",
    "Ellipsoid",
    "GridBox",
    "ramp",
    "ramp_into",
]

FLOAT = np.float32


def ramp(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Occupancy of a soft edge: 1 deep inside, 0 far outside.

    Parameters
    ----------
    signed_distance: numpy.ndarray
        Signed distance (mm), negative inside.
    width: float
        Width (mm) over which the occupancy goes from 1 to 0; the 0.5 level
        is the surface ``signed_distance == 0``.

    Returns
    -------
    numpy.ndarray
        ``clip(0.5 - signed_distance / width, 0, 1)`` as float32.
    """
    out = np.multiply(signed_distance, FLOAT(-1.0 / width), dtype=FLOAT)
    out += FLOAT(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def ramp_into(image: np.ndarray, signed_distance: np.ndarray, width: float,
              value: np.ndarray | float) -> None:
    """Blend ``value`` into ``image`` in place with the occupancy of a shape.

    ``image += ramp(signed_distance, width) * (value - image)``.

    Parameters
    ----------
    image: numpy.ndarray
        float32 image (modified in place); broadcast shape of the result.
    signed_distance: numpy.ndarray
        Signed distance of the shape (mm), broadcastable to ``image``.
    width: float
        Edge width (mm).
    value: numpy.ndarray | float
        HU inside the shape, broadcastable to ``image``.
    """
    alpha = ramp(signed_distance, width)
    blend_into(image, alpha, value)


def blend_into(image: np.ndarray, alpha: np.ndarray, value: np.ndarray | float) -> None:
    """``image += alpha * (value - image)`` in place (float32)."""
    diff = np.subtract(value, image, dtype=FLOAT)
    diff *= alpha
    image += diff


# ----------------------------------------------------------------------
# Cubic B-spline lattice noise
# ----------------------------------------------------------------------
def _bspline_weights(frac: np.ndarray) -> tuple[np.ndarray, ...]:
    """Uniform cubic B-spline weights of the 4 nodes around a position."""
    f2 = frac * frac
    f3 = f2 * frac
    w0 = (1.0 - frac) ** 3 / 6.0
    w1 = (3.0 * f3 - 6.0 * f2 + 4.0) / 6.0
    w2 = (-3.0 * f3 + 3.0 * f2 + 3.0 * frac + 1.0) / 6.0
    w3 = f3 / 6.0
    return w0, w1, w2, w3


def _variance_factor() -> float:
    """Variance of a B-spline field made of unit-variance white nodes, per axis."""
    frac = (np.arange(4096) + 0.5) / 4096
    weights = np.stack(_bspline_weights(frac))
    return float(np.mean(np.sum(weights**2, axis=0)))


_AXIS_VARIANCE = _variance_factor()


class BSplineNoise:
    """Smooth random field: white noise on a lattice, cubic B-spline between.

    The field has mean 0 and standard deviation 1 (averaged over space);
    features have a size of about ``spacing``. It is defined in millimetres,
    so every grid sees the same field.

    Parameters
    ----------
    rng: numpy.random.Generator
        Source of the lattice values.
    lower: tuple[float, float, float]
        ``(z, y, x)`` corner (mm) of the region where the field is needed.
    upper: tuple[float, float, float]
        Opposite corner (mm).
    spacing: float
        Lattice spacing (mm), > 0.

    Raises
    ------
    ValueError
        If ``spacing`` is not positive or the box is empty.
    """

    def __init__(self, rng: np.random.Generator, lower: tuple[float, float, float],
                 upper: tuple[float, float, float], spacing: float) -> None:
        if not spacing > 0:
            raise ValueError('Argument "spacing" should be positive (mm).')
        low = np.asarray(lower, dtype=np.float64)
        high = np.asarray(upper, dtype=np.float64)
        if low.shape != (3,) or high.shape != (3,) or np.any(high <= low):
            raise ValueError('Arguments "lower" and "upper" should span a non-empty box.')
        self.spacing = float(spacing)
        self.origin = low - 2.0 * spacing
        shape = np.ceil((high - self.origin) / spacing).astype(int) + 3
        scale = 1.0 / np.sqrt(_AXIS_VARIANCE**3)
        self.lattice = (rng.standard_normal(tuple(shape)) * scale).astype(FLOAT)

    # ------------------------------------------------------------------
    def _axis(self, coords: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        u = (np.asarray(coords, dtype=np.float64) - self.origin[axis]) / self.spacing
        n = self.lattice.shape[axis]
        u = np.clip(u, 1.0, n - 3.0 - 1e-9)
        base = np.floor(u).astype(np.intp)
        return base - 1, u - base

    def _taps(self, coords: np.ndarray,
              axis: int) -> tuple[np.ndarray, tuple[np.ndarray, ...], int, int]:
        """First node index (relative to ``lo``), weights, and used node range ``lo..hi``."""
        first, frac = self._axis(coords, axis)
        lo = int(first.min())
        hi = int(first.max()) + 4
        weights = tuple(w.astype(FLOAT) for w in _bspline_weights(frac))
        return first - lo, weights, lo, hi

    @staticmethod
    def _contract(block: np.ndarray, axis: int, first: np.ndarray,
                  weights: tuple[np.ndarray, ...]) -> np.ndarray:
        """Interpolate ``block`` along ``axis`` at 4-tap B-spline positions."""
        shape = [1, 1, 1]
        shape[axis] = -1
        out = None
        for tap, weight in enumerate(weights):
            term = np.take(block, first + tap, axis=axis)
            term *= weight.reshape(shape)
            if out is None:
                out = term
            else:
                out += term
        return out  # type: ignore[return-value]

    def grid(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Sample the field on the grid ``zs x ys x xs`` (mm).

        Parameters
        ----------
        zs, ys, xs: numpy.ndarray
            1D coordinate vectors (mm), each non-empty.

        Returns
        -------
        numpy.ndarray
            float32 array of shape ``(len(zs), len(ys), len(xs))``.
        """
        fz, wz, z0, z1 = self._taps(zs, 0)
        fy, wy, y0, y1 = self._taps(ys, 1)
        fx, wx, x0, x1 = self._taps(xs, 2)
        block = self.lattice[z0:z1, y0:y1, x0:x1]
        step = self._contract(block, 2, fx, wx)
        step = self._contract(step, 1, fy, wy)
        if z1 - z0 > 24:
            return self._contract(step, 0, fz, wz)
        # Few lattice planes: one dense product is faster than four gathers.
        dense = np.zeros((len(zs), z1 - z0), dtype=FLOAT)
        rows = np.arange(len(zs))
        for tap, weight in enumerate(wz):
            dense[rows, fz + tap] = weight
        out = dense @ step.reshape(z1 - z0, -1)
        return out.reshape(len(zs), step.shape[1], step.shape[2])

    def points(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Sample the field at points (mm), arrays of one shape.

        Parameters
        ----------
        z, y, x: numpy.ndarray
            Coordinates (mm), broadcastable to one shape.

        Returns
        -------
        numpy.ndarray
            float32 array of the broadcast shape.
        """
        z, y, x = np.broadcast_arrays(np.asarray(z), np.asarray(y), np.asarray(x))
        shape = z.shape
        fz, tz = self._axis(z.ravel(), 0)
        fy, ty = self._axis(y.ravel(), 1)
        fx, tx = self._axis(x.ravel(), 2)
        wz, wy, wx = _bspline_weights(tz), _bspline_weights(ty), _bspline_weights(tx)
        out = np.zeros(z.size, dtype=np.float64)
        for a in range(4):
            for b in range(4):
                wab = wz[a] * wy[b]
                for c in range(4):
                    out += wab * wx[c] * self.lattice[fz + a, fy + b, fx + c]
        return out.reshape(shape).astype(FLOAT)


# ----------------------------------------------------------------------
# Grid boxes
# ----------------------------------------------------------------------
@dataclass(frozen=True)
class GridBox:
    """An axis-aligned block of a voxel grid: index ranges and coordinates.

    Attributes
    ----------
    k0, k1, i0, i1, j0, j1: int
        Half-open index ranges along slices, rows and columns.
    zs, ys, xs: numpy.ndarray
        Coordinates (mm) of those slices, rows and columns.
    """

    k0: int
    k1: int
    i0: int
    i1: int
    j0: int
    j1: int
    zs: np.ndarray
    ys: np.ndarray
    xs: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)`` of the block."""
        return (self.k1 - self.k0, self.i1 - self.i0, self.j1 - self.j0)

    @property
    def empty(self) -> bool:
        """Whether the block has no voxel."""
        return self.k1 <= self.k0 or self.i1 <= self.i0 or self.j1 <= self.j0

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index expression of the block in its parent array."""
        return (slice(self.k0, self.k1), slice(self.i0, self.i1), slice(self.j0, self.j1))

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable ``(Z, Y, X)`` coordinate arrays of the block."""
        return (
            self.zs[:, None, None].astype(FLOAT),
            self.ys[None, :, None].astype(FLOAT),
            self.xs[None, None, :].astype(FLOAT),
        )

    @staticmethod
    def _range(coords: np.ndarray, low: float, high: float) -> tuple[int, int]:
        step = coords[1] - coords[0] if len(coords) > 1 else 1.0
        if step > 0:
            a = int(np.searchsorted(coords, low, side="left"))
            b = int(np.searchsorted(coords, high, side="right"))
        else:  # pragma: no cover - grids are ascending
            raise ValueError("coordinates should be ascending")
        return a, b

    def sub(self, lower: np.ndarray | tuple[float, float, float],
            upper: np.ndarray | tuple[float, float, float]) -> GridBox:
        """The part of this block inside the box ``lower..upper`` ((z, y, x) mm).

        Indices of the result are relative to this block's parent array.
        """
        a, b = self._range(self.zs, float(lower[0]), float(upper[0]))
        c, d = self._range(self.ys, float(lower[1]), float(upper[1]))
        e, f = self._range(self.xs, float(lower[2]), float(upper[2]))
        return GridBox(
            self.k0 + a, self.k0 + max(a, b), self.i0 + c, self.i0 + max(c, d),
            self.j0 + e, self.j0 + max(e, f),
            self.zs[a:b], self.ys[c:d], self.xs[e:f],
        )

    def local(self, parent: GridBox) -> tuple[slice, slice, slice]:
        """Index expression of this block inside an array covering ``parent``."""
        return (
            slice(self.k0 - parent.k0, self.k1 - parent.k0),
            slice(self.i0 - parent.i0, self.i1 - parent.i0),
            slice(self.j0 - parent.j0, self.j1 - parent.j0),
        )


# ----------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------
@dataclass(frozen=True)
class Capsule:
    """A tube around the segment ``p0 -> p1`` with radius ``r0 -> r1``.

    Points are ``(x, y, z)`` in the phantom frame (mm).
    """

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r0: float
    r1: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` corners as ``(z, y, x)`` (mm)."""
        a = np.asarray(self.p0)[::-1]
        b = np.asarray(self.p1)[::-1]
        r = max(self.r0, self.r1)
        return np.minimum(a, b) - r, np.maximum(a, b) + r

    def distance(self, Z: np.ndarray, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Signed distance (mm) at broadcastable coordinates."""
        p0 = np.asarray(self.p0, dtype=np.float64)
        d = np.asarray(self.p1, dtype=np.float64) - p0
        length2 = max(float(d @ d), 1e-9)
        dx = X - FLOAT(p0[0])
        dy = Y - FLOAT(p0[1])
        dz = Z - FLOAT(p0[2])
        t = dx * FLOAT(d[0] / length2) + dy * FLOAT(d[1] / length2)
        t = t + dz * FLOAT(d[2] / length2)
        np.clip(t, 0.0, 1.0, out=t)
        ex = dx - t * FLOAT(d[0])
        ey = dy - t * FLOAT(d[1])
        ez = dz - t * FLOAT(d[2])
        dist = np.sqrt(ex * ex + ey * ey + ez * ez)
        if self.r0 == self.r1:
            dist -= FLOAT(self.r0)
        else:
            dist -= FLOAT(self.r0) + t * FLOAT(self.r1 - self.r0)
        return dist


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid with semi-axes ``axes`` along the columns of ``rotation``.

    ``center`` is ``(x, y, z)`` (mm); ``rotation`` is a 3x3 matrix whose
    columns are the unit axes in the phantom frame.
    """

    center: tuple[float, float, float]
    axes: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` corners as ``(z, y, x)`` (mm)."""
        rot = np.asarray(self.rotation, dtype=np.float64)
        half = np.sqrt((rot**2) @ (np.asarray(self.axes) ** 2))
        c = np.asarray(self.center)
        return (c - half)[::-1], (c + half)[::-1]

    def normalized_radius(self, Z: np.ndarray, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Ellipsoidal radius: 1 on the surface, 0 at the centre."""
        rot = np.asarray(self.rotation, dtype=np.float64)
        dx = X - FLOAT(self.center[0])
        dy = Y - FLOAT(self.center[1])
        dz = Z - FLOAT(self.center[2])
        total: np.ndarray | float = 0.0
        for axis in range(3):
            col = rot[:, axis] / self.axes[axis]
            u = dx * FLOAT(col[0]) + dy * FLOAT(col[1])
            u = u + dz * FLOAT(col[2])
            total = total + u * u
        return np.sqrt(total)

    def distance(self, Z: np.ndarray, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm): exact on the surface's zero level."""
        q = self.normalized_radius(Z, Y, X)
        q -= FLOAT(1.0)
        q *= FLOAT(min(self.axes))
        return q
