"""The peers the end-to-end tests start are the real ones: DCMTK, not pynetdicom's apps."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.peers import SHADOWED_DCMTK_TOOLS, _dcmtk_binary, require_binary, run_dcmtk


def _fake_app(folder: Path, name: str) -> Path:
    """A console script as pip writes it for pynetdicom's ``storescu`` app."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text("#!/usr/bin/env python3\nprint('pynetdicom')\n")
    script.chmod(0o755)
    return script


@pytest.mark.e2e
def test_a_pynetdicom_script_first_on_path_does_not_stand_in_for_dcmtk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom >= 2 installs storescu, storescp, echoscu... into an activated venv's
    bin, which comes first on PATH."""
    fake = _fake_app(tmp_path / "venv-bin", "storescu")
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    found = Path(require_binary("storescu"))
    assert found != fake
    assert found.read_bytes()[:4] == b"\x7fELF"  # a compiled program
    version = run_dcmtk(["storescu", "--version"], timeout=30)
    assert "$dcmtk: storescu" in version.stdout + version.stderr


def test_only_scripts_of_that_name_is_no_dcmtk_tool(tmp_path: Path) -> None:
    _fake_app(tmp_path, "echoscu")
    assert _dcmtk_binary("echoscu", [str(tmp_path)]) is None
    assert {"storescu", "storescp", "echoscu"} <= SHADOWED_DCMTK_TOOLS
