"""Prometheus metrics of one app (its own registry: no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "labelq_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "labelq_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.jobs_submitted = Counter(
            "labelq_jobs_submitted", "Jobs accepted", registry=self.registry
        )
        self.items_ingested = Counter(
            "labelq_items_ingested", "Items accepted into jobs", ["status"], registry=self.registry
        )
