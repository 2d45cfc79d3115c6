"""Real DICOM peers for end-to-end tests: Orthanc (the PACS) and DCMTK tools.

Everything listens on 127.0.0.1 on free ports and is stopped by the test that
started it. A missing peer binary is a test *failure* (CI installs them), not
a skip.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

LOGGER = logging.getLogger(__name__)

ORTHANC_BINARY = "Orthanc"
#: Where Debian's ``orthanc-dicomweb`` package installs the DICOMweb plugin.
ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
#: Environment for peers: without TCP_NODELAY Debian's DCMTK stalls ~45 ms per C-STORE.
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: DCMTK tools that pynetdicom (>= 2) also installs, as Python console scripts of
#: the same name, into the environment's ``bin``: with that directory first on PATH
#: (an activated virtual environment) ``storescu`` would be pynetdicom, not the
#: independent DCMTK peer the tests mean.
SHADOWED_DCMTK_TOOLS = frozenset(
    {"storescu", "storescp", "echoscu", "echoscp", "findscu", "getscu", "movescu"}
)


def _is_script(path: Path) -> bool:
    """Whether `path` is an interpreted script (``#!`` first), not a compiled program."""
    try:
        with path.open("rb") as handle:
            return handle.read(2) == b"#!"
    except OSError:
        return False


def _dcmtk_binary(name: str, directories: Iterable[str]) -> str | None:
    """The first compiled `name` in `directories` (Python console scripts skipped)."""
    for directory in directories:
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK) and candidate.is_file() and not _is_script(candidate):
            return str(candidate)
    return None


def require_binary(name: str) -> str:
    """Path of a peer binary on PATH, in /usr/sbin or beside the running Python (a
    venv's bin: dcmqi's tools); fails the test (never skips) when it is missing.

    A DCMTK tool that pynetdicom shadows (:data:`SHADOWED_DCMTK_TOOLS`) is the first
    compiled one on PATH or in /usr/bin; pynetdicom's script of that name is never used.
    """
    if name in SHADOWED_DCMTK_TOOLS:
        path_dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
        found = _dcmtk_binary(name, [*path_dirs, "/usr/bin", "/usr/sbin"])
        if found is None:
            pytest.fail(f"DCMTK's {name!r} not found (a pynetdicom script of that name does "
                        "not count): install dcmtk (see .ci/run)")
        return found
    candidates = (Path(f"/usr/sbin/{name}"), Path(sys.executable).parent / name)
    path = shutil.which(name) or next((str(c) for c in candidates if c.exists()), None)
    if path is None:
        pytest.fail(f"peer binary {name!r} not found: install it (see .ci/run)")
    return path


def require_orthanc_dicomweb() -> str:
    """Path of Orthanc's DICOMweb plugin; fails the test (never skips) when it is missing."""
    for folder in ORTHANC_PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")):
            return str(path)
    pytest.fail(
        "Orthanc DICOMweb plugin (libOrthancDicomWeb.so) not found in "
        f"{', '.join(ORTHANC_PLUGIN_DIRS)}: install orthanc-dicomweb (see .ci/run)"
    )


class OrthancError(RuntimeError):
    """Orthanc did not start or answered a REST call with an error."""


class Orthanc:
    """An Orthanc process with its own configuration and storage.

    Parameters
    ----------
    workdir: Path
        Folder for the configuration, the database and the log.
    aet: str, optional
        Orthanc's own AE title.
    modalities: dict[str, tuple[str, str, int]] | None, optional
        ``{name: (ae_title, host, port)}`` of DICOM peers Orthanc may send to.
    dicomweb: bool, optional
        Load the ``orthanc-dicomweb`` plugin and serve DICOMweb (QIDO-RS, WADO-RS,
        STOW-RS) under ``/dicom-web/`` with full study and series metadata, as
        OHIF needs it.
    """

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        dicomweb: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.dicomweb = dicomweb
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "orthanc.log"

    # -- lifecycle -----------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Orthanc configuration (JSON) for this instance."""
        storage = self.workdir / "storage"
        config: dict[str, Any] = {
            "Name": "deepsc-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": {
                name: [ae, host, port] for name, (ae, host, port) in self.modalities.items()
            },
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": False,
            "DicomScuTimeout": 30,
            "DicomScpTimeout": 30,
            "ConcurrentJobs": 2,
            "HttpTimeout": 120,
            "StableAge": 2,
            "SaveJobs": False,
        }
        if self.dicomweb:
            config["Plugins"] = [require_orthanc_dicomweb()]
            config["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            }
        return config

    def start(self, timeout: float = 30.0) -> Orthanc:
        """Start the process and wait until its REST API answers."""
        binary = require_binary(ORTHANC_BINARY)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [binary, "--logdir=" + str(self.workdir), str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=PEER_ENV,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (OSError, OrthancError):
                time.sleep(0.2)
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of Orthanc's output, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST ----------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
        timeout: float = 120.0,
    ) -> bytes:
        """One REST call; returns the response body."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"{method} {path}: HTTP {exc.code} {exc.read()[:500]!r}") from exc

    def get(self, path: str) -> Any:
        """GET a JSON resource."""
        return json.loads(self.request("GET", path))

    def post(self, path: str, payload: Any) -> Any:
        """POST JSON, return parsed JSON."""
        data = self.request("POST", path, json.dumps(payload).encode(), "application/json")
        return json.loads(data) if data else None

    def put(self, path: str, payload: Any) -> None:
        """PUT JSON."""
        self.request("PUT", path, json.dumps(payload).encode(), "application/json")

    def upload(self, paths: Iterable[Path]) -> list[str]:
        """Upload DICOM files through REST; returns Orthanc instance ids."""
        ids = []
        for path in paths:
            answer = json.loads(
                self.request("POST", "/instances", Path(path).read_bytes(), "application/dicom")
            )
            ids.append(answer["ID"])
        return ids

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Declare (or update) a DICOM peer at run time."""
        self.put(f"/modalities/{name}", {"AET": ae_title, "Host": host, "Port": port})
        self.modalities[name] = (ae_title, host, port)

    def send_to_modality(self, name: str, resources: Sequence[str], timeout_s: int = 120) -> Any:
        """C-STORE resources (study/series/instance ids) to a declared modality."""
        return self.post(
            f"/modalities/{name}/store",
            {"Resources": list(resources), "Synchronous": True, "Timeout": timeout_s},
        )

    def find_series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Series of a study (expanded), by StudyInstanceUID."""
        found = self.post(
            "/tools/find",
            {"Level": "Series", "Query": {"StudyInstanceUID": study_instance_uid}, "Expand": True},
        )
        return list(found)

    def series_modalities(self, study_instance_uid: str) -> dict[str, list[dict[str, Any]]]:
        """``{Modality: [series...]}`` for one study."""
        out: dict[str, list[dict[str, Any]]] = {}
        for series in self.find_series(study_instance_uid):
            out.setdefault(series["MainDicomTags"].get("Modality", ""), []).append(series)
        return out

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def instances_of_series(self, series_id: str) -> list[str]:
        """Orthanc instance ids of a series."""
        return [item["ID"] for item in self.get(f"/series/{series_id}/instances")]

    def wait_for(
        self, predicate: Any, timeout: float, interval: float = 0.5, what: str = "condition"
    ) -> Any:
        """Poll ``predicate()`` until it returns a truthy value or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)


def run_dcmtk(args: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (storescu, echoscu, dcmdump, dsrdump) with TCP_NODELAY=1.

    ``args[0]`` is the tool's name; it runs the binary :func:`require_binary` finds.
    """
    return subprocess.run(
        [require_binary(args[0]), *args[1:]], capture_output=True, text=True,
        timeout=timeout, env=PEER_ENV, check=False,
    )


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines that ``dciodvfy`` reports as errors for one file."""
    require_binary("dciodvfy")
    proc = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
