"""Counts kept on write for `/metrics`: per classifier version, predicted label and confidence
bucket, added to with each chunk's results in the same transaction, so a scrape reads a few
rows whatever the number of results."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Classifier, ScoredCount
from db.session import upsert
from labelq.dashboard import score_columns

# Upper bounds of the Prometheus confidence histogram's buckets (+Inf is added).
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def confidence_bucket(confidence: float) -> int:
    """The histogram bucket k holding a confidence: (bound[k-1], bound[k]], the last +Inf."""
    return bisect_left(CONFIDENCE_BUCKETS, confidence)


def count_scored(s: Session, classifier_id: int, results: Iterable[dict[str, Any]]) -> None:
    """Add one classifier version's new results to `ScoredCount`, in the caller's transaction:
    one upsert of a row per label and bucket, in key order, so two chunks completing at once
    lock the same rows in the same order and never deadlock."""
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0])
    for result in results:
        scored = score_columns(result)
        predicted, confidence = scored["predicted"], scored["confidence"]
        if predicted is None or confidence is None:
            continue
        row = sums[str(predicted), confidence_bucket(float(confidence))]
        row[0] += 1
        row[1] += float(confidence)
    if not sums:
        return
    insert = upsert(s, ScoredCount)
    rows = [
        {
            "classifier_id": classifier_id,
            "predicted": predicted,
            "bucket": bucket,
            "count": int(n),
            "confidence_sum": total,
        }
        for (predicted, bucket), (n, total) in sorted(sums.items())
    ]
    s.execute(
        insert.values(rows).on_conflict_do_update(
            index_elements=["classifier_id", "predicted", "bucket"],
            set_={
                "count": ScoredCount.count + insert.excluded.count,
                "confidence_sum": ScoredCount.confidence_sum + insert.excluded.confidence_sum,
            },
        )
    )


def confidence_by_classifier(s: Session) -> list[tuple[str, str, int, str, int, int, float]]:
    """(tenant, name, version, predicted, bucket index, count, confidence sum) over every scored
    item, read from the counts kept on write."""
    rows = s.execute(
        select(
            Classifier.tenant,
            Classifier.name,
            Classifier.version,
            ScoredCount.predicted,
            ScoredCount.bucket,
            ScoredCount.count,
            ScoredCount.confidence_sum,
        ).join(Classifier, Classifier.id == ScoredCount.classifier_id)
    )
    return [(t, n, int(v), str(p), int(b), int(c), float(tot)) for t, n, v, p, b, c, tot in rows]
