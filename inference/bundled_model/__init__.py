"""The model shipped with deepsc-node (``model.onnx`` + ``manifest.json``).

Trained on synthetic chest-CT phantoms only: research use only, not for
diagnosis. See ``docs/model.md`` (the model card) for data, architecture,
loss, training, results and limits.
"""
from __future__ import annotations

import logging
from pathlib import Path

LOGGER = logging.getLogger(__name__)

__all__ = ["BUNDLED_MODEL_DIR"]

#: Directory of the bundled model, for ``load_model(BUNDLED_MODEL_DIR)``.
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent
