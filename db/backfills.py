"""Data backfills that run outside the schema change, in short batches that can stop anywhere.

A revision only adds what is cheap on any size (a nullable column, a table, an index built
concurrently); filling existing rows is a backfill here. Each batch is one transaction of at
most `batch` rows, found by a predicate that the batch itself makes false ("a scored item with
no dashboard columns"), so a backfill needs no cursor: one cut off by a crash, a deploy or a
Ctrl-C goes on from where it stopped on its next run, and rows that a previous release's worker
writes after the migration (it knows nothing of the columns) are found the same way by the
reconciler's sweep (migration 0021's partial index keeps that look-up to the rows concerned).

Invariant kept with `db.counts`: a succeeded item is counted in `scored_counts` exactly when
its `scored_at` is set. Writers of this release set both in one transaction; the backfill
fills the columns and counts the row in one transaction too, so `/metrics` sees every row once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.counts import count_scored
from db.models import ItemStatus, Job, JobItem
from labelq.dashboard import gold_columns, score_columns

# The rows the dashboard-columns backfill is about: migration 0021 indexes exactly these.
UNFILLED = (
    JobItem.status == ItemStatus.succeeded,
    JobItem.scored_at.is_(None),
)


def fill_scored_columns(s: Session, batch: int) -> int:
    """Fill the dashboard's columns (classifier version, prediction, confidence, correctness,
    Brier score, scoring time) of at most `batch` scored items that lack them, from their
    result JSON, and count them for `/metrics`. Returns how many rows it filled; 0 when none
    is left. Rows another transaction is filling are skipped, not waited for (PostgreSQL)."""
    when = func.coalesce(Job.finished_at, Job.started_at, Job.created_at)
    query = (
        select(JobItem.id, JobItem.result, JobItem.gold_label, Job.classifier_id, when)
        .join(Job, Job.id == JobItem.job_id)
        .where(*UNFILLED)
        .order_by(JobItem.id)
        .limit(batch)
    )
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=JobItem, skip_locked=True)
    rows = s.execute(query).all()
    if not rows:
        return 0
    filled: list[dict[str, Any]] = []
    by_classifier: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for item_id, result, gold, classifier_id, scored_at in rows:
        filled.append(_columns(item_id, result, gold, classifier_id, scored_at))
        if isinstance(result, dict):
            by_classifier[classifier_id].append(result)
    s.execute(update(JobItem), filled)  # one UPDATE by primary key, many parameter sets
    for classifier_id, results in sorted(by_classifier.items()):
        count_scored(s, classifier_id, results)
    return len(rows)


def _columns(
    item_id: int, result: Any, gold: str | None, classifier_id: int, scored_at: datetime
) -> dict[str, Any]:
    # A result that is not an object (hand-edited, or from a release that stored it otherwise)
    # still gets its time: it must leave the predicate, or every later batch would read it again.
    parsed = result if isinstance(result, dict) else {}
    return {
        "id": item_id,
        "classifier_id": classifier_id,
        **score_columns(parsed),
        **gold_columns(parsed or None, gold),
        "scored_at": scored_at,
    }


def run(
    begin: Callable[[], AbstractContextManager[Session]], batch: int, budget: int | None
) -> int:
    """`fill_scored_columns` batch after batch, each in its own transaction from `begin`, until
    no row is left or `budget` rows are filled (None: no bound). Returns the rows filled."""
    done = 0
    while budget is None or done < budget:
        with begin() as s:
            n = fill_scored_columns(s, batch if budget is None else min(batch, budget - done))
        if not n:
            break
        done += n
    return done


def unfilled_scored(s: Session) -> int:
    """How many scored items still lack their dashboard columns."""
    return int(s.scalar(select(func.count()).select_from(JobItem).where(*UNFILLED)) or 0)
