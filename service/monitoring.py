"""What `/metrics` reads from the database at scrape time: jobs by state, queues and their
workers, and per classifier version the confidence histogram and predicted-label counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from db import dashboard
from db.jobs import count_jobs_by_state
from service.workers import QueueHealth, queues

CONFIDENCE_BUCKETS = dashboard.CONFIDENCE_BUCKETS


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


def snapshot(s: Session, stale_after: float) -> Snapshot:
    found: dict[tuple[str, str, int], ClassifierReadings] = {}
    for (
        tenant,
        name,
        version,
        predicted,
        bucket,
        count,
        total,
    ) in dashboard.confidence_by_classifier(s):
        r = found.setdefault((tenant, name, version), ClassifierReadings(tenant, name, version))
        for k in range(bucket, len(r.cumulative)):
            r.cumulative[k] += count
        r.confidence_sum += total
        r.predicted[predicted] = r.predicted.get(predicted, 0) + count
    return Snapshot(
        count_jobs_by_state(s), queues(s, stale_after), [found[k] for k in sorted(found)]
    )
