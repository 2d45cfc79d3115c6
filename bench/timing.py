"""Wall-clock timing of repeated calls, shared by the benchmark scripts."""
from __future__ import annotations

import time
from collections.abc import Callable


def time_calls(call: Callable[[], object], repeat: int, warmup: int = 2) -> list[float]:
    """Seconds per call of ``repeat`` timed calls after ``warmup`` untimed ones.

    Parameters
    ----------
    call: Callable[[], object]
        What to time.
    repeat: int
        Timed calls.
    warmup: int, optional
        Untimed calls first (caches, lazy initialisation, cuDNN plans).

    Returns
    -------
    list[float]
        One duration per timed call, in order.
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def median_p90(times: list[float]) -> dict[str, float]:
    """``{"median_s": ..., "p90_s": ...}`` of durations in seconds."""
    import numpy as np

    return {"median_s": float(np.median(times)), "p90_s": float(np.percentile(times, 90))}
