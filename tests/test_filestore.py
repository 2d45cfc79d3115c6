"""Tests of storage.filestore: UID paths, atomic writes, durability, cleanup."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, cast

import pydicom
import pytest
from sqlalchemy.orm import Session

from storage import (
    InstanceAttributes,
    InstanceOutcome,
    InstanceStore,
    InvalidUIDError,
    ResultStore,
    StoredFile,
    is_valid_uid,
    record_instance,
    series_instances,
    validate_uid,
)
from storage.filestore import sha256_of_file


REPO_ROOT = Path(__file__).resolve().parent.parent
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"
SOP = "1.2.826.0.1.3680043.8.498.1.2.3"

INVALID_UIDS = [
    "../x",
    "",
    "1" * 65,
    "1.2.a",
    "1.02.3",
    "1..2",
    ".1.2",
    "1.2.",
    "1.2\n",
    "1.2/3",
    "1.2 ",
    "/etc/passwd",
    None,
    12,
]


class FailingReader(io.RawIOBase):
    """A source that yields `good` bytes, then raises (a peer dropping mid-way)."""

    def __init__(self, good: bytes) -> None:
        self._good = good
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._done:
            self._done = True
            return self._good
        raise ConnectionResetError("peer went away")


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "instances")


class TestUIDValidation:
    @pytest.mark.parametrize("uid", INVALID_UIDS, ids=repr)
    def test_invalid_uid_is_a_storage_error_never_a_path(
        self, store: InstanceStore, uid: object
    ) -> None:
        cases: list[tuple[Any, Any, Any]] = [
            (uid, SERIES, SOP),
            (STUDY, uid, SOP),
            (STUDY, SERIES, uid),
        ]
        for study, series, sop in cases:
            with pytest.raises(InvalidUIDError) as info:
                store.path_for(study, series, sop)
            assert "UID" in str(info.value)
            with pytest.raises(InvalidUIDError):
                store.write(study, series, sop, b"data")
        assert not store.root.exists()
        assert not is_valid_uid(uid)

    @pytest.mark.parametrize(
        "uid",
        ["0", "1.2.840.10008.1.2.1", "2.25.329800735698586629295641978511506172918", "1" * 64],
    )
    def test_valid_uids(self, uid: str) -> None:
        assert validate_uid(uid, "uid") == uid

    def test_error_names_the_argument(self, store: InstanceStore) -> None:
        with pytest.raises(InvalidUIDError, match='"sop_uid"') as info:
            store.path_for(STUDY, SERIES, "1.2.a")
        assert info.value.argument == "sop_uid"
        assert isinstance(info.value, ValueError)


class TestPaths:
    def test_layout(self, tmp_path: Path) -> None:
        store = InstanceStore.in_data_dir(tmp_path)
        assert (
            store.path_for(STUDY, SERIES, SOP)
            == tmp_path / "instances" / STUDY / SERIES / f"{SOP}.dcm"
        )
        results = ResultStore.in_data_dir(tmp_path)
        assert (
            results.path_for(STUDY, SERIES, SOP)
            == tmp_path / "results" / STUDY / SERIES / f"{SOP}.dcm"
        )

    def test_relative_path(self, store: InstanceStore) -> None:
        path = store.path_for(STUDY, SERIES, SOP)
        assert store.relative_path(path) == f"{STUDY}/{SERIES}/{SOP}.dcm"
        with pytest.raises(ValueError):
            store.relative_path(Path("/elsewhere/x.dcm"))

    def test_root_must_be_a_path(self) -> None:
        with pytest.raises(TypeError, match='"root"'):
            InstanceStore(42)  # type: ignore[arg-type]


class TestWrite:
    def test_write_bytes(self, store: InstanceStore) -> None:
        data = os.urandom(3000)
        stored = store.write(STUDY, SERIES, SOP, data)
        assert stored == StoredFile(
            store.path_for(STUDY, SERIES, SOP), hashlib.sha256(data).hexdigest(), len(data)
        )
        assert stored.path.read_bytes() == data
        assert store.read(STUDY, SERIES, SOP) == data
        with store.open(STUDY, SERIES, SOP) as stream:
            assert stream.read() == data
        assert sha256_of_file(stored.path) == stored.sha256
        assert list(store.temporary_files()) == []

    def test_write_file_like_in_chunks(
        self, store: InstanceStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("storage.filestore.CHUNK_SIZE", 1000)
        data = os.urandom(4500)
        stored = store.write(STUDY, SERIES, SOP, io.BytesIO(data))
        assert stored.size == 4500
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert stored.path.read_bytes() == data

    def test_write_real_ct_file(self, store: InstanceStore, shared_data: Path) -> None:
        source = shared_data / "ct" / "lung-pet-ct-dx-a0002" / "1-01.dcm"
        dataset = pydicom.dcmread(source, stop_before_pixels=True)
        with source.open("rb") as stream:
            stored = store.write(
                dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID, stream
            )
        assert stored.sha256 == sha256_of_file(source)
        assert pydicom.dcmread(stored.path).SOPInstanceUID == dataset.SOPInstanceUID

    def test_replace_existing(self, store: InstanceStore) -> None:
        store.write(STUDY, SERIES, SOP, b"old")
        stored = store.write(STUDY, SERIES, SOP, b"new content")
        assert stored.path.read_bytes() == b"new content"

    def test_rejects_text(self, store: InstanceStore) -> None:
        with pytest.raises(TypeError, match='"data"'):
            store.write(STUDY, SERIES, SOP, "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match='"data"'):
            store.write(STUDY, SERIES, SOP, io.StringIO("text"))  # type: ignore[arg-type]
        assert not store.exists(STUDY, SERIES, SOP)
        assert list(store.temporary_files()) == []

    def test_failure_mid_way_leaves_no_partial_file(self, store: InstanceStore) -> None:
        with pytest.raises(ConnectionResetError):
            store.write(STUDY, SERIES, SOP, cast(BinaryIO, FailingReader(b"x" * 100)))
        assert not store.path_for(STUDY, SERIES, SOP).exists()
        assert list(store.temporary_files()) == []
        assert list(store.path_for(STUDY, SERIES, SOP).parent.iterdir()) == []

    def test_failure_mid_way_keeps_previous_file(self, store: InstanceStore) -> None:
        store.write(STUDY, SERIES, SOP, b"previous complete file")
        with pytest.raises(ConnectionResetError):
            store.write(STUDY, SERIES, SOP, cast(BinaryIO, FailingReader(b"partial")))
        assert store.read(STUDY, SERIES, SOP) == b"previous complete file"
        assert list(store.temporary_files()) == []

    def test_fsync_policy(self, store: InstanceStore, monkeypatch: pytest.MonkeyPatch) -> None:
        synced: list[int] = []
        real_fsync = os.fsync

        def counting_fsync(fd: int) -> None:
            synced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", counting_fsync)
        store.write(STUDY, SERIES, SOP, b"a")
        # file + series dir (rename) + root/study/series dirs created (each in its parent)
        assert len(synced) >= 5
        synced.clear()
        store.write(STUDY, SERIES, SOP, b"b")
        assert len(synced) == 2  # file and directory
        synced.clear()
        InstanceStore(store.root, fsync=False).write(STUDY, SERIES, SOP, b"c")
        assert synced == []

    def test_killed_writer_leaves_only_a_temporary_file(self, store: InstanceStore) -> None:
        script = textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from storage.filestore import InstanceStore

            class Slow:
                sent = False
                def read(self, size=-1):
                    if not self.sent:
                        self.sent = True
                        print("started", flush=True)
                        return b"x" * 1000
                    time.sleep(60)
                    return b""

            InstanceStore(Path({str(store.root)!r})).write({STUDY!r}, {SERIES!r}, {SOP!r}, Slow())
            """)
        process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO_ROOT, text=True
        )
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "started"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
        assert not store.path_for(STUDY, SERIES, SOP).exists()
        leftovers = list(store.temporary_files())
        assert len(leftovers) == 1
        assert store.remove_temporary_files(older_than=3600) == 0  # young: maybe still written
        assert store.remove_temporary_files(older_than=0) == 1
        assert list(store.temporary_files()) == []


class TestDelete:
    def test_delete(self, store: InstanceStore) -> None:
        store.write(STUDY, SERIES, SOP, b"a")
        assert store.exists(STUDY, SERIES, SOP)
        assert store.delete(STUDY, SERIES, SOP) is True
        assert not store.exists(STUDY, SERIES, SOP)
        assert store.delete(STUDY, SERIES, SOP) is False
        with pytest.raises(FileNotFoundError):
            store.read(STUDY, SERIES, SOP)

    def test_remove_unrecorded_files_keeps_recorded_young_and_temporary_ones(
        self, store: InstanceStore
    ) -> None:
        recorded = store.write(STUDY, SERIES, SOP, b"recorded").path
        orphan = store.write(STUDY, SERIES, SOP + ".1", b"orphan").path
        young = store.write(STUDY, SERIES, SOP + ".2", b"young").path
        temporary = recorded.parent / ".tmp-x.part"
        temporary.write_bytes(b"part")
        old = time.time() - 3600
        for path in (recorded, orphan, temporary):
            os.utime(path, (old, old))
        removed = store.remove_unrecorded_files({store.relative_path(recorded)}, older_than=60)
        assert removed == 1
        assert not orphan.exists()
        assert recorded.read_bytes() == b"recorded"
        assert young.exists() and temporary.exists()
        assert sorted(p.name for p in store.stored_files()) == sorted([recorded.name, young.name])


def test_written_file_recorded_in_database(
    store: InstanceStore, db_session: Session, shared_data: Path
) -> None:
    """The SCP's sequence on both back ends: write atomically, then record."""
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    folder = shared_data / "ct" / "lung-pet-ct-dx-a0002"
    sources = sorted(folder.glob("*.dcm"))[:3]
    for source in sources:
        dataset = pydicom.dcmread(source, stop_before_pixels=True)
        stored = store.write(
            dataset.StudyInstanceUID,
            dataset.SeriesInstanceUID,
            dataset.SOPInstanceUID,
            source.read_bytes(),
        )
        attributes = InstanceAttributes.from_dataset(
            dataset,
            file_path=store.relative_path(stored.path),
            sha256=stored.sha256,
            size=stored.size,
            calling_ae_title="STORESCU",
        )
        assert attributes.transfer_syntax_uid == dataset.file_meta.TransferSyntaxUID
        assert "ORIGINAL" in attributes.image_type
        recorded = record_instance(db_session, attributes, now)
        assert recorded.outcome == InstanceOutcome.STORED
    instances = series_instances(db_session, str(dataset.SeriesInstanceUID))
    assert len(instances) == 3
    for instance in instances:
        path = store.root / instance.file_path
        assert sha256_of_file(path) == instance.sha256
        assert path.stat().st_size == instance.size
