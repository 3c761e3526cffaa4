"""Erasure and retention, on a caller's Session: a job's erasure is asked for in one statement
(`request`) and done by `step` in bounded batches, each in its own short transaction, so a
million-item job never holds locks for long and an erasure cut off halfway goes on at the
next step. A tenant's erasure (`tenant_rows`) removes what is not a job's.

What each level removes is `db.models.Erase`'s docstring. The numbers kept by `content`
(a scored item's predicted label, confidence, correctness, Brier score, times) are what the
dashboard and `/metrics` aggregate; `scored_counts` is never decremented. At `items` each
scored row's numbers move to `items_archive` in the batch that deletes it (the dashboard reads
it beside `items`); at `job` they go with the job row (a foreign key's cascade).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, null, or_, select, update
from sqlalchemy.orm import Session

from db.chunks import cancel_job
from db.models import (
    ARCHIVED_COLUMNS,
    ENDED_STATES,
    UNFINISHED_STATES,
    ApiKey,
    ArchivedItem,
    Calibration,
    Chunk,
    Classifier,
    DriftMonitor,
    Erase,
    Job,
    JobItem,
    JobState,
    Pipeline,
    PipelineRun,
    ScoredCount,
    WebhookDelivery,
    WebhookSecret,
    utcnow,
)
from db.session import rowcount

ENDED = tuple(ENDED_STATES)
_CONTENT = (
    JobItem.input.is_not(None),
    JobItem.result.is_not(None),
    JobItem.custom_id.is_not(None),
    JobItem.error.is_not(None),
)


def request(s: Session, job: Job, level: Erase) -> bool:
    """Ask for `level` on `job` (its row locked by the caller): a job still going is cancelled
    first (it is erased once its chunks being scored have written). A stronger level than
    asked before wins; a job erased at a weaker level is erased again. False when it asks
    nothing new."""
    if not JobState(job.state).finished and job.state != JobState.cancelling:
        cancel_job(s, job.id, tenant=job.tenant)
    current = Erase(job.erase) if job.erase else None
    if current is not None and current.level >= level.level:
        return False
    job.erase = level
    job.erased_at = None
    return True


@dataclass(frozen=True)
class Step:
    job_id: str
    level: Erase
    rows: int  # item rows changed or deleted
    done: bool  # the job's erasure is complete (its row is gone at level `job`)


def pending(s: Session, limit: int, *, tenant: str | None) -> list[tuple[str, Erase]]:
    """Ended jobs with an erasure still to do, oldest first (a job still scoring waits: its
    chunks write their results first, then it is erased)."""
    query = (
        select(Job.id, Job.erase)
        .where(Job.erase.is_not(None), Job.erased_at.is_(None), Job.state.in_(ENDED))
        .order_by(Job.created_at)
        .limit(limit)
    )
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    return [(job_id, Erase(str(level))) for job_id, level in s.execute(query)]


def step(s: Session, job_id: str, level: Erase, batch: int, *, archive: bool) -> Step:
    """One batch of a job's erasure: up to `batch` item rows scrubbed (`content`) or deleted;
    when none is left, its chunks and deliveries, then the job row's own content (or the row,
    at `job`). `archive`: the schema has `items_archive` (migration 0023); without it an
    `items` erasure waits (a `Step` of no rows, not done) rather than lose the figures."""
    items = select(JobItem.id).where(JobItem.job_id == job_id)
    if level == Erase.content:
        ids = items.where(or_(*_CONTENT)).limit(batch).scalar_subquery()
        changed = s.execute(
            update(JobItem)
            .where(JobItem.id.in_(ids))
            # null(): SQL NULL; None would store JSON `null` in a JSON column, a row that
            # still matches "has content" and an erasure that never ends
            .values(input=null(), result=null(), custom_id=None, error=None, error_field=None)
            .execution_options(synchronize_session=False)
        )
    else:
        chosen = list(s.scalars(items.limit(batch)))  # the same rows archived, then deleted
        if level == Erase.items and chosen:
            if not archive:  # this code on a schema before 0023: wait for the upgrade
                return Step(job_id, level, 0, done=False)
            keep_numbers(s, chosen)
        changed = s.execute(
            delete(JobItem)
            .where(JobItem.id.in_(chosen))
            .execution_options(synchronize_session=False)
        )
    rows = rowcount(changed)
    if rows == batch:
        return Step(job_id, level, rows, done=False)
    s.execute(delete(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
    if level != Erase.content:
        s.execute(delete(Chunk).where(Chunk.job_id == job_id))
    s.execute(update(PipelineRun).where(PipelineRun.job_id == job_id).values(job_id=None))
    if level == Erase.job:
        s.execute(delete(Job).where(Job.id == job_id))
    else:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                metadata_={},
                error=None,
                webhook_url=None,
                idempotency_key=None,
                erased_at=utcnow(),
            )
        )
    return Step(job_id, level, rows, done=True)


def keep_numbers(s: Session, item_ids: list[int]) -> None:
    """Keep the dashboard's numbers of the scored items among `item_ids` (`ArchivedItem`)."""
    columns = [getattr(JobItem, name) for name in ARCHIVED_COLUMNS]
    s.execute(
        insert(ArchivedItem).from_select(
            list(ARCHIVED_COLUMNS),
            select(*columns).where(JobItem.id.in_(item_ids), JobItem.scored_at.is_not(None)),
        )
    )


def expired_jobs(
    s: Session,
    classifier_ids: list[int] | None,
    before: datetime,
    level: Erase,
    limit: int,
    *,
    tenant: str,
) -> int:
    """Mark for `level` the ended jobs of `tenant` (of `classifier_ids`, or all) created before
    `before` that no erasure of that level was asked for; how many."""
    weaker = [e.value for e in Erase if e.level < level.level]
    chosen = (
        select(Job.id)
        .where(
            Job.tenant == tenant,
            Job.created_at < before,
            Job.state.in_(ENDED),
            or_(Job.erase.is_(None), Job.erase.in_(weaker)),
        )
        .limit(limit)
    )
    if classifier_ids is not None:
        chosen = chosen.where(Job.classifier_id.in_(classifier_ids))
    return rowcount(
        s.execute(
            update(Job)
            .where(Job.id.in_(chosen.scalar_subquery()))
            .values(erase=level, erased_at=None)
            .execution_options(synchronize_session=False)
        )
    )


def tenants_with_jobs(s: Session) -> list[str]:
    return list(s.scalars(select(Job.tenant).distinct().order_by(Job.tenant)))


def other_classifiers(s: Session, but: list[int], *, tenant: str) -> list[int]:
    """The tenant's classifier rows other than `but`."""
    return list(
        s.scalars(
            select(Classifier.id).where(Classifier.tenant == tenant, Classifier.id.not_in(but))
        )
    )


def unfinished_jobs(s: Session, *, tenant: str) -> list[str]:
    return list(
        s.scalars(select(Job.id).where(Job.tenant == tenant, Job.state.in_(UNFINISHED_STATES)))
    )


def mark_tenant_jobs(s: Session, *, tenant: str) -> int:
    """Every job of `tenant` to be erased whole."""
    return rowcount(
        s.execute(
            update(Job)
            .where(Job.tenant == tenant, or_(Job.erase.is_(None), Job.erase != Erase.job))
            .values(erase=Erase.job, erased_at=None)
        )
    )


def revoke_keys(s: Session, *, tenant: str) -> int:
    """The tenant's keys first: nothing new arrives while its data goes."""
    return rowcount(s.execute(delete(ApiKey).where(ApiKey.tenant == tenant)))


def disable_pipelines(s: Session, *, tenant: str) -> None:
    s.execute(update(Pipeline).where(Pipeline.tenant == tenant).values(enabled=False))


def jobs_left(s: Session, *, tenant: str) -> int:
    return int(s.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant)) or 0)


def tenant_rows(s: Session, *, tenant: str, drift: bool) -> dict[str, int]:
    """What is the tenant's but no job's: pipelines (their runs, files and keys cascade),
    deliveries, its webhook secret, calibrations, counts and classifiers. Call once its jobs
    are gone (a job refers to its classifier)."""
    classifiers = select(Classifier.id).where(Classifier.tenant == tenant).scalar_subquery()
    removed: dict[str, int] = {}
    for name, statement in (
        ("pipelines", delete(Pipeline).where(Pipeline.tenant == tenant)),
        ("webhook_deliveries", delete(WebhookDelivery).where(WebhookDelivery.tenant == tenant)),
        ("webhook_secrets", delete(WebhookSecret).where(WebhookSecret.tenant == tenant)),
        ("calibrations", delete(Calibration).where(Calibration.classifier_id.in_(classifiers))),
        ("scored_counts", delete(ScoredCount).where(ScoredCount.classifier_id.in_(classifiers))),
        ("classifiers", delete(Classifier).where(Classifier.tenant == tenant)),
    ):
        removed[name] = rowcount(s.execute(statement.execution_options(synchronize_session=False)))
    if drift:  # the schema has drift monitors (migration 0025)
        removed["drift_monitors"] = rowcount(
            s.execute(delete(DriftMonitor).where(DriftMonitor.tenant == tenant))
        )
    return removed
