"""The "AI summary" Secondary Capture series (highdicom ``sc``), RGB, research use only.

One series (Series Number base + 3, default 9003, "AI summary (research)")
in the source study: the key images first (Instance Number 1..k, most lesion
first), the summary page last. Pixels come from
:func:`pacs_node.results.sc.render_summary`.

Each key image
    keeps its source slice's grid: same Rows/Columns and Pixel Spacing,
    Patient Orientation from the slice's direction cosines and, as standard
    attributes outside the SC IOD that viewers use to place an image, the
    source slice's Image Position/Orientation (Patient) and Frame of
    Reference UID. Its Source Image Sequence references the source slice
    (purpose of reference DCM 121322, "Source image for image processing
    operation").
The summary page
    is derived from the whole series rather than one slice: it references no
    single image; its Patient Orientation gives the coronal overview's
    directions (patient side across, feet down).

Burned In Annotation is "NO": the burned-in text identifies no patient.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from inference.geometry import Geometry
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
from pacs_node.results.sc import SummaryRendering
from pacs_node.results.uids import check_uid_root, new_uid

LOGGER = logging.getLogger(__name__)

__all__ = [
    "BODY_PART_EXAMINED",
    "SC_SERIES_DESCRIPTION",
    "SC_SERIES_NUMBER",
    "build_secondary_captures",
    "patient_orientation",
]

#: Default Series Number of the Secondary Capture series.
SC_SERIES_NUMBER = 9003
#: Series Description of the Secondary Capture series.
SC_SERIES_DESCRIPTION = "AI summary (research)"

#: Body Part Examined of the SC images: the node processes chest CT (an
#: unpaired part, so the General Series Laterality is absent).
BODY_PART_EXAMINED = "CHEST"

_SOURCE_IMAGE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def patient_orientation(direction: Sequence[float]) -> str:
    """The Patient Orientation letter (PS3.3 C.7.6.1.1.1) of an LPS direction.

    Parameters
    ----------
    direction: Sequence[float]
        Unit vector in the patient coordinate system (LPS).

    Returns
    -------
    str
        ``"L"``/``"R"``, ``"P"``/``"A"`` or ``"H"``/``"F"`` along the
        vector's largest component (highdicom writes one letter per axis).
    """
    vector = np.asarray(direction, dtype=float)
    axis = int(np.argmax(np.abs(vector)))
    return _LETTERS[axis][1 if vector[axis] > 0 else 0]


def _source_reference(dataset: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = dataset.SOPClassUID
    item.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = _SOURCE_IMAGE_PURPOSE
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    return item


def _common_arguments(source: Dataset) -> dict[str, Any]:
    return {
        "study_instance_uid": source.StudyInstanceUID,
        "patient_id": source.get("PatientID"),
        "patient_name": source.get("PatientName"),
        "patient_birth_date": source.get("PatientBirthDate"),
        "patient_sex": source.get("PatientSex") or None,
        "accession_number": source.get("AccessionNumber"),
        "study_id": source.get("StudyID"),
        "study_date": source.get("StudyDate"),
        "study_time": source.get("StudyTime"),
        "referring_physician_name": source.get("ReferringPhysicianName"),
    }


def build_secondary_captures(
    source_datasets: Sequence[Dataset],
    rendering: SummaryRendering,
    result: InferenceResult,
    *,
    uid_root: str,
    series_number: int = SC_SERIES_NUMBER,
    manufacturer: str = MANUFACTURER,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
) -> list[hd.sc.SCImage]:
    """Encode the key images and the summary page as one Secondary Capture series.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        The CT series in ``result.geometry`` slice order (headers only are
        needed: ``stop_before_pixels`` datasets work).
    rendering: pacs_node.results.sc.SummaryRendering
        The pixels (:func:`~pacs_node.results.sc.render_summary`).
    result: inference.result.InferenceResult
        The result they were rendered from (for the geometry and the model).
    uid_root: str
        Root of the Series and SOP Instance UIDs.
    series_number: int, optional
        Series Number (default 9003).
    manufacturer, device_serial_number, institution_name: optional
        As :func:`~pacs_node.results.seg.build_segmentation`.

    Returns
    -------
    list[highdicom.sc.SCImage]
        Key images (most lesion first) then the summary page, Instance
        Numbers 1..n, one new Series Instance UID, Modality ``OT``.

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
    serial = check_long_string(
        device_serial_number if device_serial_number is not None else root[:-1],
        "device_serial_number",
    )
    if not isinstance(rendering, SummaryRendering):
        raise TypeError('Argument "rendering" should be a pacs_node.results.sc.SummaryRendering.')
    geometry: Geometry = result.geometry
    check_source_datasets(source_datasets, geometry)
    first = source_datasets[0]
    series_uid = new_uid(root)
    common: dict[str, Any] = {
        **_common_arguments(first),
        "series_instance_uid": series_uid,
        "series_number": series_number,
        "manufacturer": manufacturer,
        "coordinate_system": hd.CoordinateSystemNames.PATIENT,
        "series_description": SC_SERIES_DESCRIPTION,
        "manufacturer_model_name": DEVICE_NAME,
        "software_versions": software_version(),
        "device_serial_number": serial,
        "institution_name": resolve_institution_name(source_datasets, institution_name),
        "specific_character_set": result_character_set(source_datasets),
    }
    axial = (patient_orientation(geometry.row_direction),
             patient_orientation(geometry.column_direction))
    images: list[hd.sc.SCImage] = []
    with phi_safe_warnings():
        for number, key in enumerate(rendering.key_images, start=1):
            source = source_datasets[key.slice_index]
            image = hd.sc.SCImage(
                pixel_array=key.pixels,
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                sop_instance_uid=new_uid(root),
                instance_number=number,
                pixel_spacing=(geometry.spacing[1], geometry.spacing[2]),
                patient_orientation=axial,
                **common,
            )
            image.ImagePositionPatient = list(source.ImagePositionPatient)
            image.ImageOrientationPatient = list(source.ImageOrientationPatient)
            image.FrameOfReferenceUID = source.FrameOfReferenceUID
            if "SliceLocation" in source:
                image.SliceLocation = source.SliceLocation
            image.SourceImageSequence = DicomSequence([_source_reference(source)])
            image.DerivationDescription = (
                "Lung window W 1500 L -600; AI lesion outline, legend and "
                "research-use text burned in"
            )
            image.ImageComments = "AI key image. Research use only, not for diagnosis."
            images.append(image)
        coronal = (patient_orientation(geometry.row_direction), "F")
        page = hd.sc.SCImage(
            pixel_array=rendering.summary_page,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            sop_instance_uid=new_uid(root),
            instance_number=len(images) + 1,
            patient_orientation=coronal,
            **common,
        )
        page.DerivationDescription = (
            "AI result summary page with a coronal overview (lung window, lesions projected)"
        )
        page.ImageComments = "AI summary page. Research use only, not for diagnosis."
        images.append(page)
    for image in images:
        image.copy_patient_and_study_information(first)
        image.BodyPartExamined = BODY_PART_EXAMINED
        image.BurnedInAnnotation = "NO"
        image.LossyImageCompression = "00"
    LOGGER.info(
        "SC series %s for series %s: %d key image(s) + summary page, %.2f s",
        series_uid,
        first.SeriesInstanceUID,
        len(rendering.key_images),
        time.perf_counter() - started,
    )
    return images
