"""Selection rules on series headers: each rule accepts or rejects with its reason."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedCTImageStorage, MRImageStorage, generate_uid

from config import DEFAULT_UID_ROOT, SelectionRules
from inference.errors import VolumeError
from pacs_node.selection import (
    is_own_output_header,
    read_headers,
    select_series,
    usable_images,
)
from storage import JobState
from tests.dicom_fixtures import make_basic_text_sr, make_ct_dataset, write_dataset
from tests.node_fixtures import ct_series


def with_each(datasets: Sequence[Dataset], **values: object) -> list[Dataset]:
    out = [copy.deepcopy(ds) for ds in datasets]
    for ds in out:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return out


RULES = SelectionRules()


def test_axial_ct_series_is_a_candidate_with_a_descriptive_reason() -> None:
    selection = select_series(ct_series(24, thickness=8.0), RULES, uid_root=DEFAULT_UID_ROOT)
    assert selection.candidate
    assert selection.state is JobState.QUEUED
    assert selection.reason == "CT axial 24 slices 8.0 mm"
    assert selection.image_count == 24


def test_too_few_slices_are_rejected_with_the_counts() -> None:
    selection = select_series(ct_series(3), RULES)
    assert not selection.candidate
    assert selection.state is JobState.REJECTED
    assert selection.reason == "3 slices < minimum 20"


def test_minimum_slices_comes_from_the_rules() -> None:
    assert select_series(ct_series(3), SelectionRules(min_slices=3)).candidate


def test_other_modality_is_rejected() -> None:
    headers = with_each(ct_series(24), Modality="MR", SOPClassUID=MRImageStorage)
    selection = select_series(headers, RULES)
    assert not selection.candidate
    assert selection.reason == "modality MR is not one of CT"


def test_structured_report_series_is_rejected_by_modality() -> None:
    selection = select_series([make_basic_text_sr()], RULES)
    assert not selection.candidate
    assert selection.reason == "modality SR is not one of CT"


def test_enhanced_ct_is_rejected_as_not_supported() -> None:
    headers = with_each(ct_series(24), SOPClassUID=EnhancedCTImageStorage)
    selection = select_series(headers, RULES)
    assert not selection.candidate
    assert "Enhanced CT Image Storage (multi-frame) is not supported" in selection.reason


def test_localizer_images_are_ignored_and_counted() -> None:
    headers = ct_series(24)
    headers[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    selection = select_series(headers, RULES)
    assert selection.candidate
    assert selection.image_count == 23
    assert selection.reason.startswith("CT axial 23 slices 2.5 mm")
    assert "1 LOCALIZER image(s) ignored" in selection.reason
    assert len(usable_images(headers, RULES)) == 23


def test_series_of_only_localizers_is_rejected() -> None:
    headers = with_each(ct_series(2), ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    selection = select_series(headers, RULES)
    assert not selection.candidate
    assert selection.reason == "all 2 images have an excluded Image Type (LOCALIZER)"


def test_series_description_exclude_pattern() -> None:
    headers = with_each(ct_series(24), SeriesDescription="Topogram 0.6 T20f")
    selection = select_series(headers, RULES)
    assert not selection.candidate
    assert selection.reason == "series description matches exclude pattern 'topogram'"


def test_series_description_include_patterns() -> None:
    rules = SelectionRules(series_description_include=("thorax", "chest"))
    thorax = with_each(ct_series(24), SeriesDescription="ThoraxRoutine")
    assert select_series(thorax, rules).candidate
    selection = select_series(with_each(ct_series(24), SeriesDescription="Abdomen"), rules)
    assert not selection.candidate
    assert selection.reason == (
        "series description matches none of the include patterns 'thorax', 'chest'"
    )


def test_description_is_not_quoted_in_the_reason() -> None:
    headers = with_each(ct_series(24), SeriesDescription="dose report for DOE^JOHN")
    selection = select_series(headers, RULES)
    assert not selection.candidate
    assert "DOE" not in selection.reason


def test_thick_slices_are_rejected() -> None:
    selection = select_series(ct_series(24, thickness=12.0), RULES)
    assert not selection.candidate
    assert selection.reason == "slice thickness 12.0 mm > maximum 10 mm"


def test_slice_spacing_counts_when_larger_than_thickness() -> None:
    headers = ct_series(24, thickness=12.0)
    for ds in headers:
        ds.SliceThickness = "1"
    selection = select_series(headers, RULES)
    assert not selection.candidate
    assert selection.reason == "slice thickness 12.0 mm > maximum 10 mm"


@pytest.mark.parametrize(("degrees", "candidate"), [(0.0, True), (8.0, True), (30.0, False),
                                                    (90.0, False)])
def test_orientation_tolerance(degrees: float, candidate: bool) -> None:
    angle = np.deg2rad(degrees)
    headers = with_each(
        ct_series(24),
        ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle))],
    )
    selection = select_series(headers, RULES)
    assert selection.candidate is candidate
    if not candidate:
        assert selection.reason == (
            f"not axial: slice normal {degrees:.1f} degrees from the foot-head axis (tolerance 10)"
        )


def test_mixed_orientations_are_left_to_the_volume_builder() -> None:
    headers = ct_series(24)
    for ds in headers[12:]:
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.996195, 0.087156]
    assert select_series(headers, RULES).candidate


def test_own_output_by_uid_root() -> None:
    headers = ct_series(24)
    headers[5].SOPInstanceUID = generate_uid(prefix=DEFAULT_UID_ROOT)
    selection = select_series(headers, RULES, uid_root=DEFAULT_UID_ROOT)
    assert not selection.candidate
    assert selection.reason == "own output: UIDs under the node's UID root"
    assert selection.own_output


def test_own_output_by_manufacturer_and_model() -> None:
    headers = with_each(ct_series(24), Manufacturer="DeepSC-Node",
                        ManufacturerModelName="deepsc-node")
    selection = select_series(headers, RULES)
    assert not selection.candidate
    assert selection.reason == "own output: Manufacturer and model deepsc-node"
    assert selection.own_output
    # The project's synthetic phantoms and a scanner named like us are not the node.
    for manufacturer, model in (("deepsc-node", "deepsc-node synthetic phantom"),
                                ("deepsc-node tests", "deepsc-node")):
        other = with_each(ct_series(24), Manufacturer=manufacturer, ManufacturerModelName=model)
        assert is_own_output_header(other[0], DEFAULT_UID_ROOT) is None
        assert select_series(other, RULES).candidate


def test_own_output_known_to_the_database_comes_first() -> None:
    selection = select_series(ct_series(3), RULES, own_output=True)
    assert not selection.candidate
    assert selection.reason == "own output: a result series this node wrote"
    assert selection.own_output
    assert not select_series(ct_series(3), RULES).own_output  # rejected, but not ours


def test_rules_must_be_selection_rules() -> None:
    with pytest.raises(TypeError, match='"rules"'):
        select_series(ct_series(1), {"min_slices": 1})  # type: ignore[arg-type]


def test_no_images() -> None:
    assert select_series([], RULES).reason == "no images"


def test_read_headers_names_the_unreadable_file(tmp_path: Path) -> None:
    good = write_dataset(make_ct_dataset(), tmp_path / "good.dcm")
    bad = tmp_path / "missing.dcm"
    assert len(read_headers([good])) == 1
    assert "PixelData" not in read_headers([good])[0]
    with pytest.raises(VolumeError, match=r"cannot read DICOM file missing\.dcm"):
        read_headers([good, bad])
