"""Load highdicom's tables of the DICOM standard before the node serves.

highdicom reads three JSON tables (SOP class -> IOD -> modules -> attributes,
a few MB) the first time it builds a SEG or an SR, and caches them.
``json.loads`` runs in C and holds the GIL throughout: about 0.4 s of CPU
time on the 2-core test machine, during which no association thread of the
node can run. Under load (``bench/load.py``: 8 studies over 8 associations)
the first result after each start made the C-ECHO probe wait up to 0.5 s.
:func:`load_standard_tables` does it once at start-up
(:meth:`pacs_node.node.Node.start`), before the SCP listens.

The loaders live in highdicom's private ``_standard_utils`` module; with a
highdicom that does not have them nothing is loaded early (the first result
is just slower), and the node still starts.
"""
from __future__ import annotations

import importlib
import logging
import time

LOGGER = logging.getLogger(__name__)

__all__ = ["STANDARD_TABLE_LOADERS", "load_standard_tables"]

#: highdicom's cached loaders of the standard's tables (``highdicom._standard_utils``).
STANDARD_TABLE_LOADERS: tuple[str, ...] = (
    "get_sop_class_iod_map",
    "get_iod_module_map",
    "get_module_attribute_map",
)


def load_standard_tables() -> int:
    """Fill highdicom's caches of the standard's tables now.

    Returns
    -------
    int
        How many of :data:`STANDARD_TABLE_LOADERS` were found and called.
    """
    started = time.perf_counter()
    try:
        module = importlib.import_module("highdicom._standard_utils")
    except ImportError:
        LOGGER.debug("highdicom has no _standard_utils module: tables load on first use")
        return 0
    loaded = 0
    for name in STANDARD_TABLE_LOADERS:
        loader = getattr(module, name, None)
        if not callable(loader):
            LOGGER.debug("highdicom has no %s: that table loads on first use", name)
            continue
        loader()
        loaded += 1
    LOGGER.debug(
        "loaded %d highdicom standard table(s) in %.2f s", loaded, time.perf_counter() - started
    )
    return loaded
