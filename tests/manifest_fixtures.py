"""Helpers that build valid manifests (and variants) for tests."""
from __future__ import annotations

import copy
from typing import Any

from inference.codes import DEFAULT_CLASSES, DEFAULT_SEGMENTS
from inference.manifest import RESEARCH_USE_STATEMENT, Manifest

CLASSES = [dict(c) for c in DEFAULT_CLASSES]
SEGMENTS = [dict(s) for s in DEFAULT_SEGMENTS]


def manifest_dict(
    shape: tuple[int, int, int] = (16, 32, 32),
    spacing: tuple[float, float, float] = (10.0, 12.0, 12.0),
    with_lung: bool = False,
) -> dict[str, Any]:
    """A valid manifest as parsed JSON for a grid of ``shape``."""
    outputs: list[dict[str, Any]] = [
        {"role": "lesion_probability", "name": "lesion_probability", "dtype": "float32",
         "shape": [1, 1, *shape]},
        {"role": "class_probabilities", "name": "class_probabilities", "dtype": "float32",
         "shape": [1, 3]},
    ]
    if with_lung:
        outputs.append({"role": "lung_probability", "name": "lung_probability",
                        "dtype": "float32", "shape": [1, 1, *shape]})
    return copy.deepcopy({
        "format": "deepsc-node-model",
        "format_version": 1,
        "model_name": "test model",
        "model_version": "0.0.1",
        "description": "built by tests",
        "input": {"name": "ct", "layout": "NCDHW", "dtype": "float32", "shape": [1, 1, *shape]},
        "grid": {"shape": list(shape), "spacing_mm": list(spacing), "placement": "lung_center",
                 "fill_hu": -1024.0},
        "intensity": {"clip_hu": [-1024.0, 600.0], "offset_hu": -212.0, "scale_hu": 812.0},
        "outputs": outputs,
        "lesion_threshold": 0.5,
        "classes": CLASSES,
        "segments": SEGMENTS,
        "training": {"data": "none: test fixture"},
        "intended_use": RESEARCH_USE_STATEMENT,
    })


def make_manifest(**kwargs: Any) -> Manifest:
    """A validated :class:`Manifest` (see :func:`manifest_dict`)."""
    return Manifest.from_dict(manifest_dict(**kwargs))
