"""DICOM TLS of the node: SCP and SCU, against pynetdicom and DCMTK peers.

A CA, server, client and foreign certificates are made with the ``openssl``
command for this module (:mod:`tests.tls_fixtures`). The SCP runs on
127.0.0.1 on a free port with :func:`pacs_node.tls.server_context`; peers
are the node's own SCU (:mod:`pacs_node.scu` with
:func:`pacs_node.tls.client_context`), a plain pynetdicom AE and DCMTK
``echoscu`` / ``storescu`` / ``storescp`` with ``+tls``.
"""
from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom.transport import ThreadedAssociationServer

from config import Destination, TLSSettings, load_settings
from pacs_node.ae import build_ae, start_scp, stop_scp
from pacs_node.audit import AssociationAudit
from pacs_node.errors import AssociationFailedError
from pacs_node.scu import echo, send
from pacs_node.tls import TLSSetupError, client_context, server_context
from storage import AssociationOutcome, recent_associations
from tests.dicom_fixtures import DirectoryReceiver, make_ct_dataset, wait_for_port, write_dataset
from tests.node_fixtures import migrated_database, wait_until
from tests.peers import PEER_ENV, free_port, require_binary, run_dcmtk
from tests.tls_fixtures import PKI, make_pki

NODE_AE = "DEEPSC"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """The test CA and certificates (made once per module)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def node_tls(pki: PKI, **overrides: object) -> TLSSettings:
    """SCP settings: the server certificate, client certificates from the test CA required."""
    values: dict[str, object] = {
        "certificate": pki.pem("server"),
        "private_key": pki.key("server"),
        "ca_certificates": pki.ca,
    }
    values.update(overrides)
    return TLSSettings(**values)  # type: ignore[arg-type]


def peer_tls(pki: PKI, client: str | None = "client", ca: Path | None = None) -> ssl.SSLContext:
    """An SCU context that trusts `ca` (default the test CA) and presents `client`."""
    settings = TLSSettings(
        destination_ca_certificates=ca or pki.ca,
        client_certificate=pki.pem(client) if client else None,
        client_private_key=pki.key(client) if client else None,
    )
    return client_context(settings)


class TLSServer:
    """The node's SCP over TLS with an audit database, for one test."""

    def __init__(self, tmp_path: Path, tls: TLSSettings, handshake_timeout: float = 3.0) -> None:
        self.receiver = DirectoryReceiver(tmp_path / "store")
        self.port = free_port()
        self._database = migrated_database(tmp_path)
        self.sessions = self._database.__enter__()
        ae = build_ae(NODE_AE, acse_timeout=5, dimse_timeout=10, network_timeout=10)
        context = server_context(tls, handshake_timeout=handshake_timeout)
        self.server: ThreadedAssociationServer = start_scp(
            ae, "127.0.0.1", self.port, self.receiver, ssl_context=context,
            audit=AssociationAudit(self.sessions, tls=context is not None),
        )

    def destination(self, tls: bool = True) -> Destination:
        return Destination("node", NODE_AE, "127.0.0.1", self.port, tls=tls)

    def associations(self) -> list:
        with self.sessions() as session:
            return recent_associations(session, 50)

    def close(self) -> None:
        stop_scp(self.server, timeout=2.0)
        self._database.__exit__(None, None, None)


@pytest.fixture
def tls_server(tmp_path: Path, pki: PKI) -> Iterator[Callable[..., TLSServer]]:
    """Start TLS SCPs: ``tls_server(**TLSSettings overrides)``; stopped at teardown."""
    servers: list[TLSServer] = []

    def start(handshake_timeout: float = 3.0, **overrides: object) -> TLSServer:
        server = TLSServer(
            tmp_path / f"scp{len(servers)}", node_tls(pki, **overrides), handshake_timeout
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def ct_file(folder: Path, name: str = "ct.dcm") -> tuple[Path, str]:
    ds = make_ct_dataset(rows=16, columns=16)
    return write_dataset(ds, folder / name), str(ds.SOPInstanceUID)


# -- settings and contexts --------------------------------------------------------


def test_tls_settings_validation_and_secret_handling(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='"ca_certificates"'):
        TLSSettings(certificate=tmp_path / "s.pem")  # client certs required, no CA
    with pytest.raises(ValueError, match='"private_key"'):
        TLSSettings(private_key=tmp_path / "s.key")
    with pytest.raises(ValueError, match='"client_private_key"'):
        TLSSettings(client_private_key=tmp_path / "c.key")
    config = tmp_path / "etc" / "node.toml"
    config.parent.mkdir()
    config.write_text(
        '[tls]\ncertificate = "tls/node.pem"\nprivate_key = "tls/node.key"\n'
        'private_key_password = "pw-Very-Secret"\nrequire_client_certificate = false\n'
        "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"10.0.0.5\"\n"
        "port = 2762\ntls = true\n"
    )
    settings = load_settings(config, environ={"DEEPSC_TLS__CLIENT_CERTIFICATE": "c.pem"})
    assert settings.tls.certificate == config.parent / "tls" / "node.pem"  # relative to file
    assert settings.tls.client_certificate == Path.cwd() / "c.pem"  # relative to cwd
    assert settings.tls.scp_enabled and settings.destinations[0].tls
    assert "pw-Very-Secret" not in repr(settings)
    assert settings.to_dict(hide_secrets=True)["tls"]["private_key_password"] == "<hidden>"
    assert settings.to_dict()["tls"]["private_key_password"] == "pw-Very-Secret"
    assert server_context(TLSSettings()) is None  # no certificate: plain TCP


def test_unusable_files_are_named_without_their_content(tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(TLSSetupError, match=r"tls\.certificate: file not found"):
        server_context(node_tls(pki, certificate=tmp_path / "missing.pem"))
    with pytest.raises(TLSSetupError, match=r"tls\.certificate: cannot load") as wrong_key:
        server_context(node_tls(pki, private_key=pki.key("client")))
    assert "PRIVATE KEY" not in str(wrong_key.value)
    with pytest.raises(TLSSetupError, match=r"tls\.destination_ca_certificates"):
        client_context(TLSSettings(destination_ca_certificates=pki.key("client")))


# -- the SCP over TLS -------------------------------------------------------------------


def test_node_scu_echo_and_store_over_tls(
    tls_server: Callable[..., TLSServer], pki: PKI, tmp_path: Path
) -> None:
    server = tls_server()
    context = peer_tls(pki)
    assert echo(server.destination(), "MODALITY", 5, tls_context=context) == 0
    path, sop_uid = ct_file(tmp_path)
    report = send(server.destination(), [path], calling_ae="MODALITY", tls_context=context)
    assert report.ok, report
    assert pydicom.dcmread(server.receiver.stored_files()[0]).SOPInstanceUID == sop_uid
    rows = wait_until(
        lambda: [r for r in server.associations() if r.outcome is AssociationOutcome.RELEASED],
        5, "two released associations",
    )
    assert len(rows) == 2
    assert all(r.tls and r.tls_peer == "CN=modality-1" for r in rows)
    assert sorted(r.instances_stored for r in rows) == [0, 1]


def test_plain_and_foreign_clients_fail_and_the_scp_keeps_serving(
    tls_server: Callable[..., TLSServer], pki: PKI
) -> None:
    server = tls_server()
    with pytest.raises(AssociationFailedError):  # plain TCP to a TLS port
        echo(server.destination(tls=False), "PLAIN", 5)
    with pytest.raises(AssociationFailedError):  # certificate from another CA
        echo(server.destination(), "INTRUDER", 5, tls_context=peer_tls(pki, "other-client"))
    with pytest.raises(AssociationFailedError):  # no client certificate
        echo(server.destination(), "NOCERT", 5, tls_context=peer_tls(pki, None))
    with pytest.raises(AssociationFailedError):  # the client does not trust the node
        echo(server.destination(), "MODALITY", 5,
             tls_context=peer_tls(pki, ca=pki.pem("other-ca")))
    assert echo(server.destination(), "MODALITY", 5, tls_context=peer_tls(pki)) == 0
    failed = wait_until(
        lambda: [r for r in server.associations() if r.outcome is AssociationOutcome.FAILED]
        if len(server.associations()) == 5 else [],
        5, "four failed connections and one released association in the audit",
    )
    assert sorted(r.reason or "" for r in failed) == [
        "TLS handshake failed: CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate",
        "TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "TLS handshake failed: TLSV1_ALERT_UNKNOWN_CA",  # the client refused the node
        "TLS handshake failed: WRONG_VERSION_NUMBER",  # plain DICOM bytes
    ]
    assert all(r.calling_ae_title is None and r.tls for r in failed)


def test_client_certificate_optional_when_not_required(
    tls_server: Callable[..., TLSServer], pki: PKI
) -> None:
    server = tls_server(require_client_certificate=False)
    assert echo(server.destination(), "NOCERT", 5, tls_context=peer_tls(pki, None)) == 0
    with pytest.raises(AssociationFailedError):  # a presented certificate is still verified
        echo(server.destination(), "INTRUDER", 5, tls_context=peer_tls(pki, "other-client"))


def test_a_silent_connection_does_not_block_tls_peers(
    tls_server: Callable[..., TLSServer], pki: PKI
) -> None:
    server = tls_server(handshake_timeout=5.0)
    with socket.create_connection(("127.0.0.1", server.port)) as silent:
        opened = time.monotonic()
        assert echo(server.destination(), "MODALITY", 5, tls_context=peer_tls(pki)) == 0
        # Answered while the silent connection still waits for its handshake:
        # pynetdicom alone would shake hands in its accept loop and serve
        # nobody until `silent` timed out.
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.recv(1)
        # Dropped after the 5 s handshake timeout, not the 10 s network
        # timeout: a later drop makes recv raise socket.timeout.
        silent.settimeout(9.0 - (time.monotonic() - opened))
        assert silent.recv(1) == b""
        assert time.monotonic() - opened >= 4.5  # not before the handshake timeout
    failed = wait_until(
        lambda: [r for r in server.associations() if r.outcome is AssociationOutcome.FAILED],
        5, "the timed-out connection in the audit",
    )
    assert failed[0].reason == "TLS handshake failed: timed out"


@pytest.mark.e2e
def test_dcmtk_echoscu_and_storescu_over_tls(
    tls_server: Callable[..., TLSServer], pki: PKI, tmp_path: Path
) -> None:
    server = tls_server()
    target = ["127.0.0.1", str(server.port)]
    tls = ["+tls", str(pki.key("client")), str(pki.pem("client")), "+cf", str(pki.ca)]
    ok = run_dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", NODE_AE, *tls, *target], timeout=30)
    assert ok.returncode == 0, ok.stderr
    paths = [ct_file(tmp_path, f"ct{i}.dcm")[0] for i in range(3)]
    stored = run_dcmtk(
        ["storescu", "-aet", "STORESCU", "-aec", NODE_AE, *tls, *target, *map(str, paths)],
        timeout=60,
    )
    assert stored.returncode == 0, stored.stderr
    assert len(server.receiver.stored_files()) == 3
    foreign = ["+tls", str(pki.key("other-client")), str(pki.pem("other-client")),
               "+cf", str(pki.ca)]
    refused = run_dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", NODE_AE, *foreign, *target],
                        timeout=30)
    assert refused.returncode != 0
    plain = run_dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", NODE_AE, *target], timeout=30)
    assert plain.returncode != 0
    rows = wait_until(
        lambda: [r for r in server.associations() if r.calling_ae_title == "STORESCU"
                 and r.outcome is AssociationOutcome.RELEASED],
        5, "storescu's association in the audit",
    )
    assert rows[0].instances_stored == 3 and rows[0].tls_peer == "CN=modality-1"


# -- the SCU to a TLS destination ---------------------------------------------------------


@pytest.mark.e2e
def test_node_scu_sends_to_dcmtk_storescp_over_tls(pki: PKI, tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "received"
    folder.mkdir()
    process = subprocess.Popen(
        [require_binary("storescp"), "-aet", "TLSPACS", "-od", str(folder),
         "+tls", str(pki.key("peer")), str(pki.pem("peer")), "+cf", str(pki.ca), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PEER_ENV,
    )
    try:
        wait_for_port(port, process)
        destination = Destination("tlspacs", "TLSPACS", "127.0.0.1", port, tls=True)
        paths = [ct_file(tmp_path, f"r{i}.dcm") for i in range(2)]
        report = send(destination, [p for p, _ in paths], calling_ae=NODE_AE,
                      tls_context=peer_tls(pki))
        assert report.ok, report
        received = {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir()}
        assert received == {uid for _, uid in paths}
        # Without the client certificate storescp (-rc, its default) refuses the handshake.
        refused = send(destination, [paths[0][0]], calling_ae=NODE_AE,
                       tls_context=peer_tls(pki, None))
        assert not refused.ok and "TLS" in (refused.association_error or "")
        # A plain association to the TLS port fails too.
        plain = send(Destination("tlspacs", "TLSPACS", "127.0.0.1", port), [paths[0][0]],
                     calling_ae=NODE_AE)
        assert not plain.ok
    finally:
        process.terminate()
        process.wait(timeout=10)
