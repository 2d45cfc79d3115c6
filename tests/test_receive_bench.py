"""``bench/receive.py`` on a tiny series: the figures it prints count only complete transfers.

The benchmark (issue 6, receive throughput) compares DCMTK ``storescp`` with
``deepsc-node serve``. These tests run its real code against the real peers
on loopback with 4 slices of 16 x 16 pixels; speed is not asserted (that is
what the benchmark is for), only that a run is counted when, and only when,
every instance arrived, and that the breakdown measures the product's steps.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.bench_scripts import load_bench_script
from tests.e2e_fixtures import NodeProcess


def load_bench() -> ModuleType:
    """``bench/receive.py`` as a module (``bench`` is not a package)."""
    return load_bench_script("receive")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


def test_storescp_and_node_runs_count_every_instance_and_duplicates_do_not(
    bench: ModuleType, tmp_path: Path
) -> None:
    series = bench.generate_series(tmp_path / "series", slices=4, matrix=16)
    assert series.count == 4 and len(list(series.folder.iterdir())) == 4

    baseline = bench.run_storescp([series], tmp_path, timeout=60.0)
    assert baseline.complete and baseline.instances == 4 and baseline.size == series.size
    assert not (tmp_path / "storescp-out").exists()  # removed after each run

    with NodeProcess(tmp_path / "node", settings={"quiet_time": 3600.0}) as node:
        first = bench.run_node(node, [series], timeout=60.0)
        assert first.complete
        assert bench.node_counts(node) == (4, 4)
        # The node already holds these instances: duplicates add no row and
        # no file, so a second send must not count as 4 instances received.
        again = bench.run_node(node, [series], timeout=60.0)
        assert not again.complete
        assert bench.node_counts(node) == (4, 4)


def test_breakdown_measures_the_receiver_steps_and_the_null_scp(
    bench: ModuleType, tmp_path: Path
) -> None:
    series = bench.generate_series(tmp_path / "series", slices=3, matrix=16)
    steps = bench.storage_ms(series, tmp_path / "data")
    assert set(steps) == {"prepare", "file", "record", "commit"}
    assert all(value > 0 for value in steps.values())
    # The steps stored every instance durably where the node would.
    stored = sorted((tmp_path / "data" / "instances").rglob("*.dcm"))
    assert len(stored) == 3
    assert bench.transport_ms(series, timeout=60.0) > 0
    assert bench.fsync_latency(tmp_path / "probe", count=3) > 0
    assert not (tmp_path / "probe").exists()


def test_main_exits_0_and_prints_both_sides_and_the_breakdown(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench.main(["--slices", "3", "--matrix", "16", "--associations", "2",
                       "--repeat", "1", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "INCOMPLETE" not in out
    for text in ("single", "concurrent", "ratio", "storescp", "node end to end",
                 "commit: SQLite WAL"):
        assert text in out
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone
