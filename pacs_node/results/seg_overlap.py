"""A highdicom Segmentation whose pixel checks stream over the mask stack.

highdicom 0.28 checks a 4D ``(frames, rows, columns, segments)`` binary stack
with ``pixel_array.sum(axis=-1)``: numpy widens ``uint8``/``bool`` sums to
``uint64``, so a 300 x 512 x 512 x 3 stack allocates a 630 MB temporary and
takes 1-2 s on two cores, most of a 300-slice SEG's encoding time
(highdicom issues #227 and #285 describe the same family of slow paths).

:class:`BinarySegmentation` answers the same two questions (is the stack
binary; do segments overlap) slice block by slice block, with a ``uint8``
running sum of a few MB, and leaves every other input to highdicom's own
check. The object is built by highdicom's constructor otherwise unchanged:
same frames, same pixel data, same ``SegmentsOverlap`` value
(``tests/test_results_seg.py`` compares the two byte for byte, and
``bench/seg_encode.py`` times them).
"""
from __future__ import annotations

import logging
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.seg import SegmentationTypeValues, SegmentsOverlapValues

LOGGER = logging.getLogger(__name__)

__all__ = ["BinarySegmentation", "is_streamable_stack", "stack_overlap"]

#: Slices per block of the streaming check (512 x 512 x 3 segments: 25 MB of
#: input and a 8 MB running sum per block).
BLOCK_SLICES = 32
#: Most segments the ``uint8`` running sum can count without overflow.
MAX_STREAMED_SEGMENTS = 255


def is_streamable_stack(pixel_array: object, segment_numbers: np.ndarray) -> bool:
    """Whether :func:`stack_overlap` can stand in for highdicom's check.

    Parameters
    ----------
    pixel_array: object
        The ``pixel_array`` argument given to the Segmentation.
    segment_numbers: numpy.ndarray
        The described segment numbers, in the order given.

    Returns
    -------
    bool
        ``True`` for a plain 4D ``bool`` or ``uint8`` numpy array whose last
        axis holds one plane per described segment, 2 to
        :data:`MAX_STREAMED_SEGMENTS` of them; anything else (label maps,
        float arrays, ``highdicom.Volume``, a segment-count mismatch) keeps
        highdicom's own check and error messages.
    """
    return (
        type(pixel_array) is np.ndarray
        and pixel_array.ndim == 4
        and pixel_array.dtype in (np.bool_, np.uint8)
        and 1 < pixel_array.shape[-1] == len(segment_numbers) <= MAX_STREAMED_SEGMENTS
    )


def stack_overlap(pixel_array: np.ndarray, block_slices: int = BLOCK_SLICES) -> tuple[int, bool]:
    """Largest value of a 4D segment stack and whether two segments share a voxel.

    Parameters
    ----------
    pixel_array: numpy.ndarray
        ``(frames, rows, columns, segments)``, ``bool`` or ``uint8``
        (see :func:`is_streamable_stack`); any memory layout (a
        ``numpy.moveaxis`` view of a segment-major array reads each segment
        plane contiguously).
    block_slices: int, optional
        Frames per block; bounds the temporaries to
        ``block_slices * rows * columns`` bytes.

    Returns
    -------
    tuple[int, bool]
        ``(max_value, overlap)``. ``overlap`` is what highdicom computes as
        ``pixel_array.sum(axis=-1).max() > 1`` and is only meaningful when
        ``max_value <= 1`` (a non-binary stack is rejected before it is used).

    Raises
    ------
    ValueError
        If ``block_slices`` is not positive.
    """
    if block_slices < 1:
        raise ValueError('Argument "block_slices" should be a positive integer.')
    max_value = 0
    overlap = False
    for start in range(0, pixel_array.shape[0], block_slices):
        block = pixel_array[start:start + block_slices]
        max_value = max(max_value, int(block.max()))
        if max_value > 1:
            return max_value, overlap
        if overlap:
            continue
        total = block[..., 0].astype(np.uint8)
        for index in range(1, block.shape[-1]):
            np.add(total, block[..., index], out=total, casting="unsafe")
        overlap = bool(total.max() > 1)
    return max_value, overlap


class BinarySegmentation(hd.seg.Segmentation):
    """``highdicom.seg.Segmentation`` with a streaming check of 4D binary stacks.

    Takes exactly the arguments of ``highdicom.seg.Segmentation`` and builds
    the same object. Only the check of a 4D ``bool``/``uint8`` stack
    (:func:`is_streamable_stack`) of a BINARY segmentation differs, in cost
    and not in outcome: :func:`stack_overlap` instead of a ``uint64`` sum of
    the whole stack. A non-binary stack still gets highdicom's own error.
    """

    @classmethod
    def _check_and_cast_pixel_array(
        cls,
        pixel_array: Any,
        segment_numbers: np.ndarray,
        segmentation_type: SegmentationTypeValues,
        dtype: type,
    ) -> tuple[Any, SegmentsOverlapValues]:
        """Same contract as highdicom's (returns the array and SegmentsOverlap)."""
        if segmentation_type != SegmentationTypeValues.BINARY or not is_streamable_stack(
            pixel_array, segment_numbers
        ):
            return super()._check_and_cast_pixel_array(
                pixel_array, segment_numbers, segmentation_type, dtype
            )
        max_value, overlap = stack_overlap(pixel_array)
        if max_value > 1:
            # highdicom's own ValueError ("... the pixel array must be binary.").
            return super()._check_and_cast_pixel_array(
                pixel_array, segment_numbers, segmentation_type, dtype
            )
        if max_value == 0 or not overlap:
            return pixel_array, SegmentsOverlapValues.NO
        return pixel_array, SegmentsOverlapValues.YES
