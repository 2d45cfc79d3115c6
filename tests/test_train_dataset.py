"""Training data: NIfTI <-> geometry, the dataset.json layout, the phantom cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.dataset import (
    CLASS_KEYS,
    Case,
    DatasetError,
    build_cache,
    case_seed,
    geometry_from_affine,
    iter_dataset_cases,
    iter_phantom_cases,
    load_cache,
    load_nifti,
    phantom_case,
    phantom_label,
    read_dataset,
    save_nifti,
    write_dataset,
)
from inference.geometry import Geometry
from inference.phantom.nifti import nifti_affine
from tests.manifest_fixtures import make_manifest


def _geometry() -> Geometry:
    return Geometry(
        shape=(6, 10, 12),
        spacing=(2.5, 0.8, 0.7),
        origin=(-100.0, -150.0, 30.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, -1.0),  # head-to-feet slice order
    )


def test_nifti_round_trip_keeps_voxels_and_patient_positions(tmp_path: Path) -> None:
    geometry = _geometry()
    array = np.arange(np.prod(geometry.shape), dtype=np.int16).reshape(geometry.shape)
    path = save_nifti(array, geometry, tmp_path / "ct.nii.gz")
    loaded, loaded_geometry = load_nifti(path)
    assert np.array_equal(loaded, array)
    assert loaded_geometry.shape == geometry.shape
    assert np.allclose(loaded_geometry.affine, geometry.affine, atol=1e-5)
    # RAS affine: x and y flip sign, the first voxel's LPS (-100, -150, 30) is RAS (100, 150, 30)
    affine = nifti_affine(geometry)
    assert np.allclose(affine[:3, 3], [100.0, 150.0, 30.0])
    assert np.allclose(affine[:3, 0], [-0.7, 0.0, 0.0])


def test_geometry_from_a_scanner_style_nifti_affine() -> None:
    # nibabel's usual RAS affine of an axial CT: x to the left, y to posterior
    affine = np.diag([-0.7, -0.7, 2.0, 1.0])
    affine[:3, 3] = [180.0, 160.0, -300.0]
    geometry = geometry_from_affine(affine, (512, 512, 100))
    assert geometry.shape == (100, 512, 512)
    assert geometry.spacing == pytest.approx((2.0, 0.7, 0.7))
    assert geometry.row_direction == pytest.approx((1.0, 0.0, 0.0))  # LPS +x
    assert geometry.column_direction == pytest.approx((0.0, 1.0, 0.0))
    assert geometry.origin == pytest.approx((-180.0, -160.0, -300.0))
    with pytest.raises(ValueError, match="affine"):
        geometry_from_affine(np.eye(3), (2, 2, 2))


def _cases() -> list[Case]:
    geometry = Geometry(shape=(20, 32, 32), spacing=(5.0, 5.0, 5.0), origin=(0.0, 0.0, 0.0))
    out = []
    for n, label in enumerate(CLASS_KEYS):
        hu = np.full(geometry.shape, -850, dtype=np.int16)
        mask = np.zeros(geometry.shape, dtype=bool)
        if label != "no_pneumonia":
            mask[8:12, 10:16, 10:16 + n] = True
            hu[mask] = -300
        out.append(Case(f"case_{n:04d}", hu, mask, geometry, label))
    return out


def test_dataset_directory_round_trip(tmp_path: Path) -> None:
    cases = _cases()
    path = write_dataset(tmp_path, cases)
    document = json.loads(path.read_text())
    assert document["modality"] == {"0": "CT"}
    assert document["labels"] == {"0": "background", "1": "lesion"}
    assert [e["class"] for e in document["training"]] == list(CLASS_KEYS)
    entries = read_dataset(tmp_path)
    assert [e.case_id for e in entries] == ["case_0000", "case_0001", "case_0002"]
    loaded = list(iter_dataset_cases(tmp_path))
    for original, back in zip(cases, loaded):
        assert back.label == original.label
        assert np.array_equal(back.hu, original.hu)
        assert np.array_equal(back.lesion_mask, original.lesion_mask)
        assert np.allclose(back.geometry.affine, original.geometry.affine, atol=1e-5)


def test_dataset_json_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        read_dataset(tmp_path)
    write_dataset(tmp_path, _cases())
    document = json.loads((tmp_path / "dataset.json").read_text())

    def broken(change: dict) -> None:
        (tmp_path / "dataset.json").write_text(json.dumps({**document, **change}))

    broken({"classes": ["cap", "covid19", "no_pneumonia"]})
    with pytest.raises(DatasetError, match='"classes"'):
        read_dataset(tmp_path)
    broken({"training": [{**document["training"][0], "class": "flu"}]})
    with pytest.raises(DatasetError, match=r"training\[0\]\.class"):
        read_dataset(tmp_path)
    broken({"training": [{**document["training"][0], "image": "./imagesTr/missing.nii.gz"}]})
    with pytest.raises(DatasetError, match=r"training\[0\]\.image.*not found"):
        read_dataset(tmp_path)
    broken({"training": [{"image": document["training"][0]["image"], "class": "covid19"}]})
    with pytest.raises(DatasetError, match=r"training\[0\]\.label.*required"):
        read_dataset(tmp_path)
    # a no-pneumonia case may come without a mask
    broken({"training": [{"image": document["training"][2]["image"], "class": "no_pneumonia"}]})
    (case,) = iter_dataset_cases(tmp_path)
    assert case.label == "no_pneumonia" and not case.lesion_mask.any()
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_dataset(tmp_path)


def test_phantom_seeds_are_balanced_and_separate_runs() -> None:
    assert [phantom_label(i) for i in range(6)] == list(CLASS_KEYS) * 2
    train_seeds = {case_seed(1, i) for i in range(500)}
    eval_seeds = {case_seed(20240, i) for i in range(500)}
    assert len(train_seeds) == 500 and not train_seeds & eval_seeds
    assert case_seed(1, 5) == case_seed(1, 5)


def test_phantom_cache_targets_sit_on_the_prepared_grid(tmp_path: Path) -> None:
    manifest = make_manifest(shape=(16, 32, 32), spacing=(20.0, 12.0, 12.0))
    cases = [phantom_case(11, n, matrix=64) for n in range(3)]
    assert [c.label for c in cases] == list(CLASS_KEYS)
    source = {"kind": "phantoms", "seed": 11, "n": 3, "matrix": 64}
    seen: list[int] = []
    build_cache(iter(cases), tmp_path, manifest, source, progress=lambda n, c: seen.append(n))
    assert seen == [0, 1, 2]
    cache = load_cache(tmp_path)
    assert cache.images.shape == (3, 16, 32, 32)
    assert list(cache.labels) == [0, 1, 2]
    assert cache.case_ids == ("phantom-11-0", "phantom-11-1", "phantom-11-2")
    voxel_ml = 20.0 * 12.0 * 12.0 / 1000.0
    for case, lesion in zip(cases, cache.lesions):
        reference_ml = case.lesion_mask.sum() * case.geometry.voxel_volume_ml
        cached_ml = lesion.astype(np.float64).sum() / 255.0 * voxel_ml
        assert cached_ml == pytest.approx(reference_ml, rel=0.05, abs=1.0)
    assert cache.lesions[2].max() == 0  # no pneumonia: empty target
    # lesions (GGO / consolidation) are denser than the lung around them
    lesion_values = cache.images[0][cache.lesions[0] > 200].astype(np.float32)
    lung_hu_normalised = (-850.0 + 212.0) / 812.0
    assert lesion_values.mean() > lung_hu_normalised + 0.2
    # building again is a no-op; another grid is refused
    build_cache(iter([]), tmp_path, manifest, source)
    other = make_manifest(shape=(16, 32, 32), spacing=(10.0, 12.0, 12.0))
    with pytest.raises(DatasetError, match='another "grid"'):
        build_cache(iter(cases), tmp_path, other, source)
    with pytest.raises(DatasetError, match="no cache"):
        load_cache(tmp_path / "missing")


def _failing_case() -> Case:
    raise DatasetError("case 2 is unreadable")


def test_parallel_cache_build_writes_the_same_files(tmp_path: Path) -> None:
    manifest = make_manifest(shape=(16, 32, 32), spacing=(20.0, 12.0, 12.0))
    source = {"kind": "phantoms", "seed": 11, "n": 4, "matrix": 64}
    build_cache(iter_phantom_cases(11, range(4), matrix=64), tmp_path / "one", manifest, source)
    seen: list[tuple[int, str]] = []
    build_cache(iter_phantom_cases(11, range(4), matrix=64), tmp_path / "two", manifest, source,
                progress=lambda n, c: seen.append((n, c)), workers=2)
    assert sorted(seen) == [(n, f"phantom-11-{n}") for n in range(4)]
    one, two = load_cache(tmp_path / "one"), load_cache(tmp_path / "two")
    assert one.case_ids == two.case_ids
    assert np.array_equal(one.images, two.images)
    assert np.array_equal(one.lesions, two.lesions)
    assert np.array_equal(one.labels, two.labels)
    assert not list((tmp_path / "two").glob("*.tmp.npz"))


def test_parallel_cache_build_raises_the_first_failure_and_resumes(tmp_path: Path) -> None:
    manifest = make_manifest(shape=(16, 32, 32), spacing=(20.0, 12.0, 12.0))
    source = {"kind": "phantoms", "seed": 11, "n": 3, "matrix": 64}
    cases = list(iter_phantom_cases(11, range(3), matrix=64))
    broken = [cases[0], cases[1], _failing_case]
    with pytest.raises(DatasetError, match="case 2 is unreadable"):
        build_cache(broken, tmp_path, manifest, source, workers=2)
    assert not (tmp_path / "case_00002.npz").exists()
    assert not list(tmp_path.glob("*.tmp.npz"))
    done: list[int] = []
    build_cache(cases, tmp_path, manifest, source, progress=lambda n, c: done.append(n),
                workers=2)
    assert 2 in done and len(load_cache(tmp_path)) == 3


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_cache_workers_must_be_a_positive_integer(tmp_path: Path, workers: object) -> None:
    manifest = make_manifest(shape=(16, 32, 32), spacing=(20.0, 12.0, 12.0))
    with pytest.raises(ValueError, match='"workers"'):
        build_cache([], tmp_path, manifest, {"kind": "test"}, workers=workers)  # type: ignore[arg-type]
