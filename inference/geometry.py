"""Voxel geometry of a CT volume in the DICOM patient coordinate system.

Conventions used everywhere in deepsc-node
------------------------------------------
* A volume is a numpy array indexed ``[k, i, j]`` = ``[slice, row, column]``,
  shape ``(n_slices, rows, columns)``.
* Coordinates are LPS millimetres (DICOM patient coordinate system, PS3.3
  C.7.6.2.1.1).
* ``row_direction`` is the direction in which the *column index j grows*
  (ImageOrientationPatient[0:3]); ``column_direction`` is the direction in
  which the *row index i grows* (ImageOrientationPatient[3:6]);
  ``slice_direction`` is the unit vector in which the slice index k grows.
* ``spacing`` is ``(slice_spacing, row_spacing, column_spacing)`` in mm, where
  ``row_spacing`` = PixelSpacing[0] (between rows, along ``column_direction``)
  and ``column_spacing`` = PixelSpacing[1] (between columns).
* ``origin`` is the centre of voxel ``[0, 0, 0]`` (ImagePositionPatient of the
  first slice).

So voxel ``(k, i, j)`` sits at::

    origin + k * spacing[0] * slice_direction
           + i * spacing[1] * column_direction
           + j * spacing[2] * row_direction
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LOGGER = logging.getLogger(__name__)

__all__ = ["Geometry"]


def _unit(vector: Sequence[float], name: str) -> tuple[float, float, float]:
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (3,) or not np.all(np.isfinite(array)):
        raise ValueError(f'Argument "{name}" should be three finite numbers.')
    norm = float(np.linalg.norm(array))
    if norm < 1e-6:
        raise ValueError(f'Argument "{name}" should not be a zero vector.')
    array = array / norm
    return (float(array[0]), float(array[1]), float(array[2]))


@dataclass(frozen=True)
class Geometry:
    """Placement of a ``(slices, rows, columns)`` voxel array in patient space.

    Parameters
    ----------
    shape: tuple[int, int, int]
        ``(n_slices, rows, columns)``.
    spacing: tuple[float, float, float]
        ``(slice_spacing, row_spacing, column_spacing)`` in mm, all > 0.
    origin: tuple[float, float, float]
        LPS position (mm) of the centre of voxel ``[0, 0, 0]``.
    row_direction: tuple[float, float, float]
        Unit vector along which the column index grows
        (ImageOrientationPatient[0:3]).
    column_direction: tuple[float, float, float]
        Unit vector along which the row index grows
        (ImageOrientationPatient[3:6]).
    slice_direction: tuple[float, float, float] | None, optional
        Unit vector along which the slice index grows. Defaults to
        ``cross(row_direction, column_direction)``. It may differ from the
        cross product only in sign (slices stored feet-to-head or
        head-to-feet); a tilted stack is not a ``Geometry``.

    Raises
    ------
    ValueError
        If a value is out of range or the directions are not orthonormal.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_direction: tuple[float, float, float] = (0.0, 1.0, 0.0)
    slice_direction: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise ValueError('Argument "shape" should be three positive integers.')
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError('Argument "spacing" should be three positive numbers (mm).')
        object.__setattr__(self, "spacing", spacing)
        origin = tuple(float(v) for v in self.origin)
        if len(origin) != 3 or not all(np.isfinite(v) for v in origin):
            raise ValueError('Argument "origin" should be three finite numbers (mm).')
        object.__setattr__(self, "origin", origin)
        row = _unit(self.row_direction, "row_direction")
        col = _unit(self.column_direction, "column_direction")
        if abs(float(np.dot(row, col))) > 1e-3:
            raise ValueError(
                'Arguments "row_direction" and "column_direction" should be orthogonal.'
            )
        normal = tuple(float(v) for v in np.cross(row, col))
        if self.slice_direction is None:
            slc = normal
        else:
            slc = _unit(self.slice_direction, "slice_direction")
            if abs(abs(float(np.dot(slc, normal))) - 1.0) > 1e-3:
                raise ValueError(
                    'Argument "slice_direction" should be parallel to the cross product '
                    "of the row and column directions (no gantry tilt)."
                )
        object.__setattr__(self, "row_direction", row)
        object.__setattr__(self, "column_direction", col)
        object.__setattr__(self, "slice_direction", slc)

    # ------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(k, i, j, 1)`` to LPS mm."""
        matrix = np.eye(4)
        matrix[:3, 0] = np.asarray(self.slice_direction) * self.spacing[0]
        matrix[:3, 1] = np.asarray(self.column_direction) * self.spacing[1]
        matrix[:3, 2] = np.asarray(self.row_direction) * self.spacing[2]
        matrix[:3, 3] = self.origin
        return matrix

    @property
    def image_orientation(self) -> tuple[float, float, float, float, float, float]:
        """ImageOrientationPatient (row direction, then column direction)."""
        return (*self.row_direction, *self.column_direction)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def center(self) -> np.ndarray:
        """LPS position (mm) of the centre of the voxel array."""
        half = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        return self.index_to_patient(half[None, :])[0]

    def slice_position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice ``k``."""
        position = self.index_to_patient(np.array([[k, 0.0, 0.0]]))[0]
        return (float(position[0]), float(position[1]), float(position[2]))

    def index_to_patient(self, indices: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` voxel indices ``(k, i, j)`` to ``(N, 3)`` LPS mm."""
        indices = np.asarray(indices, dtype=np.float64)
        return indices @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` LPS mm to fractional voxel indices ``(k, i, j)``."""
        points = np.asarray(points, dtype=np.float64)
        inverse = np.linalg.inv(self.affine)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    def with_shape(self, shape: tuple[int, int, int]) -> Geometry:
        """Return a copy with another shape and the same placement."""
        return Geometry(
            shape=shape,
            spacing=self.spacing,
            origin=self.origin,
            row_direction=self.row_direction,
            column_direction=self.column_direction,
            slice_direction=self.slice_direction,
        )

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-serialisable representation (see :meth:`from_dict`)."""
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "row_direction": list(self.row_direction),
            "column_direction": list(self.column_direction),
            "slice_direction": list(self.slice_direction or ()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> Geometry:
        """Build a geometry from :meth:`to_dict` output."""
        return cls(
            shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            spacing=tuple(data["spacing"]),  # type: ignore[arg-type]
            origin=tuple(data["origin"]),  # type: ignore[arg-type]
            row_direction=tuple(data["row_direction"]),  # type: ignore[arg-type]
            column_direction=tuple(data["column_direction"]),  # type: ignore[arg-type]
            slice_direction=tuple(data["slice_direction"]) or None,  # type: ignore[arg-type]
        )
