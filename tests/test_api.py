"""The node's HTTP API against a real node: token, JSON of a processed job, metrics, readiness."""
from __future__ import annotations

import io
import socket
import stat
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from config import HTTPSettings
from pacs_node.api import HTTPServer, create_app, load_or_create_token
from pacs_node.node import Node, NodeStartError
from storage import (
    JobRecord,
    JobState,
    ResultStore,
    create_database_engine,
    make_session_factory,
)
from storage.queries import key_image_object
from tests.api_fixtures import ApiNode, api_node, process_series, triage_of
from tests.node_fixtures import node_settings, tiny_model
from tests.peers import free_port

#: Every protected route (method, path); job 1 and its thumbnail exist after processing.
PROTECTED: tuple[tuple[str, str], ...] = (
    ("GET", "/metrics"),
    ("GET", "/api/studies"),
    ("GET", "/api/studies/1.2.3"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs?state=exported"),
    ("GET", "/api/jobs/1"),
    ("GET", "/api/jobs/1/thumbnail.png"),
    ("GET", "/worklist"),
    ("GET", "/worklist/worklist.js"),
    ("GET", "/worklist/worklist.css"),
    ("GET", "/"),
    ("POST", "/logout"),
    ("GET", "/no/such/route"),
)

#: Flag and priority of the default triage rules, per predicted class.


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[ApiNode]:
    with api_node(tmp_path_factory.mktemp("node"), model_dir) as running:
        yield running


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }




def test_token_file_is_generated_0600_and_never_logged(api: ApiNode) -> None:
    path = api.node.settings.data_dir / "http-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(api.token) >= 32
    assert any(str(path) in line for line in api.logs.lines)
    assert not any(api.token in line for line in api.logs.lines)
    # The second start reads the same file.
    assert load_or_create_token(None, api.node.settings.data_dir).value == api.token


def test_health_and_readiness_need_no_token(api: ApiNode) -> None:
    with api.client(authorised=False) as client:
        health = client.get("/health")
        ready = client.get("/ready")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True, "checks": {"database": "ok", "model": "ok", "dicom_scp": "ok"}
    }


@pytest.mark.parametrize("method,path", PROTECTED)
def test_protected_routes_refuse_a_missing_or_wrong_token(
    api: ApiNode, method: str, path: str
) -> None:
    with httpx.Client(base_url=api.base_url, timeout=10.0) as client:
        wrong = client.request(method, path, headers={"Authorization": "Bearer " + "x" * 43})
        almost = client.request(
            method, path, headers={"Authorization": "Bearer " + api.token[:-1] + "?"}
        )
        basic = client.request(method, path, headers={"Authorization": "Basic " + api.token})
        cookie = client.request(method, path, headers={"Cookie": "deepsc_session=" + "0" * 64},
                                follow_redirects=False)
        missing = client.request(method, path, follow_redirects=False)
    page = method == "GET" and path in ("/", "/worklist")
    for response in (wrong, almost, basic) if page else (wrong, almost, basic, cookie):
        assert response.status_code == 401, (path, response.status_code)
        assert response.headers["www-authenticate"].startswith('Bearer realm="deepsc-node"')
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert response.json() == {
            "error": "unauthorized", "detail": "send Authorization: Bearer <token>"
        }
    if page:
        # A browser without a (valid) session is sent to the login form, not to the page.
        for response in (missing, cookie):
            assert response.status_code == 303 and response.headers["location"] == "/login"
    else:
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="deepsc-node"'


def test_login_form_sets_an_httponly_session_cookie(api: ApiNode) -> None:
    with httpx.Client(base_url=api.base_url, timeout=10.0) as client:
        assert client.get("/login").status_code == 200
        refused = client.post("/login", data={"token": "wrong-token-0123456789"})
        assert refused.status_code == 401 and "Wrong token" in refused.text
        assert "deepsc_session" not in client.cookies
        accepted = client.post("/login", data={"token": api.token}, follow_redirects=False)
        assert accepted.status_code == 303 and accepted.headers["location"] == "/worklist"
        cookie = accepted.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert api.token not in cookie
        page = client.get("/worklist")
        assert page.status_code == 200 and "RESEARCH USE ONLY" in page.text
        assert client.get("/api/studies").status_code == 200
        client.post("/logout")
        assert client.get("/api/studies").status_code == 401


def test_session_cookie_is_found_among_other_cookies(api: ApiNode) -> None:
    with httpx.Client(base_url=api.base_url, timeout=10.0) as client:
        client.post("/login", data={"token": api.token}, follow_redirects=False)
        session = client.cookies["deepsc_session"]
    header = f"theme=dark; deepsc_session={session};  viewer=ohif"
    with httpx.Client(base_url=api.base_url, timeout=10.0) as client:
        assert client.get("/api/studies", headers={"Cookie": header}).status_code == 200
        spoofed = client.get("/api/studies",
                             headers={"Cookie": f"xdeepsc_session={session}; theme=dark"})
        assert spoofed.status_code == 401
        stale = client.get("/api/studies", headers={"Cookie": "deepsc_session=" + session[::-1]})
        assert stale.status_code == 401
        assert 'error="invalid_token"' in stale.headers["www-authenticate"]


def test_metrics_change_after_a_processed_study(api: ApiNode, tmp_path: Path) -> None:
    with api.client() as client:
        before = client.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain; version=")
        job = process_series(api, tmp_path / "ct", seed=3)
        after = client.get("/metrics")
    assert job.state is JobState.EXPORTED
    old, new = metric_samples(before.text), metric_samples(after.text)
    slices = len(list((tmp_path / "ct").iterdir()))
    key = ("deepsc_instances_received_total", ())
    assert new[key] - old[key] == slices == 24
    studies = ("deepsc_studies_received_total", ())
    assert new[studies] - old[studies] == 1
    exported = ("deepsc_jobs", (("state", "exported"),))
    assert new[exported] - old[exported] == 1
    for state in ("received", "complete", "queued", "running", "written"):
        assert new[("deepsc_jobs", (("state", state),))] == 0
    for histogram in ("deepsc_inference_seconds", "deepsc_processing_seconds"):
        count = (f"{histogram}_count", ())
        assert new[count] - old[count] == 1
        assert new[(f"{histogram}_sum", ())] > old[(f"{histogram}_sum", ())]
        assert new[(f"{histogram}_bucket", (("le", "+Inf"),))] == new[count]
    triage = sum(v for (name, _), v in new.items() if name == "deepsc_triage_total")
    assert triage - sum(v for (name, _), v in old.items() if name == "deepsc_triage_total") == 1
    assert new[("deepsc_database_up", ())] == 1
    assert new[("deepsc_export_failures_total", ())] == 0
    assert sum(v for (name, _), v in new.items() if name == "deepsc_results_total") == len(
        api.processed
    )


def test_json_of_a_processed_job_has_state_flag_priority_and_measurements(
    api: ApiNode, tmp_path: Path
) -> None:
    job = api.processed[0] if api.processed else process_series(api, tmp_path / "ct")
    triage = triage_of(api, job.id)
    with api.client() as client:
        detail = client.get(f"/api/jobs/{job.id}").json()
        listed = client.get("/api/jobs", params={"state": "exported"}).json()["jobs"]
        worklist = client.get("/api/studies").json()
        study = client.get(f"/api/studies/{job.study_instance_uid}").json()
        missing = client.get("/api/jobs/999999")
        bad = client.get("/api/jobs", params={"state": "done"})
    assert detail["id"] == job.id
    assert detail["state"] == "exported"
    assert detail["series_instance_uid"] == job.series_instance_uid
    assert (detail["flag"], detail["priority"], detail["rank"]) == (
        triage.flag, triage.priority, triage.rank
    )
    assert detail["triage"]["text"] == triage.text
    measurements = detail["measurements"]
    assert measurements["predicted_class"] in measurements["class_probabilities"]
    assert abs(sum(measurements["class_probabilities"].values()) - 1.0) < 1e-3
    assert measurements["total_lesion_volume_ml"] > 0
    assert {item["region"] for item in measurements["involvement"]} >= {"total", "left", "right"}
    assert measurements["lesions"] and measurements["image_count"] == 24
    assert detail["timings_s"]["inference"] >= 0
    assert {o["kind"] for o in detail["objects"]} >= {"seg", "sr"}
    assert [j["id"] for j in listed].count(job.id) == 1
    (entry,) = [s for s in worklist["studies"] if s["study_instance_uid"] == job.study_instance_uid]
    assert (entry["flag"], entry["priority"], entry["state"]) == (
        triage.flag, triage.priority, "exported"
    )
    assert worklist["research_use"] == "RESEARCH USE ONLY, NOT FOR DIAGNOSIS."
    assert study["jobs"][0]["measurements"] == measurements
    assert missing.status_code == 404 and bad.status_code == 400


def test_no_phi_in_the_logs(api: ApiNode, tmp_path: Path) -> None:
    if not api.processed:
        process_series(api, tmp_path / "ct")
    with api.client() as client:
        study = client.get(f"/api/studies/{api.processed[0].study_instance_uid}").json()
    name, patient_id = study["patient"]["name"], study["patient"]["id"]
    assert name and patient_id  # the API returns them behind the token...
    for line in api.logs.lines:  # ...and no log line holds them
        if line.split(" ", 1)[0] in ("INFO", "WARNING", "ERROR", "CRITICAL"):
            assert name not in line and patient_id not in line, line


def test_readiness_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    # A PostgreSQL server that is down: nothing listens on the port.
    engine = create_database_engine(f"postgresql+psycopg2://deepsc@127.0.0.1:{free_port()}/deepsc")
    token = load_or_create_token(None, tmp_path)
    app = create_app(
        make_session_factory(engine), ResultStore(tmp_path / "results"), token,
        clock=lambda: datetime.now(timezone.utc),
        checks=[("model", lambda: None), ("dicom_scp", lambda: "DICOM SCP not listening")],
    )
    server = HTTPServer(app, "127.0.0.1", free_port()).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10.0) as client:
            ready = client.get("/ready")
            health = client.get("/health")
            metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token.value}"})
    finally:
        server.stop()
        engine.dispose()
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False
    assert body["checks"]["database"] == "database unreachable: OperationalError"
    assert body["checks"]["model"] == "ok"
    assert body["reasons"] == [
        "database unreachable: OperationalError", "DICOM SCP not listening"
    ]
    assert health.status_code == 200  # liveness: the process still answers
    assert metrics.status_code == 200
    assert metric_samples(metrics.text)[("deepsc_database_up", ())] == 0
    assert not server.is_serving()


def key_image(api: ApiNode, job: JobRecord) -> Path:
    """The file of the job's first SC result object: the key image the node wrote."""
    factory = api.node.session_factory
    assert factory is not None
    with factory() as session:
        found = key_image_object(session, job.id)
    assert found is not None, f"job {job.id} has no SC result object"
    return api.node.result_store.root / found.file_path


def test_thumbnail_is_the_downscaled_key_image(api: ApiNode, tmp_path: Path) -> None:
    job = api.processed[0] if api.processed else process_series(api, tmp_path / "ct")
    path = key_image(api, job)
    source = pydicom.dcmread(path)
    assert source.InstanceNumber == 1
    assert source.SOPClassUID.name.endswith("Secondary Capture Image Storage")
    pixels = source.pixel_array.astype(np.float64)
    with api.client() as client:
        detail = client.get(f"/api/jobs/{job.id}").json()
        response = client.get(detail["thumbnail_url"])
        again = client.get(detail["thumbnail_url"])
    assert detail["thumbnail_url"] == f"/api/jobs/{job.id}/thumbnail.png"
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert again.content == response.content
    image = Image.open(io.BytesIO(response.content))
    rows, columns = pixels.shape[:2]
    scale = min(1.0, 256 / max(rows, columns))
    assert image.size == (round(columns * scale), round(rows * scale))
    thumb = np.asarray(image.convert("RGB"), dtype=np.float64)
    expected = pixels if pixels.ndim == 3 else np.stack([pixels] * 3, axis=-1)
    # Same picture: the mean colour survives the downscale.
    assert np.abs(thumb.mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 8.0


def test_a_job_without_key_image_has_no_thumbnail(api: ApiNode, tmp_path: Path) -> None:
    job = process_series(api, tmp_path / "short", slices=8)
    assert job.state is JobState.REJECTED  # too few slices: no result objects
    with api.client() as client:
        detail = client.get(f"/api/jobs/{job.id}").json()
        response = client.get(f"/api/jobs/{job.id}/thumbnail.png")
    assert detail["state"] == "rejected" and detail["reason"]
    assert detail["flag"].startswith("not analysed: ") and detail["priority"] == "routine"
    assert detail["thumbnail_url"] is None and detail["measurements"] is None
    assert response.status_code == 404
    assert response.json() == {"error": f"job {job.id} has no key image"}


def test_http_port_in_use_fails_the_start_naming_it(tmp_path: Path, model_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        http_port = busy.getsockname()[1]
        settings = node_settings(
            tmp_path, model_dir=model_dir, port=free_port(), http=HTTPSettings(port=http_port)
        )
        node = Node(settings, intra_op_threads=1)
        expected = f"cannot serve the HTTP API on 127.0.0.1:{http_port}"
        with pytest.raises(NodeStartError, match=expected):
            node.start()
    with socket.socket() as probe:  # everything started before was stopped: the SCP port is free
        probe.bind(("127.0.0.1", settings.port))


def test_no_http_switches_the_api_off(tmp_path: Path, model_dir: Path) -> None:
    settings = node_settings(
        tmp_path, model_dir=model_dir, port=free_port(), http=HTTPSettings(enabled=False)
    )
    with Node(settings, intra_op_threads=1) as node:
        assert node.http is None
        with pytest.raises(RuntimeError, match="HTTP API is not running"):
            node.http_port
    assert not (settings.data_dir / "http-token").exists()


@pytest.mark.postgres
def test_api_and_metrics_on_postgresql(
    tmp_path: Path, model_dir: Path, postgres_url: str
) -> None:
    # The JSON paths of the result summary (measurements, timings) on PostgreSQL.
    with api_node(tmp_path / "node", model_dir, database_url=postgres_url) as api:
        short = process_series(api, tmp_path / "short", seed=7, slices=8)
        job = process_series(api, tmp_path / "ct", seed=3)
        with api.client() as client:
            studies = client.get("/api/studies").json()["studies"]
            detail = client.get(f"/api/jobs/{job.id}").json()
            metrics = metric_samples(client.get("/metrics").text)
            ready = client.get("/ready").json()
    assert ready["ready"] is True
    assert [s["study_instance_uid"] for s in studies] == [
        job.study_instance_uid, short.study_instance_uid
    ]  # urgent before routine, although the short series came first
    assert studies[0]["predicted_class"] == detail["measurements"]["predicted_class"]
    assert detail["measurements"]["total_lesion_volume_ml"] > 0
    assert detail["thumbnail_url"] == f"/api/jobs/{job.id}/thumbnail.png"
    assert metrics[("deepsc_instances_received_total", ())] == 32
    assert metrics[("deepsc_jobs", (("state", "rejected"),))] == 1
    assert metrics[("deepsc_inference_seconds_count", ())] == 1
    assert metrics[("deepsc_processing_seconds_sum", ())] > 0
    assert metrics[("deepsc_triage_total", (("priority", "routine"),))] == 1
