"""TID 1600 Image Library for one series of single-frame slices.

highdicom's ``ImageLibrary`` repeats the full TID 1602/1604 descriptors
(modality, frame of reference, matrix, spacing, thickness, position,
orientation: 17 content items) in every entry. For a 300-slice CT that is
about 5,000 content items, and building, copying and searching them took
several seconds. TID 1600 lets an Image Library Group carry the descriptors
its entries share (row 3, "HAS ACQ CONTEXT INCLUDE DTID 1602", U) and an
entry carry none (TID 1601 row 2 is U): this module writes one group with the
series' shared descriptors and one IMAGE item per slice.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from highdicom.sr import (
    ContainerContentItem,
    ContentSequence,
    ImageContentItem,
    ImageLibraryEntryDescriptors,
    RelationshipTypeValues,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

LOGGER = logging.getLogger(__name__)

__all__ = ["IMAGE_LIBRARY", "image_library", "insert_image_library"]

#: (111028, DCM, "Image Library").
IMAGE_LIBRARY = codes.DCM.ImageLibrary
#: (260753009, SCT, "Source"), TID 1601 row 1.
_SOURCE = Code("260753009", "SCT", "Source")
_PER_IMAGE = {
    (code.value, code.scheme_designator)
    for code in (
        codes.DCM.ImagePositionPatientX,
        codes.DCM.ImagePositionPatientY,
        codes.DCM.ImagePositionPatientZ,
    )
}
_SLICE_THICKNESS = (codes.DCM.SliceThickness.value, codes.DCM.SliceThickness.scheme_designator)


def image_library(source_datasets: Sequence[Dataset]) -> ContainerContentItem:
    """The Image Library container listing every source slice.

    Parameters
    ----------
    source_datasets: Sequence[pydicom.Dataset]
        Slices of one series that share modality, frame of reference, matrix,
        pixel spacing and orientation (checked by
        :func:`pacs_node.results.common.check_source_datasets`).

    Returns
    -------
    highdicom.sr.ContainerContentItem
        ``(111028, DCM, "Image Library")`` with one Image Library Group whose
        descriptors are those of the first slice without its position (and
        without Slice Thickness unless all slices share it).

    Raises
    ------
    ValueError
        If ``source_datasets`` is empty.
    """
    if not source_datasets:
        raise ValueError('Argument "source_datasets" should hold at least one dataset.')
    first = source_datasets[0]
    thicknesses = {str(ds.get("SliceThickness", "")) for ds in source_datasets}
    shared = [
        item
        for item in ImageLibraryEntryDescriptors(first)
        if _concept(item) not in _PER_IMAGE
        and (len(thicknesses) == 1 or _concept(item) != _SLICE_THICKNESS)
    ]
    group = ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    group.ContentSequence = ContentSequence(shared)
    for ds in source_datasets:
        group.ContentSequence.append(
            ImageContentItem(
                name=_SOURCE,
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
    library = ContainerContentItem(
        name=IMAGE_LIBRARY, relationship_type=RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = ContentSequence([group])
    return library


def insert_image_library(root: Dataset, library: ContainerContentItem) -> None:
    """Put ``library`` into a TID 1500 root container at its row (before row 6).

    Parameters
    ----------
    root: pydicom.Dataset
        The Measurement Report root CONTAINER (without an image library).
    library: highdicom.sr.ContainerContentItem
        From :func:`image_library`.

    Raises
    ------
    ValueError
        If ``root`` has no "Imaging Measurements" container or already has an
        image library.
    """
    names = [_concept(item) for item in root.ContentSequence]
    if (IMAGE_LIBRARY.value, IMAGE_LIBRARY.scheme_designator) in names:
        raise ValueError('Argument "root" already holds an Image Library.')
    target = (codes.DCM.ImagingMeasurements.value, codes.DCM.ImagingMeasurements.scheme_designator)
    if target not in names:
        raise ValueError('Argument "root" has no "Imaging Measurements" container.')
    root.ContentSequence.insert(names.index(target), library)


def _concept(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return (str(concept.CodeValue), str(concept.CodingSchemeDesignator))
