"""Small DICOM objects for tests, and a receiver that writes to a folder.

Anyone may use these helpers::

    from tests.dicom_fixtures import make_ct_dataset, write_ct_series, DirectoryReceiver

    ds = make_ct_dataset(rows=16, columns=16)            # one valid CT slice
    paths = write_ct_series(tmp_path, count=5)           # 5 slices, one series
    sr = make_basic_text_sr("research use only")         # minimal Basic Text SR

Datasets are valid CT Image / Basic Text SR instances (Type 1 and 2
attributes present), small (16x16 pixels by default) and synthetic: no
real patient data.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset as write_dataset_body
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)
from pynetdicom.dsutils import encode_file_meta

from pacs_node.receive import DispositionValues, ReceivedInstance, ReceiveOutcome
from pacs_node.status import StoreStatus
from tests.peers import PEER_ENV, free_port, require_binary

LOGGER = logging.getLogger(__name__)

__all__ = [
    "DirectoryReceiver",
    "RaisingReceiver",
    "dcmtk_storescp",
    "encode_dataset",
    "write_part10_raw",
    "make_basic_text_sr",
    "make_ct_dataset",
    "write_ct_series",
    "write_dataset",
]


def _file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def make_ct_dataset(
    *,
    rows: int = 16,
    columns: int = 16,
    instance_number: int = 1,
    slice_location: float | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slice_thickness: float = 2.5,
    seed: int = 0,
) -> Dataset:
    """One synthetic axial CT slice (CT Image Storage, Explicit VR Little Endian).

    Pixel values are stored unsigned 16-bit with 12 bits stored and a
    rescale of -1024, i.e. HU in [-1024, 3071]: a smooth body-like disc on
    air plus a little noise (deterministic for a `seed`).

    Parameters
    ----------
    rows, columns: int
        Image size.
    instance_number: int
        Instance Number; also sets the z position (``slice_thickness`` apart)
        unless `slice_location` is given.
    slice_location: float | None
        z of Image Position (Patient) in mm.
    study_instance_uid, series_instance_uid, sop_instance_uid, frame_of_reference_uid: str | None
        UIDs; new ones are generated when ``None``.
    pixel_spacing: tuple[float, float]
        Row and column spacing in mm.
    slice_thickness: float
        Slice Thickness in mm.
    seed: int
        Seed of the noise.

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` (Explicit VR Little Endian).
    """
    z = float(slice_location if slice_location is not None else instance_number * slice_thickness)
    sop_instance_uid = sop_instance_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, sop_instance_uid, ExplicitVRLittleEndian)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "deepsc-node tests"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = "synthetic chest"
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYNTH-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.KVP = "120"
    ds.SliceThickness = f"{slice_thickness:g}"
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [-(columns * pixel_spacing[1]) / 2, -(rows * pixel_spacing[0]) / 2, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [f"{pixel_spacing[0]:g}", f"{pixel_spacing[1]:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.AcquisitionNumber = 1
    yy, xx = np.mgrid[0:rows, 0:columns]
    radius = np.hypot((yy - rows / 2) / (rows / 2), (xx - columns / 2) / (columns / 2))
    hu = np.where(radius < 0.8, 40.0, -1000.0)
    hu += np.random.default_rng(seed + instance_number).normal(0.0, 20.0, size=hu.shape)
    stored = np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def make_basic_text_sr(
    text: str = "Research use only, not for diagnosis.",
    *,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A minimal Basic Text SR (one CONTAINER with one TEXT item).

    Parameters
    ----------
    text: str
        The TEXT content item's value.
    study_instance_uid, sop_instance_uid: str | None
        UIDs; generated when ``None``.

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` (Explicit VR Little Endian).
    """
    sop_instance_uid = sop_instance_uid or generate_uid()

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = scheme
        item.CodeMeaning = meaning
        return item

    ds = Dataset()
    ds.file_meta = _file_meta(BasicTextSRStorage, sop_instance_uid, ExplicitVRLittleEndian)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.ContentDate = "20240101"
    ds.ContentTime = "120500"
    ds.AccessionNumber = ""
    ds.Modality = "SR"
    ds.Manufacturer = "deepsc-node tests"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYNTH-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 9002
    ds.InstanceNumber = 1
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence()
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = DicomSequence([code("121071", "DCM", "Finding")])
    item.TextValue = text
    ds.ContentSequence = DicomSequence([item])
    return ds


def write_dataset(ds: Dataset, path: Path, transfer_syntax: str | None = None) -> Path:
    """Write `ds` as a Part 10 file (optionally re-encoded uncompressed).

    Parameters
    ----------
    ds: pydicom.Dataset
        With ``file_meta``.
    path: pathlib.Path
        Destination (parent folders are created).
    transfer_syntax: str | None
        Implicit or Explicit VR Little Endian to re-encode into; ``None``
        keeps ``ds.file_meta.TransferSyntaxUID``.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax is not None:
        syntax = UID(transfer_syntax)
        if syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
            raise ValueError(f'Argument "transfer_syntax" should be uncompressed LE, got {syntax}')
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def encode_dataset(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The data set of `ds` (no file meta) encoded in an uncompressed syntax."""
    syntax = UID(transfer_syntax)
    stream = DicomBytesIO()
    stream.is_little_endian = syntax.is_little_endian
    stream.is_implicit_VR = syntax.is_implicit_VR
    write_dataset_body(stream, ds)
    return stream.getvalue()


def write_part10_raw(
    path: Path,
    dataset_bytes: bytes,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
) -> Path:
    """Write a Part 10 file from raw data set bytes and the given file meta.

    Nothing is checked or synchronised: the file meta may contradict the
    data set (which is the point: peers that send files in chunks, e.g.
    pynetdicom with ``STORE_SEND_CHUNKED_DATASET``, take the C-STORE
    command's UIDs from the file meta).

    Returns
    -------
    pathlib.Path
        `path`.
    """
    meta = _file_meta(sop_class_uid, sop_instance_uid, transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + dataset_bytes)
    return path


def write_ct_series(
    folder: Path, count: int = 3, *, rows: int = 16, columns: int = 16
) -> list[Path]:
    """Write `count` slices of one synthetic CT series as ``folder/ct-NNN.dcm``.

    Returns
    -------
    list[pathlib.Path]
        The files, in slice order.
    """
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = make_ct_dataset(
            rows=rows,
            columns=columns,
            instance_number=number,
            study_instance_uid=study,
            series_instance_uid=series,
            frame_of_reference_uid=frame,
        )
        paths.append(write_dataset(ds, folder / f"ct-{number:03d}.dcm"))
    return paths


class DirectoryReceiver:
    """Test double of the storage-backed receiver: files in a folder.

    Writes ``root/<study>/<series>/<sop instance>.dcm`` atomically (temporary
    file + ``os.replace``) with the received bytes as-is. An instance
    already stored with the same bytes is a ``"duplicate"``, with other
    bytes ``"replaced"``; both answer Success. Thread-safe.

    Parameters
    ----------
    root: pathlib.Path
        Folder to write into (created).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.instances: list[ReceivedInstance] = []
        self._lock = threading.Lock()

    def path_for(self, instance: ReceivedInstance) -> Path:
        """Where `instance` is (or would be) stored."""
        return (
            self.root
            / instance.study_instance_uid
            / instance.series_instance_uid
            / f"{instance.sop_instance_uid}.dcm"
        )

    def receive(self, instance: ReceivedInstance) -> ReceiveOutcome:
        """Write `instance.encoded`; answer stored / duplicate / replaced."""
        path = self.path_for(instance)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            disposition = DispositionValues.STORED
            if path.exists():
                same = path.read_bytes() == instance.encoded
                disposition = DispositionValues.DUPLICATE if same else DispositionValues.REPLACED
            if disposition is not DispositionValues.DUPLICATE:
                handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
                with os.fdopen(handle, "wb") as stream:
                    stream.write(instance.encoded)
                os.replace(temporary, path)
            self.instances.append(instance)
        return ReceiveOutcome(status=StoreStatus.SUCCESS, disposition=disposition)

    def stored_files(self) -> list[Path]:
        """Every stored file, sorted."""
        return sorted(self.root.rglob("*.dcm"))

    def read(self, sop_instance_uid: str) -> pydicom.Dataset:
        """The stored instance with `sop_instance_uid`."""
        for instance in list(self.instances):
            if instance.sop_instance_uid == sop_instance_uid:
                return pydicom.dcmread(self.path_for(instance))
        raise KeyError(sop_instance_uid)


class RaisingReceiver:
    """A receiver that raises `error` for every instance (tests of failure paths).

    Parameters
    ----------
    error: BaseException
        Raised by :meth:`receive`.
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def receive(self, instance: ReceivedInstance) -> ReceiveOutcome:
        """Raise :attr:`error`."""
        self.calls += 1
        raise self.error


def uids_of(paths: Sequence[Path]) -> list[str]:
    """SOP Instance UIDs of DICOM files."""
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def wait_for_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 10.0
) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:`port`.

    Raises
    ------
    RuntimeError
        If `process` exits first or `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"peer exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
            time.sleep(0.05)


@contextlib.contextmanager
def dcmtk_storescp(
    folder: Path, *, ae_title: str = "STORESCP", accept_all: bool = True
) -> Iterator[int]:
    """Run DCMTK ``storescp`` on a free port, writing received files to `folder`.

    Parameters
    ----------
    folder: pathlib.Path
        Output folder (created); files are named ``<modality>.<SOP Instance UID>``.
    ae_title: str
        storescp's AE title.
    accept_all: bool
        ``+xa``: accept every transfer syntax DCMTK knows (default); ``False``:
        storescp's default, uncompressed only.

    Yields
    ------
    int
        The port.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [require_binary("storescp"), "-aet", ae_title, "-od", str(folder)]
    if accept_all:
        args.append("+xa")
    log = open(folder.parent / f"storescp-{port}.log", "wb")
    process = subprocess.Popen(
        [*args, str(port)], stdout=log, stderr=subprocess.STDOUT, env=PEER_ENV
    )
    log.close()
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
