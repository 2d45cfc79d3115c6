"""Synthetic chest-CT phantoms with COVID-19, CAP or no pneumonia.

The joint model of deepsc-node is trained and evaluated on these phantoms,
and the end-to-end tests and benchmarks send them to the node as DICOM CT
series. Anatomy and lesions are continuous fields in millimetres, drawn
deterministically from a seed, so one spec can be sampled on any grid. See
``docs/phantom.md``.

The public names are imported on first use (so that ``deepsc-node --help``,
which imports :mod:`inference.phantom.commands`, stays fast).

>>> from inference.phantom import sample_spec
>>> spec = sample_spec(7, "covid")
>>> spec.label, spec.matrix
('covid19', 512)
>>> abs(spec.with_grid(matrix=128).field_of_view - spec.field_of_view) < 1e-9
True
"""
from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

LOGGER = logging.getLogger(__name__)

__all__ = [
    "CLASS_KEYS",
    "Phantom",
    "PhantomSpec",
    "generate_phantom",
    "normalize_label",
    "parse_classes",
    "phantom_geometry",
    "sample_spec",
    "write_dicom_series",
    "write_nifti",
]

#: Module defining each public name.
_SOURCES: dict[str, str] = {
    "CLASS_KEYS": "inference.phantom.spec",
    "PhantomSpec": "inference.phantom.spec",
    "normalize_label": "inference.phantom.spec",
    "parse_classes": "inference.phantom.spec",
    "sample_spec": "inference.phantom.spec",
    "Phantom": "inference.phantom.generator",
    "generate_phantom": "inference.phantom.generator",
    "phantom_geometry": "inference.phantom.generator",
    "write_dicom_series": "inference.phantom.dicom",
    "write_nifti": "inference.phantom.nifti",
}

if TYPE_CHECKING:  # pragma: no cover
    from inference.phantom.dicom import write_dicom_series
    from inference.phantom.generator import Phantom, generate_phantom, phantom_geometry
    from inference.phantom.nifti import write_nifti
    from inference.phantom.spec import (
        CLASS_KEYS,
        PhantomSpec,
        normalize_label,
        parse_classes,
        sample_spec,
    )


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
