"""Liveness, readiness and metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from api.deps import Monitoring, Scraping, StateDep
from api.errors import Forbidden
from service import monitoring
from service.keys import LOCAL

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (`async`: no threadpool hop for a probe)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(response: Response, st: StateDep, call: Monitoring) -> dict[str, Any]:
    """Ready when the database answers. A broker that does not is reported (`degraded`) but
    keeps the process ready: jobs are still taken and stored, and the reconciler sends their
    tasks once the broker is back, so a Redis blip must not take every API pod out of its
    Service at once. Queues with unfinished jobs and no live worker are listed under
    `unserved_queues`, and how many pipelines keep failing under `failing_pipelines` (the
    service is still ready: it takes jobs; these need an operator)."""
    unserved = await call(monitoring.unserved_queues)
    broker = await call(monitoring.broker_answers)
    failing = await call(monitoring.failing_pipelines) if unserved is not None else []
    checks = {"database": unserved is not None, "broker": broker}
    ready = checks["database"]
    response.status_code = 200 if ready else 503
    return {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "degraded": [name for name, ok in checks.items() if not ok],
        "unserved_queues": unserved or [],
        # a count: this probe answers anyone, the names are /metrics' and each tenant's own
        "failing_pipelines": len(failing),
    }


@router.get("/metrics")
async def metrics(st: StateDep, call: Scraping, system: Monitoring) -> Response:
    """The app's own counters, plus gauges read from the database at scrape time: the
    operator's (a key of the default tenant with the `metrics` scope). Per classifier only with
    LABELQ_METRICS_CLASSIFIER_LABELS: else one series over every tenant's classifiers, naming
    none of them."""
    if call.who.tenant != LOCAL.tenant:
        raise Forbidden(
            "/metrics is the operator's: every tenant's figures (a key of the default tenant)",
            field="Authorization",
        )
    snap = await system(monitoring.snapshot)
    registry = CollectorRegistry()
    registry.register(
        _DatabaseCollector(
            snap, st.settings.metrics_classifier_labels, st.settings.engine_hour_price
        )
    )
    body = generate_latest(st.metrics.registry) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class _DatabaseCollector(Collector):
    """Series read from the database at scrape time, so every API process reports the same
    totals whichever worker scored the items."""

    def __init__(
        self, snap: monitoring.Snapshot, per_classifier: bool, hour_price: float | None = None
    ):
        self.snap = snap
        self.per_classifier = per_classifier
        self.hour_price = hour_price

    def drift(self) -> Iterable[Metric]:
        """Drift alarms raised at the monitors' last checks: a count over every tenant, and
        per classifier and signal (0 or 1, with the value) with the classifier labels."""
        raised = GaugeMetricFamily(
            "labelq_drift_alarms", "Drift signals raised at the monitors' last checks"
        )
        total = 0
        per = GaugeMetricFamily(
            "labelq_drift_raised",
            "A drift signal past its threshold at the last check (1) or not (0)",
            labels=["tenant", "classifier", "signal"],
        )
        value = GaugeMetricFamily(
            "labelq_drift_value",
            "A drift signal's value at the last check",
            labels=["tenant", "classifier", "signal"],
        )
        for tenant, classifier, state in self.snap.drift:
            for signal, found in ((state or {}).get("signals") or {}).items():
                total += bool(found.get("raised"))
                if self.per_classifier:
                    per.add_metric([tenant, classifier, signal], float(bool(found.get("raised"))))
                    if found.get("value") is not None:
                        value.add_metric([tenant, classifier, signal], float(found["value"]))
        raised.add_metric([], total)
        yield raised
        if self.per_classifier:
            yield from (per, value)

    def cost(self) -> Iterable[Metric]:
        """Engine time, prompt tokens and items scored, summed over the jobs that recorded
        them: per tenant and classifier version with the classifier labels, else one total
        (/metrics names no tenant then); money with a price."""
        names = ["tenant", "classifier", "version"] if self.per_classifier else []
        seconds = CounterMetricFamily(
            "labelq_engine_seconds", "Engine time spent scoring (fair shares)", labels=names
        )
        tokens = CounterMetricFamily("labelq_prompt_tokens", "Prompt tokens scored", labels=names)
        items = CounterMetricFamily(
            "labelq_costed_items", "Items scored in jobs whose cost was recorded", labels=names
        )
        money = CounterMetricFamily(
            "labelq_engine_cost",
            "Engine hours times LABELQ_ENGINE_HOUR_PRICE",
            labels=names,
        )
        totals: dict[tuple[str, ...], list[float]] = {}
        for tenant, name, version, spent, prompt, scored in self.snap.costs:
            key: tuple[str, ...] = (tenant, name, str(version)) if self.per_classifier else ()
            row = totals.setdefault(key, [0.0, 0.0, 0.0])
            row[0] += spent
            row[1] += prompt
            row[2] += scored
        for labels, (engine, prompts, done) in sorted(totals.items()):
            seconds.add_metric(list(labels), engine)
            tokens.add_metric(list(labels), prompts)
            items.add_metric(list(labels), done)
            if self.hour_price is not None:
                money.add_metric(list(labels), engine / 3600 * self.hour_price)
        yield from (seconds, tokens, items)
        if self.hour_price is not None:
            yield money

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("labelq_jobs", "Jobs by state", labels=["state"])
        for job_state, count in self.snap.jobs_by_state.items():
            jobs.add_metric([job_state], count)
        live = GaugeMetricFamily(
            "labelq_queue_workers", "Live workers per model queue", labels=["queue"]
        )
        waiting = GaugeMetricFamily(
            "labelq_queue_unfinished_jobs",
            "Unfinished jobs per model queue (with no live worker they cannot progress)",
            labels=["queue", "served"],
        )
        work = GaugeMetricFamily(
            "labelq_queue_chunks",
            "Chunks per model queue waiting for a worker (pending) or being scored (running): "
            "what workers scale on",
            labels=["queue", "state"],
        )
        cannot_load = GaugeMetricFamily(
            "labelq_queue_workers_failing_to_load",
            "Workers of a model queue that cannot load its model (they take no tasks and try "
            "again; a job waiting there says why)",
            labels=["queue"],
        )
        for q in self.snap.queues:
            live.add_metric([q.queue], q.live_workers)
            cannot_load.add_metric([q.queue], q.failing_to_load)
            waiting.add_metric([q.queue, "yes" if q.live_workers else "no"], q.unfinished_jobs)
            work.add_metric([q.queue, "pending"], q.pending_chunks)
            work.add_metric([q.queue, "running"], q.running_chunks)
        names = ["tenant", "classifier", "version"] if self.per_classifier else []
        confidence = HistogramMetricFamily(
            "labelq_confidence", "Confidence of scored items (as stored)", labels=names
        )
        predicted = CounterMetricFamily(
            "labelq_predictions",
            "Scored items (per predicted label with the classifier labels)",
            labels=[*names, "label"] if names else [],
        )
        bounds = [*map(str, monitoring.CONFIDENCE_BUCKETS), "+Inf"]
        readings = self.snap.classifiers if names else [monitoring.merged(self.snap.classifiers)]
        for c in readings:
            key = [c.tenant, c.name, str(c.version)] if names else []
            confidence.add_metric(
                key, list(zip(bounds, c.cumulative, strict=True)), c.confidence_sum
            )
            if names:
                for label, count in sorted(c.predicted.items()):
                    predicted.add_metric([*key, label], count)
            else:
                predicted.add_metric([], c.count)
        failing = GaugeMetricFamily(
            "labelq_pipelines_failing",
            "Enabled pipelines with LABELQ_PIPELINE_FAILING_AFTER or more failed runs in a row",
        )
        failing.add_metric([], len(self.snap.failing_pipelines))
        deliveries = GaugeMetricFamily(
            "labelq_webhook_deliveries",
            "Webhook deliveries by status (failed: their retry window ran out)",
            labels=["status"],
        )
        for status in ("pending", "delivered", "failed"):
            deliveries.add_metric([status], self.snap.webhooks.get(status, 0))
        yield from (
            jobs,
            live,
            waiting,
            work,
            cannot_load,
            confidence,
            predicted,
            failing,
            deliveries,
        )
        yield from self.cost()
        yield from self.drift()
        if self.per_classifier:
            in_a_row = GaugeMetricFamily(
                "labelq_pipeline_failed_runs_in_a_row",
                "Failed runs since the pipeline last succeeded (failing pipelines only)",
                labels=["tenant", "pipeline"],
            )
            for p in self.snap.failing_pipelines:
                in_a_row.add_metric([p.tenant, p.name], p.failures_in_a_row)
            yield in_a_row
