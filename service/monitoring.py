"""What `/metrics` reads from the database at scrape time: jobs by state, queues and their
workers, and per classifier version the confidence histogram and predicted-label counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from db import chunks, counts, drift, pipelines, webhooks
from db.jobs import count_jobs_by_state
from db.session import ping
from service.context import Ctx
from service.workers import QueueHealth, queues

CONFIDENCE_BUCKETS = counts.CONFIDENCE_BUCKETS


@dataclass
class ClassifierReadings:
    """One classifier version's scored items: cumulative confidence counts per bucket bound
    (the last is +Inf), their sum, and counts per predicted label."""

    tenant: str
    name: str
    version: int
    cumulative: list[int] = field(default_factory=lambda: [0] * (len(CONFIDENCE_BUCKETS) + 1))
    confidence_sum: float = 0.0
    predicted: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.cumulative[-1]


@dataclass
class Snapshot:
    jobs_by_state: dict[str, int]
    queues: list[QueueHealth]
    classifiers: list[ClassifierReadings]
    failing_pipelines: list[FailingPipeline]
    # (tenant, classifier, version, engine seconds, prompt tokens, items scored), where recorded
    costs: list[tuple[str, str, int, float, int, int]] = field(default_factory=list)
    # (tenant, classifier, last check's state) of every enabled drift monitor
    drift: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    webhooks: dict[str, int] = field(default_factory=dict)  # deliveries by status


def snapshot(ctx: Ctx) -> Snapshot:
    """Every tenant's figures (the system context)."""
    found: dict[tuple[str, str, int], ClassifierReadings] = {}
    with ctx.reads() as s:
        by_classifier = counts.confidence_by_classifier(s)
        by_state = count_jobs_by_state(s)
        costs = chunks.cost_by_classifier(s) if ctx.services.features.has(s, "cost") else []
        monitors = drift.every_state(s) if ctx.services.features.has(s, "drift") else []
        deliveries = webhooks.count_by_status(s)
    for tenant, name, version, predicted, bucket, count, total in by_classifier:
        r = found.setdefault((tenant, name, version), ClassifierReadings(tenant, name, version))
        for k in range(bucket, len(r.cumulative)):
            r.cumulative[k] += count
        r.confidence_sum += total
        r.predicted[predicted] = r.predicted.get(predicted, 0) + count
    return Snapshot(
        by_state,
        queues(ctx),
        [found[k] for k in sorted(found)],
        failing_pipelines(ctx),
        costs,
        monitors,
        deliveries,
    )


@dataclass(frozen=True)
class FailingPipeline:
    tenant: str
    name: str
    failures_in_a_row: int
    last_error: str | None


def failing_pipelines(ctx: Ctx) -> list[FailingPipeline]:
    """Every tenant's enabled pipelines with LABELQ_PIPELINE_FAILING_AFTER failed runs in a row:
    one unattended for weeks stops in plain sight."""
    with ctx.reads() as s:
        rows = pipelines.failing(s, ctx.settings.pipeline_failing_after)
    return [FailingPipeline(*row) for row in rows]


def unserved_queues(ctx: Ctx) -> list[str] | None:
    """Queues with unfinished jobs and no live worker; None when the database does not
    answer (readiness)."""
    try:
        with ctx.reads() as s:
            ping(s)
        return [q.queue for q in queues(ctx) if q.unfinished_jobs and not q.live_workers]
    except Exception:
        return None


def broker_answers(ctx: Ctx) -> bool:
    """Whether the broker that carries tasks to workers answers (readiness)."""
    return ctx.dispatcher.ping()


def merged(classifiers: list[ClassifierReadings]) -> ClassifierReadings:
    """Every classifier's readings as one, naming none of them (no tenant, classifier or label
    name)."""
    out = ClassifierReadings("", "", 0)
    for c in classifiers:
        out.cumulative = [a + b for a, b in zip(out.cumulative, c.cumulative, strict=True)]
        out.confidence_sum += c.confidence_sum
    return out
