"""No patient data and no secrets in the node's log at INFO; TLS end to end.

One real ``deepsc-node serve`` process (:class:`tests.e2e_fixtures.NodeProcess`,
default ``log_level = "INFO"``) runs with DICOM TLS on its SCP (encrypted
private key + password) and one TLS destination (DCMTK ``storescp +tls``,
reached with an encrypted client key + password). DCMTK ``storescu +tls``
sends a synthetic chest series whose Patient's Name, Patient ID and birth
date are distinctive strings; the node receives, processes and exports the
SEG and SR. Then:

* none of the patient strings, passwords or key material occur anywhere in
  the log (stdout and stderr), while the series UID does (the log is not
  just empty);
* the SEG and SR arrived at the TLS destination;
* ``deepsc-node audit`` shows the TLS association (client certificate,
  instances stored) and the results sent.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from config import Destination, TLSSettings
from pacs_node import scu
from pacs_node.tls import client_context
from storage import JobState
from tests import e2e_fixtures
from tests.dicom_fixtures import wait_for_port
from tests.e2e_fixtures import NodeProcess, toml_value
from tests.node_fixtures import job_summary, outline_expected, wait_until, write_chest_series
from tests.peers import PEER_ENV, free_port, require_binary, run_dcmtk
from tests.tls_fixtures import PKI, make_pki

pytestmark = pytest.mark.e2e

PATIENT_NAME = "Quixotewarbler^Zebulonia^Maximiliane"
PATIENT_ID = "PID-7Q3X-90210-ZZ"
BIRTH_DATE = "19371104"
OTHER_PATIENT_ID = "OTHER-ID-55K1-JX"
SERVER_KEY_PASSWORD = "srv-pw-Gh7!kq2Vz"
CLIENT_KEY_PASSWORD = "cli-pw-Tb4$mm9Lw"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """What the module's node run produced."""

    node: NodeProcess
    pki: PKI
    series_instance_uid: str
    received: Path
    log: str
    secrets: list[str]


def _encrypt_key(pki: PKI, name: str, password: str) -> Path:
    out = pki.folder / f"{name}-encrypted.key"
    proc = subprocess.run(
        [require_binary("openssl"), "pkey", "-in", str(pki.key(name)), "-aes256",
         "-passout", f"pass:{password}", "-out", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def _key_lines(path: Path) -> list[str]:
    """Base64 lines of a PEM key (each long enough to be distinctive)."""
    return [line for line in path.read_text().splitlines() if len(line) >= 40]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("privacy")
    pki = make_pki(workdir / "pki")
    server_key = _encrypt_key(pki, "server", SERVER_KEY_PASSWORD)
    client_key = _encrypt_key(pki, "client", CLIENT_KEY_PASSWORD)

    files = write_chest_series(workdir / "ct", slices=24, seed=11)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = BIRTH_DATE
        ds.OtherPatientIDs = OTHER_PATIENT_ID
        ds.save_as(path)
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)

    received = workdir / "tlspacs"
    received.mkdir()
    pacs_port = free_port()
    storescp = subprocess.Popen(
        [require_binary("storescp"), "-aet", "TLSPACS", "-od", str(received),
         "+tls", str(pki.key("peer")), str(pki.pem("peer")), "+cf", str(pki.ca), str(pacs_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PEER_ENV,
    )
    node = NodeProcess(
        workdir / "node",
        settings={"log_level": "INFO", "allowed_calling_aes": ["STORESCU", "E2ETEST"]},
        tables={"tls": {
            "certificate": str(pki.pem("server")),
            "private_key": str(server_key),
            "private_key_password": SERVER_KEY_PASSWORD,
            "ca_certificates": str(pki.ca),
            "destination_ca_certificates": str(pki.ca),
            "client_certificate": str(pki.pem("client")),
            "client_private_key": str(client_key),
            "client_private_key_password": CLIENT_KEY_PASSWORD,
        }},
    )
    with node.config_path.open("a") as config:  # NodeProcess writes no "tls" key
        config.write(
            "\n[[destinations]]\nname = \"tlspacs\"\nae_title = \"TLSPACS\"\n"
            f"host = \"127.0.0.1\"\nport = {pacs_port}\ntls = {toml_value(True)}\n"
        )
    # NodeProcess.start() waits for a C-ECHO: make it a TLS one.
    echo_context = client_context(TLSSettings(
        destination_ca_certificates=pki.ca, client_certificate=pki.pem("client"),
        client_private_key=pki.key("client"),
    ))
    original_echo = e2e_fixtures.echo

    def tls_echo(destination: Destination, calling_ae: str, timeout: float) -> int:
        return scu.echo(dataclasses.replace(destination, tls=True), calling_ae, timeout,
                        tls_context=echo_context)

    e2e_fixtures.echo = tls_echo  # type: ignore[assignment]
    try:
        wait_for_port(pacs_port, storescp)
        node.start()
        sent = run_dcmtk(
            ["storescu", "-aet", "STORESCU", "-aec", node.ae_title,
             "+tls", str(pki.key("client")), str(pki.pem("client")), "+cf", str(pki.ca),
             "127.0.0.1", str(node.port), *map(str, files)],
            timeout=120,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(
            lambda: node.jobs(series_uid) and node.jobs(series_uid)[-1].state
            in (JobState.EXPORTED, JobState.FAILED, JobState.REJECTED),
            120, "the job to finish", interval=0.5,
        )
        code = node.stop()
        assert code == 0, node.log_tail()
        yield Run(
            node=node,
            pki=pki,
            series_instance_uid=series_uid,
            received=received,
            log=node.log_path.read_text(errors="replace"),
            secrets=[SERVER_KEY_PASSWORD, CLIENT_KEY_PASSWORD,
                     *_key_lines(pki.key("server")), *_key_lines(server_key),
                     *_key_lines(pki.key("client")), *_key_lines(client_key)],
        )
    finally:
        e2e_fixtures.echo = original_echo  # type: ignore[assignment]
        node.stop()
        storescp.terminate()
        storescp.wait(timeout=10)


def test_the_series_was_processed_and_exported_over_tls(run: Run) -> None:
    jobs = run.node.jobs(run.series_instance_uid)
    assert jobs[-1].state is JobState.EXPORTED, (jobs, run.log[-3000:])
    received = [pydicom.dcmread(p, stop_before_pixels=True) for p in run.received.iterdir()]
    by_modality: dict[str, list[int]] = {}
    for ds in received:
        by_modality.setdefault(str(ds.Modality), []).append(int(ds.SeriesNumber))
    # SEG, the full report (+ the outline report when a lesion is significant), SC images.
    assert set(by_modality) == {"SEG", "SR", "OT"}, by_modality
    outline = outline_expected(job_summary(run.node.database_url, jobs[-1].id))
    assert by_modality["SEG"] == [9001]
    assert sorted(by_modality["SR"]) == ([9002, 9005] if outline else [9002])
    assert "(DICOM TLS)" in run.log  # the banner


def test_no_patient_data_or_secrets_in_the_info_log(run: Run) -> None:
    log = run.log
    assert run.series_instance_uid in log  # the log does describe the series...
    assert " INFO " in log or "INFO" in log
    forbidden = [
        PATIENT_ID, BIRTH_DATE, OTHER_PATIENT_ID, PATIENT_NAME,
        *PATIENT_NAME.split("^"), PATIENT_NAME.replace("^", " "),
        "PRIVATE KEY", *run.secrets,
    ]
    leaked = [text for text in forbidden if text in log]
    assert leaked == [], f"found in the log: {leaked}"
    assert " DEBUG " not in log  # INFO is the default level


def test_audit_shows_the_tls_association_and_the_results_sent(run: Run) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pacs_node", "audit", "--json", "--config",
         str(run.node.config_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    storescu = [a for a in data["associations"] if a["calling_ae_title"] == "STORESCU"]
    assert len(storescu) == 1
    assert storescu[0]["outcome"] == "released" and storescu[0]["tls"] is True
    assert storescu[0]["tls_peer"] == "CN=modality-1"
    assert storescu[0]["instances_stored"] == 24 and storescu[0]["instances_refused"] == 0
    sent = {(s["kind"], s["destination"], s["success"]) for s in data["results_sent"]}
    job = run.node.jobs(run.series_instance_uid)[-1]
    kinds = ["seg", "sr", "sc", *(["outline"] if outline_expected(
        job_summary(run.node.database_url, job.id)) else [])]
    assert sent == {(kind, "tlspacs", True) for kind in kinds}
    text = json.dumps(data)
    assert PATIENT_ID not in text and "Quixotewarbler" not in text
    for secret in run.secrets[:2]:
        assert secret not in proc.stdout + proc.stderr
