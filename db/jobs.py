"""Jobs and their items: rows and state changes on a caller's Session. Chunks, leases and what
the reconciler reads are in `db.chunks`; the reads pollers make most in `db.reads`.

Nothing here commits: the use case in `service/` that calls these functions owns the
transaction. The job state machine lives here, in `finish_if_done` and the functions that move a
job between states; nothing else assigns `Job.state`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, false, func, insert, select, update
from sqlalchemy.orm import Session

from db.models import (
    UNFINISHED_STATES,
    Classifier,
    FailureKind,
    ItemStatus,
    Job,
    JobItem,
    JobState,
    utcnow,
)
from db.session import db_now, rowcount
from labelq.dashboard import gold_columns
from labelq.errors import Conflict, Gone, NotFound

INSERT_BATCH = 1000


# -- the job state machine -----------------------------------------------------------------------
def mark_running(job: Job) -> None:
    if job.state == JobState.queued:
        job.state = JobState.running
        job.started_at = utcnow()


def mark_failed(job: Job, error: str) -> None:
    job.state = JobState.failed
    job.error = error
    job.finished_at = utcnow()
    job.upload_expires_at = None


def fail_upload(job: Job, error: str) -> None:
    """A job whose items did not all arrive: failed, and its Idempotency-Key given back, so
    the client's next try with it makes a new job instead of finding this one."""
    mark_failed(job, error)
    job.idempotency_key = None


def mark_cancelling(job: Job) -> None:
    if JobState(job.state).finished:
        raise Conflict(f"job {job.id} already {job.state}")
    job.state = JobState.cancelling


def finish_if_done(job: Job) -> bool:
    """Give a job whose chunks are all done its final state from its counts; True if it ended
    here."""
    if JobState(job.state).finished or job.chunks_done < job.chunks_total:
        return False
    if job.state in (JobState.cancelling, JobState.cancelled):
        job.state = JobState.cancelled
    elif job.total > 0 and job.succeeded == 0:
        job.state = JobState.failed
        job.error = job.error or "every item failed"
    elif job.failed:
        job.state = JobState.partial  # some items have no result: the state says so
    else:
        job.state = JobState.succeeded
    job.finished_at = utcnow()
    return True


# -- jobs ----------------------------------------------------------------------------------------
def find_job_by_idempotency_key(s: Session, key: str, *, tenant: str) -> Job | None:
    """The job `tenant`'s Idempotency-Key made (another tenant's keys are its own)."""
    return s.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))


def add_job(
    s: Session,
    classifier: Classifier,
    model: str,
    queue: str,
    chunk_size: int,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    *,
    upload_lease: float,
    expires_after: float | None = None,
    reserve: int = 0,
) -> Job:
    """A new job row of the classifier's tenant, queued, with no items yet (flushed), its
    upload held for `upload_lease` seconds (`renew_upload` keeps it while items arrive).
    `reserve`: the items it will have, when known: its `total` until the upload is sealed, so
    the tenant's admission counts them from now on (`in_flight`)."""
    job = Job(
        id=str(uuid.uuid4()),
        tenant=classifier.tenant,
        classifier_id=classifier.id,
        model=model,
        queue=queue,
        state=JobState.queued,
        chunk_size=chunk_size,
        metadata_=metadata or {},
        idempotency_key=idempotency_key,
        webhook_url=webhook_url,
        total=reserve,
        succeeded=0,
        failed=0,
        chunks_total=0,
        chunks_done=0,
        upload_expires_at=db_now(s) + timedelta(seconds=upload_lease),
        expires_at=db_now(s) + timedelta(seconds=expires_after) if expires_after else None,
    )
    s.add(job)
    s.flush()
    return job


def renew_upload(s: Session, job_id: str, seconds: float) -> bool:
    """Keep an upload's lease while its items arrive; False when the job is no longer being
    uploaded (sealed, or failed because its lease ran out)."""
    renewed = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.queued, Job.upload_expires_at.is_not(None))
        .values(upload_expires_at=db_now(s) + timedelta(seconds=seconds))
    )
    return rowcount(renewed) == 1


def expire_uploads(s: Session, now: datetime) -> list[str]:
    """Fail the jobs whose upload lease ran out (the process receiving them died or was
    redeployed mid-upload): "upload interrupted after N items"; returns their ids."""
    ended = []
    for job in s.scalars(
        select(Job)
        .where(Job.state == JobState.queued, Job.upload_expires_at < now)
        .with_for_update()
    ):
        stored = s.scalar(select(func.count()).select_from(JobItem).where(JobItem.job_id == job.id))
        fail_upload(job, f"upload interrupted after {stored or 0} items: its lease ran out")
        ended.append(job.id)
    return ended


def get_job(s: Session, job_id: str, *, tenant: str | None, for_update: bool = False) -> Job:
    """A job of `tenant` (None: of any tenant); another tenant's is NotFound, as a missing
    one."""
    return _visible(s.get(Job, job_id, with_for_update=for_update), job_id, tenant=tenant)


def _visible(job: Job | None, job_id: str, *, tenant: str | None) -> Job:
    if job is None or (tenant is not None and job.tenant != tenant):
        raise NotFound(f"job {job_id} does not exist", field="job_id")
    return job


def readable(job: Job) -> Job:
    """`job`, unless an erasure was asked for: then its content is (or is being) gone."""
    if job.erase is not None:
        raise Gone(f"job {job.id} was erased ({job.erase})", field="job_id")
    return job


def job_classifier(s: Session, job: Job) -> Classifier:
    return s.get_one(Classifier, job.classifier_id)


def get_job_and_classifier(
    s: Session, job_id: str, *, tenant: str | None
) -> tuple[Job, Classifier]:
    """`get_job` and `job_classifier` in one round trip."""
    found = s.execute(
        select(Job, Classifier)
        .join(Classifier, Classifier.id == Job.classifier_id)
        .where(Job.id == job_id)
    ).first()
    job = _visible(found[0] if found else None, job_id, tenant=tenant)
    assert found is not None
    return job, found[1]


def count_items(s: Session, job_id: str, status: ItemStatus) -> int:
    return int(
        s.scalar(
            select(func.count())
            .select_from(JobItem)
            .where(JobItem.job_id == job_id, JobItem.status == status)
        )
        or 0
    )


def failures_by_kind(s: Session, job_id: str) -> dict[str, int]:
    """A job's failed items per `FailureKind`."""
    rows = s.execute(
        select(JobItem.error_kind, func.count())
        .where(JobItem.job_id == job_id, JobItem.status == ItemStatus.failed)
        .group_by(JobItem.error_kind)
    )
    return {str(kind or FailureKind.input): int(n) for kind, n in rows}


def engine_failed_keys(s: Session, job_id: str) -> list[str]:
    """The custom ids of a job's items the engine failed on (not the items' fault)."""
    return [
        key
        for key in s.scalars(
            select(JobItem.custom_id).where(
                JobItem.job_id == job_id,
                JobItem.status == ItemStatus.failed,
                JobItem.error_kind == FailureKind.engine,
            )
        )
        if key is not None
    ]


def in_flight(s: Session, *, tenant: str) -> tuple[int, int]:
    """(unfinished jobs, their items not yet scored) of `tenant`."""
    waiting = func.coalesce(func.sum(Job.total - Job.succeeded - Job.failed), 0)
    jobs, items = s.execute(
        select(func.count(), waiting).where(Job.tenant == tenant, Job.state.in_(UNFINISHED_STATES))
    ).one()
    return int(jobs), int(items)


def count_jobs_by_state(s: Session) -> dict[str, int]:
    """Jobs by state, over every tenant (what `/metrics` shows)."""
    return {state: n for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state))}


# -- items ---------------------------------------------------------------------------------------
def insert_items(s: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        s.execute(insert(JobItem), list(rows))


def count_received(s: Session, job_id: str, received: int) -> None:
    """An upload's `total` is at least the items it has received so far (until the seal sets
    it exactly), so the tenant's admission counts a streamed upload as it arrives."""
    s.execute(
        update(Job)
        .where(Job.id == job_id, Job.total < received)
        .values(total=received)
        .execution_options(synchronize_session=False)
    )


def hold_admission(s: Session, *, tenant: str) -> None:
    """Admit `tenant`'s jobs one at a time until the caller's transaction ends: two submissions
    at once would each see the other's job missing and pass the limits together. PostgreSQL:
    a transaction-scoped advisory lock of the tenant's own (other tenants do not wait).
    SQLite: the database's write lock, which a write of no rows takes (one writer at a time
    there anyway)."""
    if s.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha1(f"labelq.admission:{tenant}".encode()).digest()
        s.execute(
            select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True)))
        )
    else:
        s.execute(
            update(Job)
            .where(false())
            .values(total=Job.total)
            .execution_options(synchronize_session=False)
        )


def items_page(s: Session, job_id: str, after_idx: int, limit: int) -> list[JobItem]:
    """Up to `limit` items after position `after_idx`, in input order (keyset pagination)."""
    return list(
        s.scalars(
            select(JobItem)
            .where(JobItem.job_id == job_id, JobItem.idx > after_idx)
            .order_by(JobItem.idx)
            .limit(limit)
        )
    )


def rows_where_in(
    s: Session,
    columns: Sequence[Any],
    key: Any,
    values: Sequence[Any],
    *conditions: ColumnElement[bool],
    for_update: bool = False,
) -> Iterator[Any]:
    """Rows of `columns` whose `key` is one of `values`, asked INSERT_BATCH values at a time
    (a bounded IN list, whatever the number of values); `for_update`: locked until the
    caller's transaction ends."""
    for start in range(0, len(values), INSERT_BATCH):
        part = list(values[start : start + INSERT_BATCH])
        query = select(*columns).where(key.in_(part), *conditions)
        yield from s.execute(query.with_for_update() if for_update else query)


def item_ids_by_custom_id(s: Session, job_id: str, custom_ids: Sequence[str]) -> dict[str, int]:
    rows = rows_where_in(
        s,
        (JobItem.id, JobItem.custom_id),
        JobItem.custom_id,
        custom_ids,
        JobItem.job_id == job_id,
    )
    return {custom_id: item_id for item_id, custom_id in rows if custom_id is not None}


def set_gold_labels(s: Session, labels: dict[int, str]) -> None:
    """Gold labels by item id; a scored item is judged right or wrong and its Brier score kept.
    A page of results at a time: a large job's result JSON is never all in memory. The items
    are locked as they are read: a chunk writing its results at the same moment waits (and
    then reads these labels), or is waited for (and its results are read here), so no item
    ends with a label and a result but no judgement."""
    ids = sorted(labels)  # locked in id order, as a chunk's completion locks them
    for start in range(0, len(ids), INSERT_BATCH):
        page = ids[start : start + INSERT_BATCH]
        rows = rows_where_in(s, (JobItem.id, JobItem.result), JobItem.id, page, for_update=True)
        results: dict[int, Any] = {i: result for i, result in rows}
        s.execute(
            update(JobItem),
            [
                {"id": i, "gold_label": labels[i], **gold_columns(results.get(i), labels[i])}
                for i in page
            ],
        )


def gold_labels(s: Session, item_ids: list[int]) -> dict[int, str]:
    """The gold labels already given for these items (labels may come before scores), the
    items locked until the caller's transaction ends (see `set_gold_labels`)."""
    rows = rows_where_in(
        s, (JobItem.id, JobItem.gold_label), JobItem.id, sorted(item_ids), for_update=True
    )
    return {i: str(label) for i, label in rows if label is not None}
