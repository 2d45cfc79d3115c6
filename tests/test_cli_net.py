"""``deepsc-node echo`` and ``deepsc-node send`` as subprocesses against DCMTK storescp."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.dicom_fixtures import dcmtk_storescp, write_ct_series
from tests.peers import free_port

pytestmark = pytest.mark.e2e


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pacs_node ARGS`` with no DEEPSC_* settings from the caller."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSC_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pacs_node", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=clean, check=False,
    )


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    folder = tmp_path / "received"
    with dcmtk_storescp(folder) as port:
        yield folder, port


def test_echo_peer(storescp: tuple[Path, int], tmp_path: Path) -> None:
    _, port = storescp
    proc = run_cli("echo", f"STORESCP@127.0.0.1:{port}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"STORESCP@127.0.0.1:{port}: 0x0000 Success, ")
    assert line.endswith(" ms")


def test_echo_configured_destinations_by_default(
    storescp: tuple[Path, int], tmp_path: Path
) -> None:
    _, port = storescp
    dead = free_port()
    env = {"DEEPSC_DESTINATIONS": f"pacs=STORESCP@127.0.0.1:{port},gone=NOBODY@127.0.0.1:{dead}"}
    proc = run_cli("echo", "--timeout", "3", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(f"pacs (STORESCP@127.0.0.1:{port}): 0x0000 Success")
    assert lines[1].startswith(f"gone (NOBODY@127.0.0.1:{dead}): FAILED after ")
    assert "cannot connect" in lines[1]
    only_pacs = run_cli("echo", "pacs", cwd=tmp_path, env=env)
    assert only_pacs.returncode == 0, only_pacs.stdout + only_pacs.stderr


def test_echo_argument_errors(tmp_path: Path) -> None:
    bad_peer = run_cli("echo", "nonsense", cwd=tmp_path)
    assert bad_peer.returncode == 2
    assert "neither AE@host:port nor a configured destination" in bad_peer.stderr
    nothing = run_cli("echo", cwd=tmp_path)
    assert nothing.returncode == 2
    assert "no destination configured" in nothing.stderr
    bad_settings = run_cli("echo", "X@127.0.0.1:1", cwd=tmp_path, env={"DEEPSC_PORT": "abc"})
    assert bad_settings.returncode == 2
    assert 'settings key "port"' in bad_settings.stderr


def test_send_folder(storescp: tuple[Path, int], tmp_path: Path) -> None:
    folder, port = storescp
    files = write_ct_series(tmp_path / "series", 3)
    nested = write_ct_series(tmp_path / "series" / "more", 2)
    (tmp_path / "series" / "README.txt").write_text("not DICOM")
    proc = run_cli(
        "send", str(tmp_path / "series"), "--to", f"STORESCP@127.0.0.1:{port}",
        "--calling-ae", "CLI_TEST", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = f"sent 3 files to STORESCP@127.0.0.1:{port}: 3 delivered (0 with warning), 0 failed"
    assert summary in proc.stdout
    assert "skipped 1 files that are not DICOM Part 10" in proc.stdout
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert {p.name for p in folder.iterdir()} == {f"CT.{uid}" for uid in uids}

    recursive = run_cli(
        "send", str(tmp_path / "series"), "--recursive", "--to", f"STORESCP@127.0.0.1:{port}",
        cwd=tmp_path,
    )
    assert recursive.returncode == 0, recursive.stdout + recursive.stderr
    assert "sent 5 files" in recursive.stdout
    uids |= {pydicom.dcmread(f).SOPInstanceUID for f in nested}
    assert {p.name for p in folder.iterdir()} == {f"CT.{uid}" for uid in uids}


def test_send_failures_exit_non_zero(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", 2)
    peer = f"PACS@127.0.0.1:{free_port()}"
    dead = run_cli("send", str(tmp_path / "series"), "--to", peer, cwd=tmp_path)
    assert dead.returncode == 1
    assert "0 delivered (0 with warning), 2 failed" in dead.stdout
    assert "association: cannot connect to PACS@127.0.0.1" in dead.stdout
    assert f"failed: {files[0]}: not sent: cannot connect" in dead.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli("send", str(empty), "--to", "PACS@127.0.0.1:104", cwd=tmp_path)
    assert nothing.returncode == 1 and "no DICOM files found" in nothing.stdout
    missing = run_cli("send", str(tmp_path / "nope"), "--to", "PACS@127.0.0.1:104", cwd=tmp_path)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    bad_to = run_cli("send", str(empty), "--to", "PACS@127.0.0.1", cwd=tmp_path)
    assert bad_to.returncode == 2 and "AE@host:port" in bad_to.stderr


def test_help_has_examples(tmp_path: Path) -> None:
    for command in ("echo", "send"):
        proc = run_cli(command, "--help", cwd=tmp_path)
        assert proc.returncode == 0
        assert "examples:" in proc.stdout and "AE@host:port" in proc.stdout
