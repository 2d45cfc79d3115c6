"""Instance and result files, written atomically under paths built from UIDs.

Data directory layout (``Settings.data_dir``)::

    <data_dir>/
        deepsc-node.sqlite3          default SQLite database (+ -wal, -shm)
        instances/                   InstanceStore: what peers sent
            <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
        results/                     ResultStore: SEG, SR (later SC, GSPS) the node wrote
            <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

Every path component is a UID checked by :func:`storage.uids.validate_uid`
(digits and dots only, at most 64 characters), so no peer-supplied value can
leave the store root; an invalid UID raises
:class:`~storage.errors.InvalidUIDError` and never becomes a path.

Atomic writes and the fsync policy
    :meth:`UIDFileStore.write` writes to a temporary file
    (``.tmp-*.part``) in the target's directory, flushes and ``fsync``\\ s
    it, renames it over the target with ``os.replace`` (atomic on POSIX:
    readers see the old or the new file, never a part), then ``fsync``\\ s the
    directory so that the rename itself survives a power loss. Directories
    created for a new study or series are ``fsync``\\ ed in their parent too.
    When :meth:`write` returns, the file is durable; the caller records it in
    the database only after that (a crash in between leaves an unrecorded
    file that a resend overwrites). If writing fails, the temporary file is
    removed and an existing target is left untouched. ``fsync=False`` skips
    the fsyncs (tests, or file systems where the caller accepts the risk).
    Temporary files left by a crash are removed by
    :meth:`UIDFileStore.remove_temporary_files` at start-up, and result
    files written but never recorded (a crash between the write and the
    database commit) by :meth:`UIDFileStore.remove_unrecorded_files`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from storage.uids import validate_uid

LOGGER = logging.getLogger(__name__)

__all__ = ["InstanceStore", "ResultStore", "StoredFile", "UIDFileStore", "sha256_of_file"]

#: Suffix of stored files.
FILE_SUFFIX = ".dcm"
#: Prefix and suffix of temporary files (hidden, never a valid UID file name).
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".part"
#: Bytes copied per read from a file-like source.
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    """A file the store wrote.

    Parameters
    ----------
    path: pathlib.Path
        Absolute path of the file.
    sha256: str
        Hex SHA-256 of its content (64 lower-case characters).
    size: int
        Its size in bytes.
    """

    path: Path
    sha256: str
    size: int


def sha256_of_file(path: Path) -> str:
    """Hex SHA-256 of the file at `path`."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UIDFileStore:
    """Files keyed by (study, series, SOP instance) UID under `root`.

    Parameters
    ----------
    root: pathlib.Path
        Root directory; created on first write.
    fsync: bool
        Make writes durable (see the module docstring). Default ``True``.

    Raises
    ------
    TypeError
        If `root` is not a path.
    """

    def __init__(self, root: Path, fsync: bool = True) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f'Argument "root" should be a path, got {type(root).__name__}')
        self._root = Path(root).absolute()
        self._fsync = bool(fsync)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._root)!r})"

    @property
    def root(self) -> Path:
        """The store's root directory (absolute)."""
        return self._root

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Path of the file of one SOP instance (it need not exist).

        Parameters
        ----------
        study_uid: str
            Study Instance UID (0020,000D).
        series_uid: str
            Series Instance UID (0020,000E).
        sop_uid: str
            SOP Instance UID (0008,0018).

        Returns
        -------
        pathlib.Path
            ``root/<study_uid>/<series_uid>/<sop_uid>.dcm``.

        Raises
        ------
        InvalidUIDError
            If any UID is invalid.
        """
        study = validate_uid(study_uid, "study_uid")
        series = validate_uid(series_uid, "series_uid")
        sop = validate_uid(sop_uid, "sop_uid")
        return self._root / study / series / f"{sop}{FILE_SUFFIX}"

    def relative_path(self, path: Path) -> str:
        """`path` relative to the root, POSIX style (for the database).

        Raises
        ------
        ValueError
            If `path` is not inside the root.
        """
        return Path(path).absolute().relative_to(self._root).as_posix()

    def write(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        data: bytes | bytearray | memoryview | BinaryIO,
    ) -> StoredFile:
        """Write one instance atomically, replacing any previous file.

        Parameters
        ----------
        study_uid, series_uid, sop_uid: str
            The instance's UIDs (validated).
        data: bytes | bytearray | memoryview | BinaryIO
            The content, or a binary file-like object read to its end.

        Returns
        -------
        StoredFile
            Path, SHA-256 and size of what was written.

        Raises
        ------
        InvalidUIDError
            If a UID is invalid (nothing is written).
        TypeError
            If `data` is neither bytes-like nor readable.
        OSError
            If the file system fails; no partial file is left behind.
        """
        path = self.path_for(study_uid, series_uid, sop_uid)
        if not isinstance(data, (bytes, bytearray, memoryview)) and not hasattr(data, "read"):
            raise TypeError(
                'Argument "data" should be bytes or a binary file object, '
                f"got {type(data).__name__}"
            )
        self._make_directories(path.parent)
        digest = hashlib.sha256()
        size = 0
        fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
        temp_path = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as stream:
                for chunk in _chunks(data):
                    stream.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                stream.flush()
                if self._fsync:
                    os.fsync(stream.fileno())
            os.replace(temp_path, path)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        if self._fsync:
            _fsync_directory(path.parent)
        LOGGER.debug("stored %s (%d bytes)", path.name, size)
        return StoredFile(path=path, sha256=digest.hexdigest(), size=size)

    def _make_directories(self, directory: Path) -> None:
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue  # created concurrently
            if self._fsync:
                _fsync_directory(path.parent)

    def exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """Whether the instance's file exists.

        Raises
        ------
        InvalidUIDError
            If a UID is invalid.
        """
        return self.path_for(study_uid, series_uid, sop_uid).is_file()

    def read(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The content of an instance's file.

        Raises
        ------
        InvalidUIDError
            If a UID is invalid.
        FileNotFoundError
            If there is no such file.
        """
        return self.path_for(study_uid, series_uid, sop_uid).read_bytes()

    def open(self, study_uid: str, series_uid: str, sop_uid: str) -> BinaryIO:
        """Open an instance's file for binary reading (caller closes it).

        Raises
        ------
        InvalidUIDError
            If a UID is invalid.
        FileNotFoundError
            If there is no such file.
        """
        return self.path_for(study_uid, series_uid, sop_uid).open("rb")

    def delete(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """Delete an instance's file; empty directories are kept.

        Returns
        -------
        bool
            Whether a file was deleted.

        Raises
        ------
        InvalidUIDError
            If a UID is invalid.
        """
        path = self.path_for(study_uid, series_uid, sop_uid)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        if self._fsync:
            _fsync_directory(path.parent)
        return True

    def temporary_files(self) -> Iterator[Path]:
        """Temporary files under the root (left by interrupted writes)."""
        if not self._root.is_dir():
            return iter(())
        return (p for p in self._root.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}") if p.is_file())

    def remove_temporary_files(self, older_than: float = 60.0) -> int:
        """Remove temporary files older than `older_than` seconds (start-up cleanup).

        A concurrent writer's fresh temporary file is younger and is kept.

        Returns
        -------
        int
            How many files were removed.
        """
        return self._remove_older_than(self.temporary_files(), older_than, "temporary")

    def stored_files(self) -> Iterator[Path]:
        """Stored files under the root (``<study>/<series>/<sop>.dcm``), not temporary ones."""
        if not self._root.is_dir():
            return iter(())
        return (p for p in self._root.glob(f"*/*/*{FILE_SUFFIX}") if p.is_file())

    def remove_unrecorded_files(self, recorded: set[str], older_than: float = 60.0) -> int:
        """Remove stored files whose relative path is not in `recorded` (start-up cleanup).

        For the result store: a crash between writing a job's SEG/SR and
        recording them leaves files that no row names. They were never sent
        (exports come from rows), and the job, re-queued at the restart,
        writes new objects with new UIDs, so these files are only disk space.
        Files younger than `older_than` seconds are kept (a writer may be
        about to record them).

        Parameters
        ----------
        recorded: set[str]
            Relative paths (:meth:`relative_path`) that the database names.
        older_than: float, optional
            Minimum age in seconds of a file to remove.

        Returns
        -------
        int
            How many files were removed.
        """
        unrecorded = (p for p in self.stored_files() if self.relative_path(p) not in recorded)
        return self._remove_older_than(unrecorded, older_than, "unrecorded")

    def _remove_older_than(self, paths: Iterable[Path], older_than: float, kind: str) -> int:
        """Unlink the files of `paths` last modified more than `older_than` seconds ago."""
        limit = time.time() - older_than
        removed = 0
        for path in list(paths):
            try:
                if path.stat().st_mtime <= limit:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            LOGGER.info("removed %d %s file(s) left under %s", removed, kind, self._root)
        return removed


def _chunks(data: bytes | bytearray | memoryview | BinaryIO) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    while True:
        chunk = data.read(CHUNK_SIZE)
        if not chunk:
            return
        if not isinstance(chunk, (bytes, bytearray)):
            raise TypeError(
                'Argument "data" should be a binary file object, '
                f"read() gave {type(chunk).__name__}"
            )
        yield bytes(chunk)


class InstanceStore(UIDFileStore):
    """Received instances: ``<data_dir>/instances`` (see the module docstring)."""

    @classmethod
    def in_data_dir(cls, data_dir: Path, fsync: bool = True) -> InstanceStore:
        """The instance store of a data directory."""
        return cls(Path(data_dir) / "instances", fsync=fsync)


class ResultStore(UIDFileStore):
    """Result objects the node wrote (SEG, SR...): ``<data_dir>/results``."""

    @classmethod
    def in_data_dir(cls, data_dir: Path, fsync: bool = True) -> ResultStore:
        """The result store of a data directory."""
        return cls(Path(data_dir) / "results", fsync=fsync)
