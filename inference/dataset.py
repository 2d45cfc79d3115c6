"""Training data: a dataset directory, synthetic phantoms, and a model-grid cache.

Dataset directory layout (after the Medical Segmentation Decathlon)
------------------------------------------------------------------
::

    my_dataset/
      dataset.json
      imagesTr/case_0000.nii.gz     CT in HU (int16 or float), one 3D volume
      labelsTr/case_0000.nii.gz     lesion mask (0 background, >0 lesion), same grid
      ...

``dataset.json``::

    {
      "name": "site-covid-ct",
      "description": "...",
      "tensorImageSize": "3D",
      "modality": {"0": "CT"},
      "labels": {"0": "background", "1": "lesion"},
      "classes": ["covid19", "cap", "no_pneumonia"],
      "numTraining": 2,
      "training": [
        {"image": "./imagesTr/case_0000.nii.gz",
         "label": "./labelsTr/case_0000.nii.gz",
         "class": "covid19"},
        {"image": "./imagesTr/case_0001.nii.gz",
         "label": "./labelsTr/case_0001.nii.gz",
         "class": "no_pneumonia"}
      ]
    }

``modality``, ``labels`` and ``training`` follow the Decathlon; ``class``
(one of ``classes``, which must be the model's class keys in order) is the
scan-level label. A ``no_pneumonia`` case may omit ``label`` (empty mask).
Paths are relative to the directory. NIfTI affines are RAS; they are turned
into the LPS :class:`~inference.geometry.Geometry` used everywhere else.

Cache
-----
Training never resamples on the fly: every case is turned once into the
model's input (:func:`inference.preprocessing.prepare_input`) and a soft
lesion target on the same model grid
(:func:`inference.preprocessing.resample_to_geometry`), and stored as
``case_NNNNN.npz`` (``image`` float16, ``lesion`` uint8 = round(255 * target),
``label`` int) in a cache directory whose ``cache.json`` records the grid and
the source. This module needs numpy/scipy/nibabel only (no torch).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.codes import CLASS_KEYS
from inference.errors import InferenceError
from inference.geometry import Geometry
from inference.manifest import Manifest
from inference.phantom.nifti import LPS_TO_RAS, nifti_affine
from inference.preprocessing import prepare_input, resample_to_geometry

LOGGER = logging.getLogger(__name__)

__all__ = [
    "CLASS_KEYS",
    "DatasetError",
    "Case",
    "DatasetCase",
    "CacheArrays",
    "geometry_from_affine",
    "load_nifti",
    "save_nifti",
    "read_dataset",
    "write_dataset",
    "case_seed",
    "phantom_label",
    "phantom_case",
    "iter_phantom_cases",
    "iter_dataset_cases",
    "load_dataset_case",
    "dataset_case_loaders",
    "prepare_case",
    "build_cache",
    "default_cache_workers",
    "load_cache",
]

#: LPS <-> RAS (its own inverse) on 3-vectors.
_LPS_FROM_RAS = LPS_TO_RAS[:3, :3]
CACHE_FORMAT_VERSION = 1


class DatasetError(InferenceError):
    """A dataset directory, its ``dataset.json`` or a cache is unusable."""


@dataclass(frozen=True)
class Case:
    """One training scan on its own grid.

    Attributes
    ----------
    case_id: str
        Identifier (file stem or ``phantom-<seed>``); never PHI.
    hu: numpy.ndarray
        HU volume ``[k, i, j]``.
    lesion_mask: numpy.ndarray
        Boolean lesion mask, same shape.
    geometry: Geometry
        Geometry of both arrays.
    label: str
        One of :data:`CLASS_KEYS`.
    """

    case_id: str
    hu: np.ndarray
    lesion_mask: np.ndarray
    geometry: Geometry
    label: str


@dataclass(frozen=True)
class DatasetCase:
    """One entry of ``dataset.json`` (paths resolved)."""

    case_id: str
    image: Path
    label_path: Path | None
    label: str


@dataclass(frozen=True)
class CacheArrays:
    """A loaded cache: every case on the model grid.

    Attributes
    ----------
    images: numpy.ndarray
        ``float16`` ``[N, D, H, W]`` normalised model inputs.
    lesions: numpy.ndarray
        ``uint8`` ``[N, D, H, W]`` soft lesion targets times 255.
    labels: numpy.ndarray
        ``int64`` ``[N]`` class indices into :data:`CLASS_KEYS`.
    case_ids: tuple[str, ...]
    meta: dict
        The cache's ``cache.json``.
    """

    images: np.ndarray
    lesions: np.ndarray
    labels: np.ndarray
    case_ids: tuple[str, ...]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ----------------------------------------------------------------------
# NIfTI <-> Geometry


def _triple(vector: np.ndarray) -> tuple[float, float, float]:
    return (float(vector[0]), float(vector[1]), float(vector[2]))


def geometry_from_affine(affine: np.ndarray, shape_xyz: Sequence[int]) -> Geometry:
    """The LPS geometry of a NIfTI volume transposed to ``[k, i, j]``.

    The NIfTI array is indexed ``[x, y, z]``; deepsc-node uses its transpose
    ``[z, y, x]`` = ``[slice, row, column]``, so the column index is the
    NIfTI ``x`` axis and the row index the ``y`` axis.

    Parameters
    ----------
    affine: numpy.ndarray
        4x4 voxel-to-RAS matrix (``nibabel`` ``img.affine``).
    shape_xyz: Sequence[int]
        Shape of the NIfTI array (3 dimensions).

    Returns
    -------
    Geometry

    Raises
    ------
    ValueError
        If the shape is not 3D or the axes are not orthogonal.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or len(shape_xyz) != 3:
        raise ValueError('Arguments "affine" (4x4) and "shape_xyz" (3 numbers) are required.')
    axes = _LPS_FROM_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError('Argument "affine" has a zero-length axis.')
    directions = axes / spacing
    return Geometry(
        shape=(int(shape_xyz[2]), int(shape_xyz[1]), int(shape_xyz[0])),
        spacing=(float(spacing[2]), float(spacing[1]), float(spacing[0])),
        origin=_triple(_LPS_FROM_RAS @ affine[:3, 3]),
        row_direction=_triple(directions[:, 0]),
        column_direction=_triple(directions[:, 1]),
        slice_direction=_triple(directions[:, 2]),
    )


def load_nifti(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a 3D NIfTI file as a ``[k, i, j]`` array and its geometry.

    Raises
    ------
    DatasetError
        If the file cannot be read or is not 3D.
    """
    import nibabel

    try:
        image: Any = nibabel.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (OSError, ValueError, nibabel.filebasedimages.ImageFileError) as exc:
        raise DatasetError(f"cannot read NIfTI file {path}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{path} should hold a 3D volume, it has shape {data.shape}")
    geometry = geometry_from_affine(image.affine, data.shape)
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0))), geometry


def save_nifti(array: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write a ``[k, i, j]`` array with its geometry as NIfTI (RAS affine)."""
    import nibabel

    if tuple(array.shape) != geometry.shape:
        raise ValueError(
            f'Argument "array" has shape {array.shape}, the geometry says {geometry.shape}.'
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nibabel.Nifti1Image(np.transpose(array, (2, 1, 0)), nifti_affine(geometry))
    image.header.set_xyzt_units("mm")
    nibabel.save(image, str(path))
    return path


# ----------------------------------------------------------------------
# dataset.json


def read_dataset(directory: str | Path) -> list[DatasetCase]:
    """Read and validate ``dataset.json`` of a dataset directory.

    Parameters
    ----------
    directory: str | Path
        The dataset directory (see the module docstring for the layout).

    Returns
    -------
    list[DatasetCase]

    Raises
    ------
    DatasetError
        Naming the field or file at fault.
    """
    directory = Path(directory)
    path = directory / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: should be a JSON object")
    classes = data.get("classes", list(CLASS_KEYS))
    if list(classes) != list(CLASS_KEYS):
        raise DatasetError(f'dataset.json field "classes" should be {list(CLASS_KEYS)}')
    entries = data.get("training")
    if not isinstance(entries, list) or not entries:
        raise DatasetError('dataset.json field "training" should be a non-empty list')
    cases = []
    for index, entry in enumerate(entries):
        where = f'dataset.json field "training[{index}]'
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DatasetError(f'{where}.image" should be a path')
        label = entry.get("class")
        if label not in CLASS_KEYS:
            raise DatasetError(f'{where}.class" should be one of {CLASS_KEYS}')
        image = (directory / entry["image"]).resolve()
        if not image.is_file():
            raise DatasetError(f'{where}.image": file {entry["image"]} not found')
        label_path = None
        if entry.get("label") is not None:
            label_path = (directory / str(entry["label"])).resolve()
            if not label_path.is_file():
                raise DatasetError(f'{where}.label": file {entry["label"]} not found')
        elif label != "no_pneumonia":
            raise DatasetError(f'{where}.label" is required for a {label} case')
        case_id = image.name.split(".")[0]
        cases.append(DatasetCase(case_id=case_id, image=image, label_path=label_path, label=label))
    declared = data.get("numTraining")
    if declared is not None and declared != len(cases):
        LOGGER.warning("dataset.json numTraining=%s but %d cases are listed", declared, len(cases))
    return cases


def write_dataset(
    directory: str | Path,
    cases: Iterable[Case],
    name: str = "deepsc-phantoms",
    description: str = "Synthetic chest-CT phantoms (deepsc-node).",
) -> Path:
    """Write cases in the dataset layout (NIfTI + ``dataset.json``).

    Parameters
    ----------
    directory: str | Path
        Output directory (created).
    cases: Iterable[Case]
        The scans to write.
    name, description: str, optional
        ``dataset.json`` metadata.

    Returns
    -------
    Path
        Path of ``dataset.json``.
    """
    directory = Path(directory)
    entries = []
    for case in cases:
        if case.label not in CLASS_KEYS:
            raise ValueError(f'Case "{case.case_id}": label should be one of {CLASS_KEYS}.')
        image = f"./imagesTr/{case.case_id}.nii.gz"
        label = f"./labelsTr/{case.case_id}.nii.gz"
        save_nifti(np.asarray(case.hu, dtype=np.int16), case.geometry, directory / image)
        save_nifti(case.lesion_mask.astype(np.uint8), case.geometry, directory / label)
        entries.append({"image": image, "label": label, "class": case.label})
    document = {
        "name": name,
        "description": description,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "lesion"},
        "classes": list(CLASS_KEYS),
        "numTraining": len(entries),
        "training": entries,
        "test": [],
    }
    path = directory / "dataset.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def load_dataset_case(entry: DatasetCase) -> Case:
    """Load one ``dataset.json`` entry (image, mask, class).

    Raises
    ------
    DatasetError
        If a file cannot be read or the mask's grid differs from the image's.
    """
    hu, geometry = load_nifti(entry.image)
    if entry.label_path is None:
        mask = np.zeros(hu.shape, dtype=bool)
    else:
        mask_array, mask_geometry = load_nifti(entry.label_path)
        if mask_geometry.shape != geometry.shape or not np.allclose(
            mask_geometry.affine, geometry.affine, atol=1e-3
        ):
            raise DatasetError(f"case {entry.case_id}: the label grid differs from the image grid")
        mask = mask_array > 0
    return Case(entry.case_id, hu, mask, geometry, entry.label)


def iter_dataset_cases(directory: str | Path) -> Iterator[Case]:
    """Load the cases of a dataset directory one by one."""
    for entry in read_dataset(directory):
        yield load_dataset_case(entry)


def dataset_case_loaders(directory: str | Path) -> list[Callable[[], Case]]:
    """Deferred loaders of a dataset's cases (for :func:`build_cache`)."""
    return [functools.partial(load_dataset_case, entry) for entry in read_dataset(directory)]


# ----------------------------------------------------------------------
# Phantoms


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` of a run seeded ``seed``.

    Derived with :class:`numpy.random.SeedSequence`, so different run seeds
    give unrelated phantoms (training and evaluation seeds never share a
    case unless the run seeds are equal).
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def phantom_label(index: int) -> str:
    """Balanced labels: case ``index`` gets ``CLASS_KEYS[index % 3]``."""
    return CLASS_KEYS[int(index) % len(CLASS_KEYS)]


def phantom_case(
    seed: int,
    index: int,
    matrix: int | None = None,
    slice_thickness: float | None = None,
) -> Case:
    """Generate phantom ``index`` of run ``seed`` (balanced labels).

    Parameters
    ----------
    seed: int
        Run seed.
    index: int
        Case number.
    matrix: int | None, optional
        In-plane matrix; the field of view of the sampled spec is kept
        (:meth:`inference.phantom.PhantomSpec.with_grid`). ``None`` keeps the
        generator's clinical 512 matrix.
    slice_thickness: float | None, optional
        Slice thickness (mm); the scan length is kept. ``None`` keeps the
        sampled thickness.

    Returns
    -------
    Case
    """
    from inference.phantom import generate_phantom, sample_spec

    phantom_seed = case_seed(seed, index)
    spec = sample_spec(phantom_seed, label=phantom_label(index))
    if matrix is not None or slice_thickness is not None:
        spec = spec.with_grid(matrix=matrix, slice_thickness=slice_thickness)
    phantom = generate_phantom(spec)
    return Case(
        case_id=f"phantom-{seed}-{index}",
        hu=phantom.hu,
        lesion_mask=np.asarray(phantom.lesion_mask, dtype=bool),
        geometry=phantom.geometry,
        label=str(phantom.label),
    )


def iter_phantom_cases(
    seed: int,
    indices: Iterable[int],
    matrix: int | None = None,
    slice_thickness: float | None = None,
) -> Iterator[Callable[[], Case]]:
    """Deferred phantoms ``indices`` of run ``seed`` (for :func:`build_cache`).

    Each item is a zero-argument callable that generates its phantom, so
    cached cases are never regenerated.
    """
    for index in indices:
        yield functools.partial(
            phantom_case, seed, index, matrix=matrix, slice_thickness=slice_thickness
        )


# ----------------------------------------------------------------------
# Cache


def prepare_case(case: Case, manifest: Manifest) -> tuple[np.ndarray, np.ndarray, int]:
    """A case on the model grid: ``(image f16, lesion u8, label index)``.

    The image is :func:`~inference.preprocessing.prepare_input` (exactly what
    the node feeds the model); the target is the lesion mask resampled onto
    the same grid (fraction of lesion per model voxel, times 255).
    """
    prepared = prepare_input(case.hu, case.geometry, manifest)
    target = resample_to_geometry(
        case.lesion_mask.astype(np.float32), case.geometry, prepared.geometry
    )
    image = prepared.tensor[0, 0].astype(np.float16)
    lesion = np.rint(np.clip(target, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, lesion, CLASS_KEYS.index(case.label)


def _cache_meta(manifest: Manifest, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "grid": {
            "shape": list(manifest.grid.shape),
            "spacing_mm": list(manifest.grid.spacing_mm),
            "placement": manifest.grid.placement,
            "fill_hu": manifest.grid.fill_hu,
        },
        "intensity": {
            "clip_hu": list(manifest.intensity.clip_hu),
            "offset_hu": manifest.intensity.offset_hu,
            "scale_hu": manifest.intensity.scale_hu,
        },
        "classes": list(CLASS_KEYS),
        "source": source,
    }


#: Thread-pool variables set to 1 for the processes of a parallel cache build:
#: each worker generates one scan at a time, and N workers with N BLAS/OpenMP
#: threads each oversubscribe the cores (a spinning OpenBLAS pool makes that
#: many times slower than one worker).
SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_cache_workers() -> int:
    """Processes for a cache build: one per core, at most 4 (memory of full-size scans)."""
    return max(1, min(4, os.cpu_count() or 1))


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Set :data:`SINGLE_THREAD_ENV` to 1 while worker processes are started."""
    saved = {name: os.environ.get(name) for name in SINGLE_THREAD_ENV}
    os.environ.update({name: "1" for name in SINGLE_THREAD_ENV})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _cache_case(path: Path, case: Case | Callable[[], Case], manifest: Manifest) -> str:
    """Prepare one case and write it to ``path`` atomically; returns its id."""
    if callable(case):
        case = case()
    start = time.perf_counter()
    image, lesion, label = prepare_case(case, manifest)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, image=image, lesion=lesion, label=np.int64(label), case_id=case.case_id)
    tmp.replace(path)
    LOGGER.debug("cached %s in %.2f s", case.case_id, time.perf_counter() - start)
    return case.case_id


def _cache_in_processes(
    pending: Iterable[tuple[int, Path, Case | Callable[[], Case]]],
    manifest: Manifest,
    workers: int,
    progress: Callable[[int, str], None] | None,
) -> None:
    """:func:`_cache_case` for ``pending`` in ``workers`` spawned processes.

    The first failure cancels the cases not started yet and is raised once
    the running ones have finished (their files are complete: a resumed build
    keeps them).
    """
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        with _single_threaded_children():  # the workers start on submit
            futures = {
                pool.submit(_cache_case, path, case, manifest): number
                for number, path, case in pending
            }
        for future in as_completed(futures):
            case_id = future.result()
            if progress is not None:
                progress(futures[future], case_id)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def build_cache(
    cases: Iterable[Case | Callable[[], Case]],
    cache_dir: str | Path,
    manifest: Manifest,
    source: dict[str, Any],
    progress: Callable[[int, str], None] | None = None,
    workers: int = 1,
) -> Path:
    """Write every case onto the model grid in ``cache_dir``.

    Cases already present (same file name) are kept, so an interrupted cache
    build resumes. ``cache.json`` must agree with ``manifest`` and
    ``source`` when the directory already holds a cache.

    Parameters
    ----------
    cases: Iterable[Case | Callable[[], Case]]
        Scans in order; case ``n`` is written to ``case_{n:05d}.npz``. A
        zero-argument callable is called only when its case is not cached
        yet (so a resumed build does not regenerate phantoms).
    cache_dir: str | Path
        Directory (created).
    manifest: Manifest
        Grid and intensity of the model.
    source: dict
        What the cases are (recorded in ``cache.json``).
    progress: Callable[[int, str], None] | None, optional
        Called after each case with its number and id (in the order the
        cases finish when ``workers > 1``).
    workers: int, optional
        Processes that generate and prepare cases (default 1: this
        process). More than one needs picklable cases, such as those of
        :func:`iter_phantom_cases` and :func:`dataset_case_loaders`; each
        worker runs its numerical libraries with one thread. The files are
        the same whatever the number of workers.

    Returns
    -------
    Path
        ``cache_dir``.

    Raises
    ------
    DatasetError
        If an existing cache was built for another grid or source.
    ValueError
        If ``workers`` is not a positive integer.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError('Argument "workers" should be a positive integer.')
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = _cache_meta(manifest, source)
    meta_path = cache_dir / "cache.json"
    if meta_path.exists():
        existing = json.loads(meta_path.read_text(encoding="utf-8"))
        for key in ("grid", "intensity", "source"):
            if existing.get(key) != json.loads(json.dumps(meta[key])):
                raise DatasetError(
                    f'cache {cache_dir} was built with another "{key}"; use another directory'
                )
    else:
        meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    paths = (
        (number, cache_dir / f"case_{number:05d}.npz", case) for number, case in enumerate(cases)
    )
    pending = ((number, path, case) for number, path, case in paths if not path.exists())
    if workers > 1:
        _cache_in_processes(pending, manifest, workers, progress)
        return cache_dir
    for number, path, case in pending:
        case_id = _cache_case(path, case, manifest)
        if progress is not None:
            progress(number, case_id)
    return cache_dir


def load_cache(cache_dir: str | Path, limit: int | None = None) -> CacheArrays:
    """Load a cache into memory.

    Parameters
    ----------
    cache_dir: str | Path
        Directory written by :func:`build_cache`.
    limit: int | None, optional
        Load only the first ``limit`` cases.

    Returns
    -------
    CacheArrays

    Raises
    ------
    DatasetError
        If the directory holds no cache.
    """
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / "cache.json"
    if not meta_path.is_file():
        raise DatasetError(f"{cache_dir} holds no cache.json")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    files = sorted(cache_dir.glob("case_[0-9][0-9][0-9][0-9][0-9].npz"))
    if limit is not None:
        files = files[: int(limit)]
    if not files:
        raise DatasetError(f"{cache_dir} holds no cached case")
    shape = tuple(meta["grid"]["shape"])
    images = np.empty((len(files), *shape), dtype=np.float16)
    lesions = np.empty((len(files), *shape), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    case_ids = []
    for n, path in enumerate(files):
        with np.load(path) as data:
            images[n] = data["image"]
            lesions[n] = data["lesion"]
            labels[n] = int(data["label"])
            case_ids.append(str(data["case_id"]))
    return CacheArrays(images, lesions, labels, tuple(case_ids), meta)
