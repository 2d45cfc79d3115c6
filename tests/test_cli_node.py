"""The ``serve``, ``status`` and ``process`` commands, run as subprocesses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from config import Destination
from pacs_node import scu
from pacs_node.cli import main
from pacs_node.node import Node
from pacs_node.results.sr_planar import MIN_PLANAR_VOLUME_ML
from tests.node_fixtures import chest_datasets, node_settings, tiny_model, write_datasets
from tests.peers import free_port, run_dcmtk

#: Environment of the subprocesses: no DEEPSC_* from the caller, one thread.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("DEEPSC_")},
    "OMP_NUM_THREADS": "1",
    "TCP_NODELAY": "1",
}


def deepsc(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs_node", *args],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model"))


def test_process_writes_seg_sr_sc_gsps_and_result_json(tmp_path: Path, model_dir: Path) -> None:
    good = chest_datasets()
    write_datasets(tmp_path / "in" / "a", good)
    short = chest_datasets(slices=3)
    write_datasets(tmp_path / "in" / "b", short)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    done = deepsc("process", "in", "--out", "out", "--model-dir", str(model_dir),
                  "--log-level", "WARNING", "--gsps", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    uid = str(good[0].SeriesInstanceUID)
    folder = tmp_path / "out" / uid
    result = json.loads((folder / "result.json").read_text())
    sc_files = [f"sc-{n}.dcm" for n in range(1, len(result["objects"]["sc"]) + 1)]
    assert sc_files, "the summary page is always written"
    outline = ["outline.dcm"] if "outline" in result["objects"] else []
    significant = any(item["volume_ml"] >= MIN_PLANAR_VOLUME_ML for item in result["lesions"])
    assert bool(outline) == significant
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["gsps.dcm", "result.json", "seg.dcm", "sr.dcm", *outline, *sc_files]
    )
    pages = [pydicom.dcmread(folder / name) for name in sc_files]
    assert [str(p.SOPInstanceUID) for p in pages] == [
        item["sop_instance_uid"] for item in result["objects"]["sc"]
    ]
    assert {str(p.SeriesDescription) for p in pages} == {"AI summary (research)"}
    gsps = pydicom.dcmread(folder / "gsps.dcm")
    assert gsps.Modality == "PR"
    assert result["objects"]["gsps"]["sop_instance_uid"] == gsps.SOPInstanceUID
    seg = pydicom.dcmread(folder / "seg.dcm")
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert (seg.Modality, sr.Modality) == ("SEG", "SR")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert result["objects"]["seg"]["sop_instance_uid"] == seg.SOPInstanceUID
    assert result["objects"]["sr"]["sop_instance_uid"] == sr.SOPInstanceUID
    assert result["files"] == {
        "seg": "seg.dcm", "sr": "sr.dcm", "sc": sc_files, "gsps": "gsps.dcm",
        **({"outline": "outline.dcm"} if outline else {}),
    }
    if outline:
        report = pydicom.dcmread(folder / "outline.dcm")
        assert report.SeriesNumber == 9005
        assert result["objects"]["outline"]["sop_instance_uid"] == report.SOPInstanceUID
    assert sum(result["class_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["image_count"] == 24
    assert "Research use only" in result["intended_use"]
    assert f"series {short[0].SeriesInstanceUID}: skipped: 3 slices < minimum 20" in done.stdout
    assert "1 file(s) are not DICOM" in done.stdout
    assert "processed 1 of 2 series" in done.stdout
    assert not (tmp_path / "out" / str(short[0].SeriesInstanceUID)).exists()


def test_process_exits_non_zero_when_nothing_can_be_processed(
    tmp_path: Path, shared_data: Path, model_dir: Path
) -> None:
    done = deepsc("process", str(shared_data / "ct" / "empty-uids-jpeg2000"), "--out", "out",
                  "--model-dir", str(model_dir), "--log-level", "WARNING", cwd=tmp_path)
    assert done.returncode == 1
    assert "20 DICOM file(s) without a valid Series Instance UID" in done.stdout
    assert "processed 0 of 0 series" in done.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_status_json_while_the_node_runs(tmp_path: Path, model_dir: Path) -> None:
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port())
    paths = write_datasets(tmp_path / "ct", chest_datasets(slices=3))
    with Node(settings, intra_op_threads=1) as node:
        report = scu.send(Destination("node", "DEEPSC", "127.0.0.1", node.port), paths,
                          calling_ae="MODALITY")
        assert report.ok
        assert node.wait_idle(30)
        done = deepsc("status", "--json", "--data-dir", str(settings.data_dir), cwd=tmp_path)
        text = deepsc("status", "--data-dir", str(settings.data_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["jobs"]["rejected"] == 1
    assert sum(data["jobs"].values()) == 1
    (job,) = data["recent_jobs"]
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    assert (job["series_instance_uid"], job["state"], job["reason"]) == (
        uid, "rejected", "3 slices < minimum 20"
    )
    assert job["finished_at"] is not None
    assert (job["flag"], job["priority"]) == ("not analysed: 3 slices < minimum 20", "routine")
    assert data["hl7"] == {"pending": 0, "sent": 0, "failed": 0}
    assert data["pending_exports"] == []
    assert text.returncode == 0
    assert "rejected 1" in text.stdout and "3 slices < minimum 20" in text.stdout
    assert "triage: not analysed: 3 slices < minimum 20 (routine)" in text.stdout


def test_status_without_a_database_exits_1(tmp_path: Path) -> None:
    done = deepsc("status", "--data-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert done.returncode == 1
    assert "no database" in done.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.mark.e2e
def test_serve_answers_echo_and_stops_on_sigterm(tmp_path: Path, model_dir: Path) -> None:
    port, http_port = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'ae_title = "DEEPSC"\nport = {port}\nbind_address = "127.0.0.1"\n'
        f'data_dir = "data"\nmodel_dir = {json.dumps(str(model_dir))}\n'
        'providers = ["CPUExecutionProvider"]\nlog_level = "INFO"\n'
        f"[http]\nport = {http_port}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs_node", "serve", "--config", str(config)],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # C-ECHO until the node answers (a bare TCP probe would hold an
        # association slot open until its ACSE timeout).
        deadline = time.monotonic() + 60
        while True:
            echo = run_dcmtk(
                ["echoscu", "-to", "5", "-aet", "TESTSCU", "-aec", "DEEPSC", "127.0.0.1",
                 str(port)]
            )
            if echo.returncode == 0 or process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert echo.returncode == 0, echo.stderr
        # The HTTP API of the serving process: liveness, readiness, the token.
        base = f"http://127.0.0.1:{http_port}"
        assert httpx.get(base + "/health", timeout=10).json() == {"status": "ok"}
        assert httpx.get(base + "/ready", timeout=10).json()["ready"] is True
        assert httpx.get(base + "/api/jobs", timeout=10).status_code == 401
        token = (tmp_path / "data" / "http-token").read_text().strip()
        jobs = httpx.get(base + "/api/jobs", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
        assert jobs.status_code == 200 and jobs.json() == {"jobs": []}
        process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        stdout, stderr = process.communicate(timeout=15)
        assert time.monotonic() - stopping < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert f"deepsc-node DEEPSC listening on 127.0.0.1:{port}" in stdout
    assert "model: test model 0.0.1" in stdout
    token_file = tmp_path / "data" / "http-token"
    assert (
        f"HTTP API: http://127.0.0.1:{http_port}/ (worklist: /worklist; token: {token_file})"
        in stdout
    )
    assert token_file.read_text().strip() not in stdout + stderr
    with pytest.raises(httpx.ConnectError):  # stopped with the node
        httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=5)
    assert "RESEARCH USE ONLY, NOT FOR DIAGNOSIS" in stdout
    assert " INFO pacs_node.node: node DEEPSC listening" in stderr
    assert "SIGTERM received: stopping" in stderr
    assert "node DEEPSC stopped" in stderr
    assert (tmp_path / "data" / "deepsc-node.sqlite3").is_file()


def test_serve_with_a_bad_model_exits_1_naming_the_field(tmp_path: Path, model_dir: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["outputs"][0]["name"] = "lesions"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    done = deepsc("serve", "--port", str(free_port()), "--bind-address", "127.0.0.1",
                  "--data-dir", "data", "--model-dir", str(broken), cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert "cannot start" in done.stderr
    assert 'manifest field "outputs[0].name"' in done.stderr


@pytest.mark.parametrize("command", ["serve", "status", "process"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"deepsc-node {command}" in out


def test_logging_format_and_warnings_without_patient_data() -> None:
    import io
    import logging
    import warnings

    from pacs_node.logs import setup_logging

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    quiet = {name: logging.getLogger(name).level for name in ("pynetdicom", "alembic", "highdicom")}
    warnings_filters = list(logging.getLogger("py.warnings").filters)
    pydicom_filters = list(logging.getLogger("pydicom").filters)
    stream = io.StringIO()
    try:
        setup_logging("INFO", stream)
        setup_logging("INFO", stream)  # again: no duplicate lines
        logging.getLogger("pacs_node.test").info("job %d (series %s): queued", 7, "1.2.3")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Invalid value for VR PN: 'DOE^JOHN'", UserWarning)
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'DOE^JANE'")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 3
        assert lines[0].endswith(" INFO pacs_node.test: job 7 (series 1.2.3): queued")
        assert "DOE^JOHN" not in stream.getvalue()
        assert "DOE^JANE" not in stream.getvalue()
        assert "UserWarning" in lines[1] and "withheld" in lines[1]
        assert "pydicom" in lines[2] and "withheld" in lines[2]
        setup_logging("DEBUG", stream)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Invalid value for VR PN: 'DOE^JOHN'", UserWarning)
        assert "DOE^JOHN" in stream.getvalue()  # DEBUG: the operator asked for everything
        with pytest.raises(ValueError, match='"level"'):
            setup_logging("LOUD")
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            if handler not in saved[1]:
                root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger("py.warnings").filters[:] = warnings_filters
        logging.getLogger("pydicom").filters[:] = pydicom_filters
