"""One call that encodes a result as its SEG and its SR."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from inference.manifest import Manifest
from inference.result import InferenceResult
from pacs_node.results import codes
from pacs_node.results.common import (
    DEVICE_NAME,
    MANUFACTURER,
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
)
from pacs_node.results.seg import build_segmentation
from pacs_node.results.sr import (
    MAX_LESION_GROUPS,
    MAX_PLANAR_GROUPS,
    MIN_PLANAR_VOLUME_ML,
    build_measurement_report,
)

LOGGER = logging.getLogger(__name__)

__all__ = ["ResultObjects", "encode_results"]


@dataclass(frozen=True)
class ResultObjects:
    """The DICOM objects that carry one result back to the PACS.

    Attributes
    ----------
    seg: highdicom.seg.Segmentation
        The BINARY DICOM-SEG (lesions, right and left lung).
    sr: highdicom.sr.Comprehensive3DSR
        The TID 1500 measurement report referencing ``seg``.
    """

    seg: hd.seg.Segmentation
    sr: hd.sr.Comprehensive3DSR

    @property
    def datasets(self) -> tuple[Dataset, Dataset]:
        """``(seg, sr)``, in the order they should be sent (the SR references the SEG)."""
        return (self.seg, self.sr)


def encode_results(
    source_datasets: Sequence[Dataset],
    result: InferenceResult,
    manifest: Manifest,
    *,
    uid_root: str,
    seg_series_number: int = SEG_SERIES_NUMBER,
    sr_series_number: int = SR_SERIES_NUMBER,
    manufacturer: str = MANUFACTURER,
    device_name: str = DEVICE_NAME,
    device_uid: str | None = None,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    procedure_reported: Code = codes.CT_OF_CHEST,
    max_lesion_groups: int = MAX_LESION_GROUPS,
    max_planar_groups: int = MAX_PLANAR_GROUPS,
    min_planar_volume_ml: float = MIN_PLANAR_VOLUME_ML,
) -> ResultObjects:
    """Build the SEG and then the SR that references it.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        The CT series in ``result.geometry`` slice order.
    result: inference.result.InferenceResult
        The model's outcome on that series.
    manifest: inference.manifest.Manifest
        The model's manifest.
    uid_root: str
        Root of every generated UID.
    seg_series_number, sr_series_number: int, optional
        Series Numbers (defaults 9001 and 9002).
    manufacturer, device_name, device_uid, device_serial_number, institution_name, \
procedure_reported, max_lesion_groups, max_planar_groups, min_planar_volume_ml: optional
        As :func:`~pacs_node.results.seg.build_segmentation` and
        :func:`~pacs_node.results.sr.build_measurement_report`.

    Returns
    -------
    ResultObjects
        The SEG and the SR.

    Raises
    ------
    TypeError, ValueError
        As :func:`~pacs_node.results.seg.build_segmentation` and
        :func:`~pacs_node.results.sr.build_measurement_report`; nothing is
        returned unless both objects could be built.
    """
    seg = build_segmentation(
        source_datasets,
        result,
        manifest,
        uid_root=uid_root,
        series_number=seg_series_number,
        manufacturer=manufacturer,
        device_serial_number=device_serial_number,
        institution_name=institution_name,
    )
    sr = build_measurement_report(
        source_datasets,
        seg,
        result,
        manifest,
        uid_root=uid_root,
        series_number=sr_series_number,
        manufacturer=manufacturer,
        device_name=device_name,
        device_uid=device_uid,
        device_serial_number=device_serial_number,
        institution_name=institution_name,
        procedure_reported=procedure_reported,
        max_lesion_groups=max_lesion_groups,
        max_planar_groups=max_planar_groups,
        min_planar_volume_ml=min_planar_volume_ml,
    )
    return ResultObjects(seg=seg, sr=sr)
