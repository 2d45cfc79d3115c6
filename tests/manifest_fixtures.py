"""Helpers that build valid manifests (and variants) for tests."""
from __future__ import annotations

import copy
from typing import Any

from inference.manifest import RESEARCH_USE_STATEMENT, Manifest

CLASSES = [
    {
        "key": "covid19",
        "display": "COVID-19 pattern",
        "code": {
            "value": "840539006",
            "scheme": "SCT",
            "meaning": "Disease caused by severe acute respiratory syndrome coronavirus 2",
        },
    },
    {
        "key": "cap",
        "display": "Community-acquired pneumonia pattern",
        "code": {"value": "385093006", "scheme": "SCT", "meaning": "Community acquired pneumonia"},
    },
    {
        "key": "no_pneumonia",
        "display": "No pneumonia",
        "code": {"value": "233604007", "scheme": "SCT", "meaning": "Pneumonia"},
    },
]


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
        "segments": [
            {"label": "Lesion", "source": "lesion_probability",
             "category": {"value": "49755003", "scheme": "SCT",
                          "meaning": "Morphologically Abnormal Structure"},
             "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}},
            {"label": "Lung", "source": "hu_lung_extraction",
             "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
             "type": {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}},
        ],
        "training": {"data": "none: test fixture"},
        "intended_use": RESEARCH_USE_STATEMENT,
    })


def make_manifest(**kwargs: Any) -> Manifest:
    """A validated :class:`Manifest` (see :func:`manifest_dict`)."""
    return Manifest.from_dict(manifest_dict(**kwargs))
