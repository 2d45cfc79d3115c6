"""Helpers for the orchestration tests: small CT series, a tiny model, node settings.

Anyone may use these helpers::

    from tests.node_fixtures import write_chest_series, node_settings, wait_until

    paths = write_chest_series(tmp_path / "ct", slices=24)      # a chest-like series
    settings = node_settings(tmp_path, model_dir=tiny_model(tmp_path))

The series are small synthetic chest phantoms (:mod:`inference.phantom`,
written by :func:`inference.phantom.dicom.write_dicom_series`: CT Image
Storage, no real patient). The tiny model (``tests.onnx_fixtures.band_model_dir``)
is a closed-form ONNX graph: it tests the runtime, not the model.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from config import Destination, HTTPSettings, RetryPolicy, SelectionRules, Settings
from inference.phantom import generate_phantom, sample_spec
from inference.phantom.dicom import write_dicom_series
from pacs_node.receive import ReceivedInstance
from storage import (
    create_database_engine,
    make_session_factory,
    result_summary,
    upgrade_database,
)
from tests.dicom_fixtures import make_ct_dataset, wait_for_port, write_dataset
from tests.onnx_fixtures import band_model_dir
from tests.peers import PEER_ENV, free_port, require_binary

__all__ = [
    "assert_result_kinds",
    "job_summary",
    "outline_expected",
    "Clock",
    "ct_series",
    "PHANTOM_SLICE_THICKNESS",
    "migrated_database",
    "chest_datasets",
    "node_settings",
    "received_instance",
    "storescp_on",
    "tiny_model",
    "wait_until",
    "write_chest_series",
    "write_datasets",
]

T = TypeVar("T")

#: Grid of the test phantoms: small and fast, thick slices like the real 8 mm series.
PHANTOM_MATRIX = 64
PHANTOM_PIXEL_SPACING = 6.0
PHANTOM_SLICE_THICKNESS = 8.0


def write_chest_series(
    folder: Path,
    *,
    slices: int = 24,
    seed: int = 3,
    label: str = "covid19",
    study_instance_uid: str | None = None,
) -> list[Path]:
    """A small synthetic chest CT series (``inference.phantom``) written to `folder`.

    Parameters
    ----------
    folder: pathlib.Path
        Output folder (created).
    slices: int
        Number of slices (8 mm apart, 64 x 64 pixels of 6 mm).
    seed, label: int, str
        The phantom (see :func:`inference.phantom.sample_spec`).
    study_instance_uid: str | None
        Study UID; generated when ``None``. Series and SOP UIDs are always new.

    Returns
    -------
    list[pathlib.Path]
        The files, in Instance Number order.
    """
    spec = dataclasses.replace(
        sample_spec(seed, label),
        matrix=PHANTOM_MATRIX,
        pixel_spacing=PHANTOM_PIXEL_SPACING,
        n_slices=slices,
        slice_thickness=PHANTOM_SLICE_THICKNESS,
    )
    return write_dicom_series(
        generate_phantom(spec), folder, study_instance_uid=study_instance_uid
    )


def chest_datasets(**kwargs: Any) -> list[Dataset]:
    """:func:`write_chest_series` read back as pydicom datasets (with pixel data).

    Returns
    -------
    list[pydicom.Dataset]
        CT Image Storage datasets with ``file_meta``, in Instance Number order.
    """
    with tempfile.TemporaryDirectory() as folder:
        return [pydicom.dcmread(path) for path in write_chest_series(Path(folder), **kwargs)]


def ct_series(count: int = 24, *, thickness: float = 2.5, **kwargs: Any) -> list[Dataset]:
    """`count` small axial CT slices of one series, `thickness` mm apart (headers + pixels).

    Parameters
    ----------
    count: int
        Number of slices.
    thickness: float
        Slice thickness and spacing in mm.
    **kwargs
        Passed to :func:`tests.dicom_fixtures.make_ct_dataset`.

    Returns
    -------
    list[pydicom.Dataset]
        Datasets with ``file_meta``.
    """
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    return [
        make_ct_dataset(
            instance_number=number,
            slice_thickness=thickness,
            study_instance_uid=study,
            series_instance_uid=series,
            frame_of_reference_uid=frame,
            **kwargs,
        )
        for number in range(1, count + 1)
    ]


class Clock:
    """A settable, timezone-aware clock for the node's components.

    Parameters
    ----------
    start: datetime.datetime
        The time it shows first.
    """

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward by `seconds`."""
        self.now += timedelta(seconds=seconds)

    def at(self, seconds: float) -> None:
        """Show `start` + `seconds`."""
        self.now = self.start + timedelta(seconds=seconds)


def received_instance(ds: Dataset, calling_ae: str = "MODALITY") -> ReceivedInstance:
    """A ReceivedInstance as the C-STORE handler builds it (header + Part 10 bytes)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    encoded = buffer.getvalue()
    header = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True)
    return ReceivedInstance(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        calling_ae_title=calling_ae,
        peer_address="127.0.0.1",
        dataset=header,
        encoded=encoded,
    )


def write_datasets(folder: Path, datasets: Sequence[Dataset], prefix: str = "ct") -> list[Path]:
    """Write datasets as ``folder/<prefix>-NNN.dcm``; returns the paths in order."""
    return [
        write_dataset(ds, folder / f"{prefix}-{index:03d}.dcm")
        for index, ds in enumerate(datasets, start=1)
    ]


def tilt(datasets: Sequence[Dataset], degrees: float, start: int) -> list[Dataset]:
    """Copies where images from `start` on are rotated by `degrees` about the x axis."""
    angle = np.deg2rad(degrees)
    out = [copy.deepcopy(ds) for ds in datasets]
    for ds in out[start:]:
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, round(float(np.cos(angle)), 6),
                                      round(float(np.sin(angle)), 6)]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return out


def tiny_model(folder: Path) -> Path:
    """A tiny ONNX model directory (band graph, 16x32x32 grid) in ``folder/model``."""
    return band_model_dir(folder / "model", shape=(16, 32, 32), spacing=(10.0, 12.0, 12.0))


def node_settings(
    tmp_path: Path,
    *,
    model_dir: Path,
    port: int,
    destinations: Sequence[Destination] = (),
    quiet_time: float = 0.5,
    min_slices: int = 20,
    initial_backoff: float = 0.5,
    max_backoff: float = 1.0,
    **overrides: Any,
) -> Settings:
    """Settings of a node for tests: data in ``tmp_path/data``, 127.0.0.1, short timers.

    The HTTP API listens on a free port (not the default 8080: tests run in parallel).
    """
    values: dict[str, Any] = {
        "ae_title": "DEEPSC",
        "port": port,
        "bind_address": "127.0.0.1",
        "data_dir": tmp_path / "data",
        "model_dir": model_dir,
        "providers": ("CPUExecutionProvider",),
        "quiet_time": quiet_time,
        "destinations": tuple(destinations),
        "selection": SelectionRules(min_slices=min_slices),
        "export_retry": RetryPolicy(initial_backoff=initial_backoff, max_backoff=max_backoff),
        "log_level": "DEBUG",
        "http": HTTPSettings(port=free_port()),
    }
    values.update(overrides)
    return Settings(**values)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def read_header(path: Path) -> Dataset:
    """The header of a DICOM file (no pixel data)."""
    return pydicom.dcmread(path, stop_before_pixels=True)



@contextlib.contextmanager
def migrated_database(folder: Path) -> Iterator[sessionmaker[Session]]:
    """Session factory of a migrated SQLite database ``folder/node.sqlite3``."""
    engine = create_database_engine(f"sqlite:///{folder / 'node.sqlite3'}")
    try:
        upgrade_database(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@contextlib.contextmanager
def storescp_on(folder: Path, port: int, ae_title: str = "STORESCP") -> Iterator[Path]:
    """DCMTK ``storescp`` on a given port, writing to `folder` (a destination coming up).

    Yields
    ------
    pathlib.Path
        `folder` (created).
    """
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [require_binary("storescp"), "-aet", ae_title, "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=PEER_ENV,
    )
    try:
        wait_for_port(port, process)
        yield folder
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def outline_expected(summary: Mapping[str, Any] | None) -> bool:
    """Whether a job with this recorded summary gets the outline report: a lesion
    reaches :data:`pacs_node.results.sr_planar.MIN_PLANAR_VOLUME_ML`."""
    from pacs_node.results.sr_planar import MIN_PLANAR_VOLUME_ML

    assert summary is not None, "the job has no recorded result summary"
    return any(lesion["volume_ml"] >= MIN_PLANAR_VOLUME_ML for lesion in summary["lesions"])


def job_summary(database_url: str, job_id: int) -> dict[str, Any] | None:
    """The recorded result summary of a job in a node's database (read once)."""
    engine = create_database_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return result_summary(session, job_id)
    finally:
        engine.dispose()


def assert_result_kinds(kinds: Sequence[str], summary: Mapping[str, Any] | None) -> None:
    """The recorded result kinds of a processed job, in order.

    SEG, SR, then the outline report exactly when a lesion reaches
    :data:`pacs_node.results.sr_planar.MIN_PLANAR_VOLUME_ML` (from the job's
    recorded summary), then one or more Secondary Capture images.
    """
    significant = outline_expected(summary)
    head = ["seg", "sr", "outline"] if significant else ["seg", "sr"]
    kinds = list(kinds)
    assert kinds[: len(head)] == head and set(kinds[len(head):]) == {"sc"}, (kinds, significant)
