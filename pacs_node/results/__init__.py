"""DICOM encoding of inference results: DICOM-SEG and TID 1500 SR (highdicom).

``encode_results`` builds both objects; ``read_segmentation_mask`` and
``read_report_measurements`` read them back. See ``docs/results.md``.
"""
from pacs_node.results.common import (
    SEG_SERIES_DESCRIPTION,
    SEG_SERIES_NUMBER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
)
from pacs_node.results.encode import ResultObjects, encode_results
from pacs_node.results.outline_sr import build_outline_report
from pacs_node.results.readback import read_report_measurements, read_segmentation_mask
from pacs_node.results.seg import build_segmentation, plan_segments
from pacs_node.results.sr import build_measurement_report

__all__ = [
    "SEG_SERIES_DESCRIPTION",
    "SEG_SERIES_NUMBER",
    "SR_SERIES_DESCRIPTION",
    "SR_SERIES_NUMBER",
    "ResultObjects",
    "build_measurement_report",
    "build_outline_report",
    "build_segmentation",
    "encode_results",
    "plan_segments",
    "read_report_measurements",
    "read_segmentation_mask",
]
