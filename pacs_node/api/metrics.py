"""Prometheus metrics computed at scrape time from the database.

:class:`NodeCollector` is a ``prometheus_client`` custom collector: each
scrape of ``GET /metrics`` runs :func:`storage.metrics.metrics_snapshot` in a
short read-only session, so the numbers are those of the database (shared
by every process of the node, kept across restarts) and no module needs a
counter hook. Metric names (see ``docs/api.md``)::

    deepsc_instances_received_total          counter    instances stored
    deepsc_series_received_total             counter    series seen
    deepsc_studies_received_total            counter    studies seen
    deepsc_jobs{state}                       gauge      jobs per state
    deepsc_results_total{predicted_class}    counter    results per class
    deepsc_triage_total{priority}            counter    triage decisions
    deepsc_exports{status}                   gauge      exports per status
    deepsc_export_attempts_total{outcome}    counter    C-STORE attempts
    deepsc_export_failures_total             counter    failed attempts
    deepsc_inference_seconds                 histogram  model stage per result
    deepsc_processing_seconds                histogram  whole series processing
    deepsc_oldest_queued_job_age_seconds     gauge      0 when none waits
    deepsc_database_up                       gauge      1, or 0 if unreadable

When the database cannot be read, only ``deepsc_database_up 0`` is exposed
(and a WARNING is logged), so the scrape itself still succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage.metrics import HistogramData, MetricsSnapshot, metrics_snapshot

LOGGER = logging.getLogger(__name__)

__all__ = ["LATENCY_BUCKETS", "NodeCollector"]

#: Upper bounds (seconds) of the latency histogram buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0
)


def _histogram(name: str, documentation: str, data: HistogramData) -> HistogramMetricFamily:
    buckets = [(repr(bound), float(count)) for bound, count in data.buckets]
    buckets.append(("+Inf", float(data.count)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=data.total)


class NodeCollector(Collector):
    """Collects the node's metrics from the database on every scrape.

    Parameters
    ----------
    session_factory: sqlalchemy.orm.sessionmaker
        The node's sessions.
    clock: Callable[[], datetime]
        Current time, timezone-aware (for the age of the oldest queued job).
    buckets: Sequence[float]
        Latency histogram bucket bounds in seconds.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        clock: Callable[[], datetime],
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.buckets = tuple(buckets)

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (called by the registry at each scrape)."""
        up = GaugeMetricFamily("deepsc_database_up", "Whether the database could be read")
        try:
            with self.session_factory() as session:
                snapshot = metrics_snapshot(session, self.buckets)
        except SQLAlchemyError as exc:
            LOGGER.warning("metrics: cannot read the database: %s", type(exc).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from self._families(snapshot)

    def _families(self, snapshot: MetricsSnapshot) -> Iterator[Metric]:
        for name, documentation, value in (
            ("deepsc_instances_received", "DICOM instances received and stored",
             snapshot.instances_received),
            ("deepsc_series_received", "Series received", snapshot.series_received),
            ("deepsc_studies_received", "Studies received", snapshot.studies_received),
            ("deepsc_export_failures", "Failed C-STORE attempts of result objects",
             snapshot.export_attempts_failed),
        ):
            yield CounterMetricFamily(name, documentation, value=float(value))
        jobs = GaugeMetricFamily("deepsc_jobs", "Jobs per state", labels=["state"])
        for state, count in snapshot.jobs_by_state.items():
            jobs.add_metric([state.value], float(count))
        yield jobs
        classes = CounterMetricFamily(
            "deepsc_results", "Results written, per predicted class", labels=["predicted_class"]
        )
        for name, count in sorted(snapshot.results_by_class.items()):
            classes.add_metric([name], float(count))
        yield classes
        triage = CounterMetricFamily(
            "deepsc_triage", "Triage decisions recorded, per priority", labels=["priority"]
        )
        for name, count in sorted(snapshot.triage_by_priority.items()):
            triage.add_metric([name], float(count))
        yield triage
        exports = GaugeMetricFamily(
            "deepsc_exports", "Exports (result object x destination) per status", labels=["status"]
        )
        for status, count in snapshot.exports_by_status.items():
            exports.add_metric([status.value], float(count))
        yield exports
        attempts = CounterMetricFamily(
            "deepsc_export_attempts", "Finished C-STORE attempts of result objects",
            labels=["outcome"],
        )
        attempts.add_metric(["success"], float(snapshot.export_attempts_succeeded))
        attempts.add_metric(["failure"], float(snapshot.export_attempts_failed))
        yield attempts
        yield _histogram(
            "deepsc_inference_seconds",
            "Seconds of the model stage per result (recorded timings)",
            snapshot.inference_seconds,
        )
        yield _histogram(
            "deepsc_processing_seconds",
            "Seconds to process a series: read, volume, model, analysis, encoding",
            snapshot.processing_seconds,
        )
        age = 0.0
        if snapshot.oldest_queued_at is not None:
            age = max(0.0, (self.clock() - snapshot.oldest_queued_at).total_seconds())
        yield GaugeMetricFamily(
            "deepsc_oldest_queued_job_age_seconds",
            "Seconds the longest-waiting queued job has waited (0: none)",
            value=age,
        )
