"""Loading the scripts of ``bench/`` in tests (``bench`` is not a package)."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.e2e_fixtures import REPO_ROOT


def load_bench_script(name: str) -> ModuleType:
    """``bench/<name>.py`` as the module ``bench_<name>``.

    Parameters
    ----------
    name: str
        Script name without ``.py`` (``"inference"``, ``"receive"``, ...).

    Returns
    -------
    types.ModuleType
        The executed module, also registered in :data:`sys.modules` (its
        dataclasses need that).
    """
    spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                  REPO_ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
