"""The tree of another git revision, for benchmarks that run a baseline beside the node."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["extract_revision"]


def extract_revision(rev: str, folder: Path) -> Path:
    """Write the tree of git revision `rev` (``git archive``) into `folder` and return it.

    Parameters
    ----------
    rev: str
        A commit, tag or branch of this repository (e.g. the commit before a change).
    folder: Path
        Where the tree goes; created if missing.
    """
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev],
                             capture_output=True, check=True).stdout
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder
