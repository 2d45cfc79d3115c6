"""DICOM encoding of inference results: DICOM-SEG and TID 1500 SR (highdicom),
the "AI summary" Secondary Capture series and the optional GSPS.

``encode_results`` builds the SEG and the SR; ``read_segmentation_mask`` and
``read_report_measurements`` read them back; ``render_summary`` and
``build_secondary_captures`` make the Secondary Capture series,
``build_presentation_state`` the presentation state. See ``docs/results.md``.
"""
from pacs_node.results.common import (
    SEG_SERIES_DESCRIPTION,
    SEG_SERIES_NUMBER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
)
from pacs_node.results.capture import (
    SC_SERIES_DESCRIPTION,
    SC_SERIES_NUMBER,
    build_secondary_captures,
)
from pacs_node.results.encode import ResultObjects, encode_results
from pacs_node.results.gsps import (
    GSPS_SERIES_DESCRIPTION,
    GSPS_SERIES_NUMBER,
    build_presentation_state,
)
from pacs_node.results.outline_sr import build_outline_report
from pacs_node.results.readback import read_report_measurements, read_segmentation_mask
from pacs_node.results.sc import SummaryRendering, render_summary
from pacs_node.results.seg import build_segmentation, plan_segments
from pacs_node.results.sr import build_measurement_report

__all__ = [
    "GSPS_SERIES_DESCRIPTION",
    "GSPS_SERIES_NUMBER",
    "SC_SERIES_DESCRIPTION",
    "SC_SERIES_NUMBER",
    "SEG_SERIES_DESCRIPTION",
    "SEG_SERIES_NUMBER",
    "SR_SERIES_DESCRIPTION",
    "SR_SERIES_NUMBER",
    "ResultObjects",
    "SummaryRendering",
    "build_presentation_state",
    "build_secondary_captures",
    "build_measurement_report",
    "build_outline_report",
    "build_segmentation",
    "encode_results",
    "plan_segments",
    "read_report_measurements",
    "read_segmentation_mask",
    "render_summary",
]
