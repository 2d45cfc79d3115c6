"""The fast SEG path builds the same object as highdicom's own, on the real CT header.

``BinarySegmentation`` replaces highdicom's ``uint64`` sum of the mask stack
by a streaming check, and ``stack_masks`` writes only the slices that hold a
segment; both must leave the encoded SEG byte for byte unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.seg import SegmentationTypeValues, SegmentsOverlapValues
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.result import InferenceResult
from pacs_node.results import build_segmentation
from pacs_node.results.common import phi_safe_warnings
from pacs_node.results.seg import (
    LESION_ROLE,
    RIGHT_LUNG_ROLE,
    plan_segments,
    segmentation_arguments,
    stack_masks,
)
from pacs_node.results.seg_overlap import BinarySegmentation, stack_overlap
from pacs_node.results.uids import adopt_dimension_organization_uid
from tests.results_fixtures import (
    CT_SERIES,
    UID_ROOT,
    load_series,
    make_manifest,
    make_result,
    same_part10_but_clock,
)


@pytest.fixture(scope="module")
def datasets(shared_data: Path) -> list[pydicom.Dataset]:
    return load_series(shared_data / CT_SERIES)


def _full_stack(result: InferenceResult) -> np.ndarray:
    """The stack as the node built it before issue 6 (every plane written)."""
    plan = plan_segments(make_manifest())
    stacked = np.empty((len(plan), *result.geometry.shape), dtype=np.bool_)
    for index, planned in enumerate(plan):
        if planned.role == LESION_ROLE:
            stacked[index] = result.lesion_mask
        else:
            label = 1 if planned.role == RIGHT_LUNG_ROLE else 2
            np.equal(result.lung_mask, label, out=stacked[index])
    return np.moveaxis(stacked.view(np.uint8), 0, -1)


def _both(datasets, result) -> tuple[hd.seg.Segmentation, hd.seg.Segmentation]:
    arguments = segmentation_arguments(datasets, result, make_manifest(), uid_root=UID_ROOT)
    with phi_safe_warnings():
        plain = hd.seg.Segmentation(pixel_array=_full_stack(result),
                                    **copy.deepcopy(arguments))
        fast = BinarySegmentation(pixel_array=stack_masks(result, plan_segments(make_manifest())),
                                  **copy.deepcopy(arguments))
    for seg in (plain, fast):  # build_segmentation draws one per object
        adopt_dimension_organization_uid(seg, UID_ROOT + ".1")
    return plain, fast


def _variant(result: InferenceResult, lesion: np.ndarray, lung: np.ndarray) -> InferenceResult:
    return dataclasses.replace(result, lesion_mask=lesion, lung_mask=lung)


def test_overlapping_lesion_gives_the_same_file_as_highdicom(datasets):
    result = make_result(datasets)
    assert np.any(result.lesion_mask & (result.lung_mask > 0))
    plain, fast = _both(datasets, result)
    assert plain.SegmentsOverlap == fast.SegmentsOverlap == "YES"
    assert int(fast.NumberOfFrames) > 0
    assert same_part10_but_clock(fast, plain)


def test_lesion_outside_the_lungs_gives_no_overlap_like_highdicom(datasets):
    result = make_result(datasets)
    lesion = result.lesion_mask & (result.lung_mask == 0)
    lesion[2:4, :10, :10] = True  # a corner far from the lung boxes
    plain, fast = _both(datasets, _variant(result, lesion, result.lung_mask))
    assert plain.SegmentsOverlap == fast.SegmentsOverlap == "NO"
    assert same_part10_but_clock(fast, plain)


@pytest.mark.parametrize("empty", ["lesion", "all"])
def test_empty_segments_give_the_same_file_as_highdicom(datasets, empty):
    result = make_result(datasets, lesions=False)
    lung = np.zeros_like(result.lung_mask) if empty == "all" else result.lung_mask
    plain, fast = _both(datasets, _variant(result, result.lesion_mask, lung))
    assert plain.SegmentsOverlap == fast.SegmentsOverlap == "NO"
    assert same_part10_but_clock(fast, plain)


def test_build_segmentation_uses_the_streaming_check(datasets):
    # If highdicom renames the private check, the override silently stops
    # working: this fails first.
    assert "_check_and_cast_pixel_array" in vars(hd.seg.Segmentation)
    seg = build_segmentation(datasets, make_result(datasets), make_manifest(), uid_root=UID_ROOT)
    assert isinstance(seg, BinarySegmentation)


def test_stack_masks_equals_the_full_stack(datasets):
    result = make_result(datasets)
    fast = stack_masks(result, plan_segments(make_manifest()))
    assert fast.dtype == np.uint8 and fast.shape == (*result.geometry.shape, 3)
    assert np.array_equal(fast, _full_stack(result))


def test_non_binary_stack_keeps_highdicoms_error():
    stack = np.zeros((4, 8, 8, 2), dtype=np.uint8)
    stack[1, 2, 3, 1] = 2
    with pytest.raises(ValueError, match="must be binary"):
        BinarySegmentation._check_and_cast_pixel_array(
            stack, np.array([1, 2]), SegmentationTypeValues.BINARY, np.uint8
        )


def test_other_inputs_are_left_to_highdicom():
    label_map = np.zeros((4, 8, 8), dtype=np.uint8)
    label_map[0, 0, 0] = 3
    with pytest.raises(ValueError, match="lack descriptions"):
        BinarySegmentation._check_and_cast_pixel_array(
            label_map, np.array([1, 2]), SegmentationTypeValues.BINARY, np.uint8
        )
    stack = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="does not match the number of described"):
        BinarySegmentation._check_and_cast_pixel_array(
            stack, np.array([1, 2]), SegmentationTypeValues.BINARY, np.uint8
        )


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(1, 9),
    segments=st.integers(2, 4),
    block=st.integers(1, 5),
    density=st.floats(0.0, 0.2),
    seed=st.integers(0, 2**32 - 1),
    as_bool=st.booleans(),
)
def test_stack_overlap_matches_highdicoms_sum(frames, segments, block, density, seed, as_bool):
    rng = np.random.default_rng(seed)
    stack = rng.random((segments, frames, 6, 5)) < density
    array = np.moveaxis(stack if as_bool else stack.view(np.uint8), 0, -1)
    max_value, overlap = stack_overlap(array, block_slices=block)
    assert max_value == int(array.max())
    assert overlap == bool(array.sum(axis=-1).max() > 1)
    expected = (
        SegmentsOverlapValues.YES if overlap else SegmentsOverlapValues.NO
    )
    checked, value = BinarySegmentation._check_and_cast_pixel_array(
        array, np.arange(1, segments + 1), SegmentationTypeValues.BINARY, np.uint8
    )
    _, highdicom_value = hd.seg.Segmentation._check_and_cast_pixel_array(
        array, np.arange(1, segments + 1), SegmentationTypeValues.BINARY, np.uint8
    )
    assert checked is array and value == expected == highdicom_value


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_slices"):
        stack_overlap(np.zeros((1, 2, 2, 2), dtype=np.uint8), block_slices=0)
