"""Load: 8 studies over 8 concurrent associations, nothing lost, C-ECHO within 1 s.

A smaller run of ``bench/load.py`` (same code, :mod:`tests.load_fixtures`):
a real Orthanc as the destination, a real ``deepsc-node serve`` with the
bundled model, 8 phantom chest-CT studies (32 slices of 128 x 128 each, so
that the run fits a couple of minutes on a 2-core machine) sent at once over
8 associations, a C-ECHO probe in its own process every 0.5 s during the
whole run. Nothing is mocked.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.load_fixtures import LoadConfig, LoadReport, run_load

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: The load of this test: the issue's 8 studies over 8 associations, small series.
CONFIG = LoadConfig(studies=8, associations=8, slices=32, matrix=128, timeout=200.0)
#: The node must answer a C-ECHO (association, echo, release) faster than this.
ECHO_LIMIT_S = 1.0
#: Peak resident memory the node may reach under this load (it needs ~0.5 GiB).
RSS_LIMIT_MIB = 2048.0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadReport]:
    result = run_load(CONFIG, tmp_path_factory.mktemp("load"), log=print)
    print(result.table())
    yield result


def test_every_instance_is_acknowledged_and_kept(report: LoadReport) -> None:
    assert report.instances_sent == CONFIG.studies * CONFIG.slices
    refused = {s.series_instance_uid: s.refused[:3] for s in report.studies if s.refused}
    assert refused == {}
    assert report.instances_acknowledged == report.instances_sent
    assert report.instances_lost == 0


def test_every_series_gets_exactly_one_seg_and_one_sr_in_orthanc(report: LoadReport) -> None:
    assert not report.timed_out, report.table()
    counts = {s.series_instance_uid: (s.seg_count, s.sr_count) for s in report.studies}
    assert counts == {uid: (1, 1) for uid in counts}
    assert len(report.delivered) == CONFIG.studies
    assert report.results_lost == 0 and report.duplicate_results == 0
    assert {s.job_state for s in report.studies} == {"exported"}


def test_node_answers_c_echo_within_1_s_during_the_whole_load(report: LoadReport) -> None:
    # One probe every 0.5 s from before the first C-STORE to the last result.
    assert len(report.echoes) >= report.wall_s / CONFIG.echo_interval * 0.5
    assert report.echo_failures == 0, [e for e in report.echoes if not e.ok][:3]
    assert report.echo_max_s < ECHO_LIMIT_S, report.table()


def test_node_memory_is_measured_and_bounded_and_it_stops_cleanly(report: LoadReport) -> None:
    assert 0 < report.idle_rss_mib < report.peak_rss_mib < RSS_LIMIT_MIB
    assert report.peak_tree_rss_mib >= report.idle_rss_mib
    assert report.node_exit_code == 0
    assert report.failures() == []
