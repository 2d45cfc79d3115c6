"""Grayscale Softcopy Presentation State with the AI lesion outlines (highdicom ``pr``).

For viewers that show presentation states but not DICOM-SEG or TID 1500 SR
graphics (Weasis, many PACS viewers). Off by default: produced only when a
destination's ``objects`` names ``"gsps"`` (or ``deepsc-node process
--gsps``).

Content
    - applies to every image of the source series (Referenced Series
      Sequence), with the lung window (VOI W 1500 / L -600, explanation
      "LUNG") and the source's modality LUT;
    - on each source image that holds lesion, one graphic annotation in the
      layer :data:`GRAPHIC_LAYER`: the lesion outlines as closed ``POLYLINE``
      objects in ``PIXEL`` units (pixel edges,
      :func:`pacs_node.results.contours.mask_outlines`), and a text object
      :data:`GSPS_TEXT` at the top left (``DISPLAY`` units);
    - bounded: at most :data:`MAX_ANNOTATED_IMAGES` images (those with the
      most lesion when there are more) and :data:`MAX_OUTLINES_PER_IMAGE`
      outlines per image (the largest), so the object stays small
      (a few hundred kB for a 300-slice series with large lesions);
    - a series without lesion gets a presentation state with the lung window
      and no graphic annotation.

Only headers are needed (``stop_before_pixels`` datasets work): highdicom
reads Rows, Columns, Samples per Pixel, the rescale and the UIDs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from inference.result import InferenceResult
from pacs_node.results.common import (
    DEVICE_NAME,
    MANUFACTURER,
    check_long_string,
    check_series_number,
    check_source_datasets,
    phi_safe_warnings,
    resolve_institution_name,
    result_character_set,
    software_version,
)
from pacs_node.results.capture import BODY_PART_EXAMINED
from pacs_node.results.contours import mask_outlines
from pacs_node.results.drawing import LUNG_WINDOW
from pacs_node.results.sc import select_key_slices
from pacs_node.results.uids import check_uid_root, new_uid

LOGGER = logging.getLogger(__name__)

__all__ = [
    "GRAPHIC_LAYER",
    "GSPS_CONTENT_LABEL",
    "GSPS_SERIES_DESCRIPTION",
    "GSPS_SERIES_NUMBER",
    "GSPS_TEXT",
    "MAX_ANNOTATED_IMAGES",
    "MAX_OUTLINES_PER_IMAGE",
    "build_presentation_state",
]

#: Default Series Number of the presentation state series.
GSPS_SERIES_NUMBER = 9004
#: Series Description of the presentation state series.
GSPS_SERIES_DESCRIPTION = "AI lesion outlines (research)"
#: Content Label (CS) of the presentation state.
GSPS_CONTENT_LABEL = "AI_LESIONS"
#: Graphic Layer (CS) holding the outlines and the text.
GRAPHIC_LAYER = "AI_LESIONS"
#: Text annotation on every annotated image (ST-safe, < 64 characters).
GSPS_TEXT = "AI lesion outlines - RESEARCH USE ONLY, NOT FOR DIAGNOSIS"
#: Most annotated images (those with the most lesion pixels are kept).
MAX_ANNOTATED_IMAGES = 400
#: Most outlines per image (the largest are kept).
MAX_OUTLINES_PER_IMAGE = 32

_LESION_RGB = (230, 50, 50)


def build_presentation_state(
    source_datasets: Sequence[Dataset],
    result: InferenceResult,
    *,
    uid_root: str,
    series_number: int = GSPS_SERIES_NUMBER,
    manufacturer: str = MANUFACTURER,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    max_annotated_images: int = MAX_ANNOTATED_IMAGES,
    max_outlines_per_image: int = MAX_OUTLINES_PER_IMAGE,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Encode the lesion outlines of ``result`` as a GSPS on the source series.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        The CT series in ``result.geometry`` slice order (headers only).
    result: inference.result.InferenceResult
        The lesion mask on that grid.
    uid_root: str
        Root of the Series and SOP Instance UIDs.
    series_number: int, optional
        Series Number (default 9004).
    manufacturer, device_serial_number, institution_name: optional
        As :func:`~pacs_node.results.seg.build_segmentation`.
    max_annotated_images, max_outlines_per_image: int, optional
        The bounds (:data:`MAX_ANNOTATED_IMAGES`,
        :data:`MAX_OUTLINES_PER_IMAGE`).

    Returns
    -------
    highdicom.pr.GrayscaleSoftcopyPresentationState

    Raises
    ------
    TypeError, ValueError
        If the datasets do not match ``result.geometry`` slice by slice or an
        argument is invalid.
    """
    started = time.perf_counter()
    root = check_uid_root(uid_root)
    check_series_number(series_number, "series_number")
    check_long_string(manufacturer, "manufacturer")
    for name, value in (("max_annotated_images", max_annotated_images),
                        ("max_outlines_per_image", max_outlines_per_image)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'Argument "{name}" should be a positive integer, got {value!r}')
    serial = check_long_string(
        device_serial_number if device_serial_number is not None else root[:-1],
        "device_serial_number",
    )
    check_source_datasets(source_datasets, result.geometry)
    layer = hd.pr.GraphicLayer(
        layer_name=GRAPHIC_LAYER,
        order=1,
        description="AI lesion outlines (research use only)",
        display_color=hd.color.CIELabColor.from_rgb(*_LESION_RGB),
    )
    annotations = []
    outline_count = 0
    key_slices = select_key_slices(
        result.lesion_mask, max_annotated_images, min_separation_mm=0.0
    )  # the most lesion first; annotated in slice order
    for k in sorted(k for k, _ in key_slices):
        outlines = mask_outlines(np.ascontiguousarray(result.lesion_mask[k]))
        outlines = outlines[:max_outlines_per_image]
        outline_count += len(outlines)
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[source_datasets[k]],
                graphic_layer=layer,
                graphic_objects=[
                    hd.pr.GraphicObject(
                        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                        graphic_data=outline,
                        units=hd.pr.AnnotationUnitsValues.PIXEL,
                    )
                    for outline in outlines
                ],
                text_objects=[
                    hd.pr.TextObject(
                        text_value=GSPS_TEXT,
                        units=hd.pr.AnnotationUnitsValues.DISPLAY,
                        bounding_box=(0.02, 0.02, 0.75, 0.07),
                        text_justification=hd.pr.TextJustificationValues.LEFT,
                    )
                ],
            )
        )
    voi = hd.pr.SoftcopyVOILUTTransformation(
        window_center=LUNG_WINDOW[0],
        window_width=LUNG_WINDOW[1],
        window_explanation="LUNG",
    )
    with phi_safe_warnings():
        state = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=list(source_datasets),
            series_instance_uid=new_uid(root),
            series_number=series_number,
            sop_instance_uid=new_uid(root),
            instance_number=1,
            manufacturer=manufacturer,
            manufacturer_model_name=DEVICE_NAME,
            software_versions=software_version(),
            device_serial_number=serial,
            content_label=GSPS_CONTENT_LABEL,
            content_description="AI lesion outlines. Research use only, not for diagnosis.",
            graphic_annotations=annotations or None,
            graphic_layers=[layer] if annotations else None,
            voi_lut_transformations=[voi],
            institution_name=resolve_institution_name(source_datasets, institution_name),
            series_description=GSPS_SERIES_DESCRIPTION,
            specific_character_set=result_character_set(source_datasets),
        )
    state.BodyPartExamined = BODY_PART_EXAMINED
    LOGGER.info(
        "GSPS %s for series %s: %d annotated image(s), %d outline(s), %.2f s",
        state.SOPInstanceUID,
        source_datasets[0].SeriesInstanceUID,
        len(annotations),
        outline_count,
        time.perf_counter() - started,
    )
    return state
