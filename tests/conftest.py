"""Session-wide test configuration."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Database fixtures (SQLite and the local PostgreSQL) shared by the storage tests.
pytest_plugins = ("tests.storage_fixtures",)

#: Root of the repository and the shared real-CT data beside it.
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("DEEPSC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real scanner CT (``../shared/data``); see its README."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA} (set DEEPSC_SHARED_DATA)")
    return SHARED_DATA
