"""Voxel geometry conventions."""
from __future__ import annotations

import numpy as np
import pytest

from inference.geometry import Geometry


def test_affine_maps_indices_to_lps() -> None:
    g = Geometry(shape=(3, 4, 5), spacing=(2.0, 0.5, 0.7), origin=(10.0, 20.0, 30.0),
                 slice_direction=(0, 0, -1))
    p = g.index_to_patient(np.array([[1, 2, 3]]))[0]
    assert np.allclose(p, [10 + 3 * 0.7, 20 + 2 * 0.5, 30 - 2.0])
    assert np.allclose(g.patient_to_index(p[None])[0], [1, 2, 3])
    assert g.slice_position(2) == pytest.approx((10.0, 20.0, 26.0))
    assert g.voxel_volume_ml == pytest.approx(2.0 * 0.5 * 0.7 / 1000)
    assert Geometry.from_dict(g.to_dict()) == g


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"shape": (0, 4, 4)}, "shape"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"origin": (0.0, float("nan"), 0.0)}, "origin"),
        ({"row_direction": (0, 0, 0)}, "row_direction"),
        ({"column_direction": (1, 0.5, 0)}, "orthogonal"),
        ({"slice_direction": (0, 0.3, 1)}, "gantry tilt"),
    ],
)
def test_invalid_geometry_names_argument(kwargs: dict, name: str) -> None:
    base = {"shape": (2, 2, 2), "spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0)}
    base.update(kwargs)
    with pytest.raises(ValueError, match=name):
        Geometry(**base)
