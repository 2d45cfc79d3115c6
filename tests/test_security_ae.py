"""Who may associate: calling-AE allow-list with host check, called-AE check.

Over the network with real DCMTK ``echoscu`` / ``storescu`` and a pynetdicom
SCU bound to another loopback address (127.0.0.2) for the host check. The
SCP is built from :class:`config.Settings` (``allowed_calling_aes``,
``require_called_ae``) exactly as the node builds it
(:func:`pacs_node.ae.ae_from_settings`), with the database audit trail.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config import Settings, load_settings
from pacs_node.ae import ae_from_settings, start_scp, stop_scp
from pacs_node.audit import AssociationAudit
from pacs_node.handlers import AssociationPolicy, RejectReasonValues, host_matches
from storage import AssociationOutcome, AssociationRecord, recent_associations
from tests.dicom_fixtures import DirectoryReceiver, make_ct_dataset, write_dataset
from tests.node_fixtures import migrated_database, wait_until
from tests.peers import free_port, run_dcmtk

NODE_AE = "DEEPSC"
CALLING_NOT_RECOGNISED = "Calling AE Title Not Recognized"
CALLED_NOT_RECOGNISED = "Called AE Title Not Recognized"


class SCP:
    """The node's SCP built from settings, with a receiver and the audit database."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.receiver = DirectoryReceiver(folder / "store")
        self.port = free_port()
        self._database = migrated_database(folder)
        self.sessions = self._database.__enter__()
        self.server = start_scp(
            ae_from_settings(settings), "127.0.0.1", self.port, self.receiver,
            audit=AssociationAudit(self.sessions),
        )

    def audit(self, calling_ae: str) -> list[AssociationRecord]:
        with self.sessions() as session:
            return recent_associations(session, 100, calling_ae_title=calling_ae)

    def close(self) -> None:
        stop_scp(self.server, timeout=2.0)
        self._database.__exit__(None, None, None)


@pytest.fixture
def scp_from(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], SCP]]:
    """``scp_from(environ)``: an SCP from settings loaded from DEEPSC_* variables."""
    started: list[SCP] = []

    def start(environ: dict[str, str]) -> SCP:
        settings = load_settings(
            environ={"DEEPSC_AE_TITLE": NODE_AE, "DEEPSC_TIMEOUTS__ACSE": "5", **environ}
        )
        scp = SCP(tmp_path / f"scp{len(started)}", settings)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.close()


def echoscu(port: int, calling: str, called: str = NODE_AE) -> tuple[int, str]:
    proc = run_dcmtk(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)], 30)
    return proc.returncode, proc.stdout + proc.stderr


def ct_files(folder: Path, count: int) -> list[Path]:
    return [
        write_dataset(make_ct_dataset(instance_number=i + 1), folder / f"ct{i}.dcm")
        for i in range(count)
    ]


def pynetdicom_echo(port: int, calling: str, source: str) -> tuple[bool, int | None]:
    """C-ECHO from a pynetdicom AE bound to `source`; (established, reject reason)."""
    ae = AE(calling)
    ae.acse_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE, bind_address=(source, 0))
    if assoc.is_established:
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        return True, None
    primitive = assoc.acceptor.primitive
    return False, None if primitive is None else primitive.diagnostic


# -- units --------------------------------------------------------------------------


def test_host_matches_addresses_and_names() -> None:
    assert host_matches("127.0.0.1", "127.0.0.1")
    assert host_matches("127.0.0.1", "::ffff:127.0.0.1")  # IPv4-mapped peer address
    assert host_matches("localhost", "127.0.0.1")  # a host name is looked up
    assert not host_matches("127.0.0.2", "127.0.0.1")
    assert not host_matches("no-such-host.invalid", "127.0.0.1")
    policy = AssociationPolicy(NODE_AE, ("CT1@localhost",))
    assert policy.check(NODE_AE, "CT1", "127.0.0.1") == (None, "")
    reason, text = policy.check(NODE_AE, "CT1", "10.1.2.3")
    assert reason is RejectReasonValues.CALLING_AE_TITLE_NOT_RECOGNIZED
    assert "not allowed from 10.1.2.3" in text


def test_require_called_ae_setting() -> None:
    assert Settings().require_called_ae is True
    assert load_settings(environ={"DEEPSC_REQUIRE_CALLED_AE": "false"}).require_called_ae is False
    with pytest.raises(Exception, match="require_called_ae"):
        load_settings(environ={"DEEPSC_REQUIRE_CALLED_AE": "maybe"})


# -- over the network ------------------------------------------------------------------


@pytest.mark.e2e
def test_calling_ae_allow_list_with_dcmtk(
    scp_from: Callable[[dict[str, str]], SCP], tmp_path: Path
) -> None:
    scp = scp_from({
        "DEEPSC_ALLOWED_CALLING_AES": "ECHOSCU,STORESCU@127.0.0.1,BYNAME@localhost,"
                                      "HOSTBOUND@127.0.0.2",
    })
    assert echoscu(scp.port, "ECHOSCU")[0] == 0
    assert echoscu(scp.port, "BYNAME")[0] == 0
    files = ct_files(tmp_path / "ct", 2)
    stored = run_dcmtk(["storescu", "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1",
                        str(scp.port), *map(str, files)], 60)
    assert stored.returncode == 0, stored.stderr
    assert len(scp.receiver.stored_files()) == 2

    code, output = echoscu(scp.port, "INTRUDER")
    assert code != 0 and CALLING_NOT_RECOGNISED in output
    code, output = echoscu(scp.port, "HOSTBOUND")  # allowed only from 127.0.0.2
    assert code != 0 and CALLING_NOT_RECOGNISED in output
    refused = run_dcmtk(["storescu", "-aet", "INTRUDER", "-aec", NODE_AE, "127.0.0.1",
                         str(scp.port), str(files[0])], 60)
    assert refused.returncode != 0 and CALLING_NOT_RECOGNISED in refused.stderr
    assert len(scp.receiver.stored_files()) == 2  # nothing more stored

    intruder = wait_until(lambda: scp.audit("INTRUDER"), 5, "INTRUDER in the audit")
    assert len(intruder) == 2
    assert {r.outcome for r in intruder} == {AssociationOutcome.REJECTED}
    assert all("'INTRUDER' is not in the allow-list" in (r.reason or "") for r in intruder)
    hostbound = wait_until(lambda: scp.audit("HOSTBOUND"), 5, "HOSTBOUND in the audit")
    assert "not allowed from 127.0.0.1" in (hostbound[0].reason or "")
    storescu = wait_until(
        lambda: [r for r in scp.audit("STORESCU") if r.ended_at is not None], 5, "STORESCU"
    )
    assert storescu[0].outcome is AssociationOutcome.RELEASED
    assert storescu[0].instances_stored == 2 and storescu[0].peer_address == "127.0.0.1"


def test_host_check_from_two_loopback_addresses(
    scp_from: Callable[[dict[str, str]], SCP],
) -> None:
    scp = scp_from({"DEEPSC_ALLOWED_CALLING_AES": "HOSTBOUND@127.0.0.2"})
    assert pynetdicom_echo(scp.port, "HOSTBOUND", "127.0.0.2") == (True, None)
    assert pynetdicom_echo(scp.port, "HOSTBOUND", "127.0.0.1") == (
        False, int(RejectReasonValues.CALLING_AE_TITLE_NOT_RECOGNIZED)
    )
    rows = wait_until(lambda: [r for r in scp.audit("HOSTBOUND") if r.ended_at], 5, "audit")
    by_address = {r.peer_address: r.outcome for r in rows}
    assert by_address == {
        "127.0.0.2": AssociationOutcome.RELEASED,
        "127.0.0.1": AssociationOutcome.REJECTED,
    }


@pytest.mark.e2e
def test_called_ae_check_with_dcmtk(scp_from: Callable[[dict[str, str]], SCP]) -> None:
    strict = scp_from({})
    code, output = echoscu(strict.port, "ECHOSCU", called="NOT_THE_NODE")
    assert code != 0 and CALLED_NOT_RECOGNISED in output
    assert echoscu(strict.port, "ECHOSCU")[0] == 0
    rejected = wait_until(
        lambda: [r for r in strict.audit("ECHOSCU") if r.outcome is AssociationOutcome.REJECTED],
        5, "the rejection in the audit",
    )
    assert rejected[0].called_ae_title == "NOT_THE_NODE"
    assert "called AE title 'NOT_THE_NODE' is not ours" in (rejected[0].reason or "")

    lenient = scp_from({"DEEPSC_REQUIRE_CALLED_AE": "false"})
    assert echoscu(lenient.port, "ECHOSCU", called="ANY_TITLE")[0] == 0
