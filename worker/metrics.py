"""A worker's own Prometheus metrics, served on LABELQ_WORKER_METRICS_PORT: what only the
worker knows (the API's /metrics reads the database: queues, jobs, webhooks). Each runtime has
its registry; nothing is registered globally."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Seconds a chunk task takes, from claim to write: 1 s to 30 min.
CHUNK_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 1800, float("inf"))


class _EngineSeconds(Collector):
    def __init__(self, busy: Callable[[], float], queue: str):
        self.busy, self.queue = busy, queue

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "labelq_worker_engine_seconds",
            "Seconds this worker's engine spent scoring (busy with at least one call).",
            labels=["queue"],
        )
        family.add_metric([self.queue], self.busy())
        yield family


class WorkerMetrics:
    def __init__(self, queue: str, engine_busy: Callable[[], float]):
        self.queue = queue
        self.registry = CollectorRegistry()
        labels = ["queue"]
        self.load_seconds = Gauge(
            "labelq_worker_model_load_seconds",
            "Seconds the last successful load of this worker's model took (engine start and "
            "warm-up).",
            labels,
            registry=self.registry,
        ).labels(queue)
        self.load_failures = Counter(
            "labelq_worker_model_load_failures",
            "Attempts to load this worker's model that failed.",
            labels,
            registry=self.registry,
        ).labels(queue)
        self.ready = Gauge(
            "labelq_worker_ready",
            "1 once the worker has its model and takes tasks, else 0.",
            labels,
            registry=self.registry,
        ).labels(queue)
        self._chunks = Histogram(
            "labelq_worker_chunk_seconds",
            "Seconds a chunk task took on this worker, claim to write, by outcome (scored: "
            "written; skipped: nothing to write, e.g. done, held elsewhere or handed back).",
            [*labels, "outcome"],
            buckets=CHUNK_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineSeconds(engine_busy, queue))

    @contextmanager
    def chunk(self) -> Iterator[dict[str, Any]]:
        """Times one chunk task; the caller sets `outcome` in the dict it gets ("scored",
        "skipped"); an exception counts as "failed"."""
        started = time.monotonic()
        seen: dict[str, Any] = {"outcome": "failed"}
        try:
            yield seen
        finally:
            self._chunks.labels(self.queue, seen["outcome"]).observe(time.monotonic() - started)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve these metrics over HTTP on `port` (a thread of this process); its server."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
