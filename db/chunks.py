"""Chunks of a job: cut, sent, claimed under a lease, completed exactly once, cancelled; and
what the reconciler reads to find chunks whose task is missing.

A chunk is claimed under a lease: its `owner` renews `lease_expires_at` while it scores, and a
chunk whose lease expired may be claimed again. Completion is conditional on still holding the
claim, so a chunk's results are written exactly once however often it is delivered. Nothing
here commits: the use case that calls these functions owns the transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Select,
    Subquery,
    and_,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from db.classifiers import spec_of
from db.counts import count_scored
from db.jobs import (
    INSERT_BATCH,
    finish_if_done,
    get_job,
    gold_labels,
    job_classifier,
    mark_cancelling,
    mark_running,
)
from db.models import (
    UNFINISHED_STATES,
    Chunk,
    ChunkState,
    Classifier,
    FailureKind,
    ItemStatus,
    Job,
    JobItem,
    JobState,
    as_utc,
    utcnow,
)
from db.session import db_now, rowcount
from labelq.dashboard import gold_columns, score_columns
from labelq.scoring import Item as ScoreItem
from labelq.spec import ClassifierSpec


class ItemOutcome(NamedTuple):
    """What became of one item of a chunk: its result, or its error and the error's kind
    (`input`: the item's own fault; `engine`: the engine's)."""

    result: dict[str, Any] | None
    error: str | None = None
    kind: str | None = None


def engine_failure(error: str) -> ItemOutcome:
    return ItemOutcome(None, error, FailureKind.engine)


def _scored_columns(
    job: Job,
    result: dict[str, Any] | None,
    calibration_id: int | None,
    gold: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The dashboard's columns of a scored item (all None for a failed one)."""
    if result is None:
        return dict.fromkeys(
            (
                "calibration_id",
                "classifier_id",
                "predicted",
                "confidence",
                "correct",
                "brier",
                "scored_at",
            )
        )
    return {
        "calibration_id": calibration_id,
        "classifier_id": job.classifier_id,
        **score_columns(result),
        **gold_columns(result, gold),
        "scored_at": now,
    }


# -- chunks --------------------------------------------------------------------------------------
def add_chunks(s: Session, job: Job, total: int, rejected: int, pending_seqs: set[int]) -> None:
    """Cut a job whose items are all stored into chunks; chunks with nothing pending are done
    at once. Ends the job if nothing is left to run."""
    now = utcnow()
    n_chunks = -(-total // job.chunk_size)
    rows = []
    for seq in range(n_chunks):
        start = seq * job.chunk_size
        pending = seq in pending_seqs
        rows.append(
            {
                "job_id": job.id,
                "seq": seq,
                "start_idx": start,
                "end_idx": min(start + job.chunk_size, total),
                "state": ChunkState.pending if pending else ChunkState.done,
                "attempts": 0,
                "succeeded": 0,
                "failed": 0,
                "updated_at": now,
            }
        )
    for start in range(0, len(rows), INSERT_BATCH):
        s.execute(insert(Chunk), rows[start : start + INSERT_BATCH])
    job.total = total
    job.failed = rejected
    job.upload_expires_at = None  # every item arrived
    job.chunks_total = n_chunks
    job.chunks_done = n_chunks - len(pending_seqs)
    finish_if_done(job)


def mark_dispatched(s: Session, job_id: str, seqs: Sequence[int], when: datetime) -> None:
    """Record that the chunks' tasks were sent at `when` (taken before sending). A chunk
    claimed since is left as its claim made it: a worker quick enough to claim it and hand
    it back (an engine that fails at once) cleared its send, so the reconciler sends it again
    when it is due; recording this send over that would hide it for a stall period."""
    if seqs:
        s.execute(
            update(Chunk)
            .where(
                Chunk.job_id == job_id,
                Chunk.seq.in_(list(seqs)),
                or_(Chunk.claimed_at.is_(None), Chunk.claimed_at < when),
            )
            .values(dispatched_at=when)
        )


@dataclass
class ChunkWork:
    """A claimed chunk: what a worker needs to score it, and the claim it must hold to write."""

    job_id: str
    seq: int
    chunk_id: int
    owner: str
    attempt: int
    classifier_id: int
    spec: ClassifierSpec
    model: str
    items: list[tuple[int, ScoreItem]]  # (item row id, item)


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Pending and due, or running under a lease that expired (its worker died or hung)."""
    return or_(
        and_(
            Chunk.state == ChunkState.pending,
            or_(Chunk.available_at.is_(None), Chunk.available_at <= now),
        ),
        and_(Chunk.state == ChunkState.running, Chunk.lease_expires_at < now),
    )


def claim_chunk(
    s: Session,
    job_id: str,
    seq: int,
    owner: str,
    *,
    lease_seconds: float,
    max_attempts: int,
) -> ChunkWork | None:
    """Claim a chunk for `owner` under a lease and load its pending items. None when there is
    nothing to do: done, cancelled, held by a live lease, or not yet due. A chunk claimed more
    than `max_attempts` times fails its items with the reason instead of looping. Leases are
    stamped and judged by the database's clock."""
    now = db_now(s)
    # The job's row first, then the chunk's, as cancel and completion take them: the opposite
    # order deadlocked against a cancel on PostgreSQL.
    job = s.get(Job, job_id, with_for_update=True)
    chunk = s.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq))
    if chunk is None or job is None:
        return None
    if chunk.state in (ChunkState.done, ChunkState.cancelled):
        return None
    if job.state in (JobState.cancelling, JobState.cancelled):
        _cancel_chunks(s, job, [chunk.id])
        return None
    claimed = s.execute(
        update(Chunk)
        .where(Chunk.id == chunk.id, _claimable(now))
        # Decided by the database alone (SQLite hands back zone-less times); refreshed below.
        .execution_options(synchronize_session=False)
        .values(
            state=ChunkState.running,
            owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            claimed_at=now,
            attempts=Chunk.attempts + 1,
        )
    )
    if rowcount(claimed) != 1:
        return None
    s.refresh(chunk)
    mark_running(job)
    if chunk.attempts > max_attempts:
        reason = chunk.last_error or "its lease expired each time: the worker died or hung"
        give_up = f"gave up after {chunk.attempts - 1} attempts: {reason}"
        failed = engine_failure(give_up)
        pending = {row.id: failed for row in _pending_items(s, chunk)}
        _complete(s, job, chunk, pending, owner=owner)
        return None
    classifier = job_classifier(s, job)
    items = [
        (row.id, ScoreItem.from_record(row.input or {}, line=row.line))
        for row in _pending_items(s, chunk)
    ]
    return ChunkWork(
        job_id=job_id,
        seq=seq,
        chunk_id=chunk.id,
        owner=owner,
        attempt=chunk.attempts,
        classifier_id=classifier.id,
        spec=spec_of(classifier),
        model=job.model,
        items=items,
    )


def _holds(chunk_id: int, owner: str) -> ColumnElement[bool]:
    return and_(Chunk.id == chunk_id, Chunk.state == ChunkState.running, Chunk.owner == owner)


def renew_lease(s: Session, chunk_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False when `owner` no longer holds the chunk."""
    renewed = s.execute(
        update(Chunk)
        .where(_holds(chunk_id, owner))
        .values(lease_expires_at=db_now(s) + timedelta(seconds=lease_seconds))
    )
    return rowcount(renewed) == 1


def release_chunk(
    s: Session, work: ChunkWork, error: str, *, retry_in: float, max_attempts: int
) -> bool:
    """Hand a chunk back after a failure of the engine (not of its items): it is tried again in
    `retry_in` seconds. Past `max_attempts` its items fail with the error, and so does every
    chunk of the job not yet claimed, since they need the same engine. False when `owner` no
    longer held the chunk."""
    job = get_job(s, work.job_id, tenant=None, for_update=True)  # the job's row first
    chunk = s.get(Chunk, work.chunk_id)
    if chunk is None or chunk.state != ChunkState.running or chunk.owner != work.owner:
        return False
    if chunk.attempts >= max_attempts:
        message = f"gave up after {chunk.attempts} attempts: {error}"
        failed = engine_failure(message)
        pending = {row.id: failed for row in _pending_items(s, chunk)}
        if not _complete(s, job, chunk, pending, owner=work.owner):
            return False
        others = s.scalars(
            select(Chunk).where(Chunk.job_id == job.id, Chunk.state == ChunkState.pending)
        ).all()
        for other in others:
            other.state = ChunkState.running  # _complete moves running chunks to done
            other.owner = work.owner
            s.flush()
            not_run = f"not run: the engine failed on chunk {chunk.seq}: {error}"
            not_scored = engine_failure(not_run)
            _complete(s, job, other, {r.id: not_scored for r in _pending_items(s, other)})
        return True
    handed = s.execute(
        update(Chunk)
        .where(_holds(chunk.id, work.owner))  # still ours when written, not only when read
        .execution_options(synchronize_session=False)
        .values(
            state=ChunkState.pending,
            owner=None,
            lease_expires_at=None,
            dispatched_at=None,  # the reconciler sends it again once it is due
            available_at=db_now(s) + timedelta(seconds=retry_in),
            last_error=error,
        )
    )
    return rowcount(handed) == 1


def _pending_items(s: Session, chunk: Chunk) -> list[JobItem]:
    return list(
        s.scalars(
            select(JobItem)
            .where(
                JobItem.job_id == chunk.job_id,
                JobItem.idx >= chunk.start_idx,
                JobItem.idx < chunk.end_idx,
                JobItem.status == ItemStatus.pending,
            )
            .order_by(JobItem.idx)
        )
    )


class Cost(NamedTuple):
    """What scoring a chunk cost: engine seconds (its share of the engine's busy time) and
    prompt tokens."""

    engine_seconds: float
    prompt_tokens: int


def complete_chunk(
    s: Session,
    work: ChunkWork,
    results: dict[int, ItemOutcome],
    calibration_id: int | None,
    fingerprint: str | None = None,
    mismatch: bool | None = None,
    cost: Cost | None = None,
) -> bool:
    """Write a chunk's results and count them, with the fingerprint of the engine that scored
    them, and add its `cost` to the job's (None: the schema has no place for it yet). Nothing
    is written (False) unless `work.owner` still holds the chunk: a redelivered or taken-over
    chunk never writes twice."""
    job = get_job(s, work.job_id, tenant=None, for_update=True)  # the job's row first
    chunk = s.get_one(Chunk, work.chunk_id)
    written = _complete(
        s, job, chunk, results, calibration_id, owner=work.owner, fp=fingerprint, mismatch=mismatch
    )
    if written and cost is not None:
        s.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(
                engine_seconds=func.coalesce(Job.engine_seconds, 0.0) + cost.engine_seconds,
                prompt_tokens=func.coalesce(Job.prompt_tokens, 0) + cost.prompt_tokens,
            )
            .execution_options(synchronize_session=False)
        )
    return written


def job_cost(s: Session, job_id: str) -> Cost | None:
    """The job's cost so far; None when nothing was recorded (scored before 0024)."""
    row = s.execute(select(Job.engine_seconds, Job.prompt_tokens).where(Job.id == job_id)).one()
    if row[0] is None:
        return None
    return Cost(float(row[0]), int(row[1] or 0))


def cost_by_classifier(s: Session) -> list[tuple[str, str, int, float, int, int]]:
    """Every tenant's cost per classifier version, summed over its jobs: (tenant, classifier,
    version, engine seconds, prompt tokens, items scored)."""
    rows = s.execute(
        select(
            Job.tenant,
            Classifier.name,
            Classifier.version,
            func.sum(Job.engine_seconds),
            func.sum(Job.prompt_tokens),
            func.sum(Job.succeeded),
        )
        .join(Classifier, Classifier.id == Job.classifier_id)
        .where(Job.engine_seconds.is_not(None))
        .group_by(Job.tenant, Classifier.name, Classifier.version)
    )
    return [(t, n, int(v), float(e or 0), int(p or 0), int(k or 0)) for t, n, v, e, p, k in rows]


def _complete(
    s: Session,
    job: Job,
    chunk: Chunk,
    results: dict[int, ItemOutcome],
    calibration_id: int | None = None,
    owner: str | None = None,
    fp: str | None = None,
    mismatch: bool | None = None,
) -> bool:
    succeeded = sum(1 for o in results.values() if o.result is not None)
    failed = len(results) - succeeded
    condition = (
        _holds(chunk.id, owner)
        if owner
        else and_(Chunk.id == chunk.id, Chunk.state == ChunkState.running)
    )
    done = s.execute(
        update(Chunk)
        .where(condition)
        .values(
            state=ChunkState.done,
            succeeded=succeeded,
            failed=failed,
            lease_expires_at=None,
            fingerprint=fp,
            calibration_mismatch=mismatch,
        )
    )
    if rowcount(done) != 1:
        return False
    if results:
        now = utcnow()
        golds = gold_labels(s, [i for i, o in results.items() if o.result is not None])
        s.execute(
            update(JobItem),
            [
                {
                    "id": item_id,
                    "status": ItemStatus.succeeded if o.result is not None else ItemStatus.failed,
                    "result": o.result,
                    "error": o.error,
                    "error_kind": None if o.result is not None else (o.kind or FailureKind.engine),
                    **_scored_columns(job, o.result, calibration_id, golds.get(item_id), now),
                }
                for item_id, o in results.items()
            ],
        )
        scored = [o.result for o in results.values() if o.result is not None]
        count_scored(s, job.classifier_id, scored)
    s.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(
            succeeded=Job.succeeded + succeeded,
            failed=Job.failed + failed,
            chunks_done=Job.chunks_done + 1,
        )
    )
    s.refresh(job)
    finish_if_done(job)
    return True


# -- cancel --------------------------------------------------------------------------------------
def cancel_job(s: Session, job_id: str, *, tenant: str | None) -> Job:
    """Stop pending chunks now; a chunk being scored finishes and is kept."""
    job = get_job(s, job_id, for_update=True, tenant=tenant)
    mark_cancelling(job)
    pending = s.scalars(
        select(Chunk.id).where(Chunk.job_id == job_id, Chunk.state == ChunkState.pending)
    ).all()
    _cancel_chunks(s, job, list(pending))
    return job


def _cancel_chunks(s: Session, job: Job, chunk_ids: list[int]) -> None:
    if chunk_ids:
        cancelled = rowcount(
            s.execute(
                update(Chunk)
                .where(
                    Chunk.id.in_(chunk_ids),
                    Chunk.state.in_([ChunkState.pending, ChunkState.running]),
                )
                .values(state=ChunkState.cancelled, lease_expires_at=None)
            )
        )
        s.execute(
            update(JobItem)
            .where(
                JobItem.job_id == job.id,
                JobItem.status == ItemStatus.pending,
                exists().where(
                    Chunk.id.in_(chunk_ids),
                    JobItem.idx >= Chunk.start_idx,
                    JobItem.idx < Chunk.end_idx,
                ),
            )
            .values(status=ItemStatus.cancelled)
        )
        s.execute(
            update(Job).where(Job.id == job.id).values(chunks_done=Job.chunks_done + cancelled)
        )
        s.refresh(job)
    finish_if_done(job)


# -- what the reconciler looks at ----------------------------------------------------------------
UNFINISHED = UNFINISHED_STATES


@dataclass(frozen=True)
class ChunkRef:
    job_id: str
    queue: str
    seq: int


def _unfinished_chunks() -> Select[str, str, int]:
    return (
        select(Job.id, Job.queue, Chunk.seq)
        .join(Chunk, Chunk.job_id == Job.id)
        .where(Job.state.in_(UNFINISHED))
    )


# A chunk task's priority by its place in its job (0 is served first; Redis keeps one list
# per step and a worker pops them in step order, the embedded queue likewise): a job's first
# chunks go first, so a small job is not held behind a large one (`service.dispatch`).
PRIORITY_BANDS = ((4, 0), (32, 3), (256, 6))  # (chunks before this seq, priority)
LAST_PRIORITY = 9


def chunk_priority(seq: int) -> int:
    """The priority a chunk task is sent with (0 first, 9 last; Redis' steps 0, 3, 6, 9)."""
    return next((priority for below, priority in PRIORITY_BANDS if seq < below), LAST_PRIORITY)


def _priority_of(seq: Any) -> ColumnElement[int]:
    """`chunk_priority` in SQL."""
    bands = [(seq < below, priority) for below, priority in PRIORITY_BANDS]
    return case(*bands, else_=LAST_PRIORITY)


def fingerprints_of(s: Session, job_id: str) -> list[str]:
    """The engines that scored a job's chunks, by fingerprint."""
    return sorted(
        s.scalars(
            select(Chunk.fingerprint)
            .where(Chunk.job_id == job_id, Chunk.fingerprint.is_not(None))
            .distinct()
        )
    )


def engines_of(s: Session, job_id: str) -> tuple[list[str], int]:
    """(the fingerprints that scored a job, its chunks calibrated off their engine): one
    read of the job's chunks."""
    rows = s.execute(
        select(Chunk.fingerprint, func.count().filter(Chunk.calibration_mismatch.is_(True)))
        .where(Chunk.job_id == job_id, Chunk.fingerprint.is_not(None))
        .group_by(Chunk.fingerprint)
    ).all()
    return sorted(str(fp) for fp, _ in rows), sum(int(n) for _, n in rows)


def chunks_to_send(
    s: Session, now: datetime, stalled_before: datetime, *, served: Collection[str]
) -> list[ChunkRef]:
    """Claimable chunks whose task is missing or presumed lost, each at most once a stall
    period (`stalled_before` is now less LABELQ_STALL_AFTER), so the backlog is never
    multiplied:
    - never sent, or handed back after an engine failure and now due;
    - running under an expired lease, not sent again since it was claimed (or sent, and
      still unclaimed a stall period later);
    - pending, sent before `stalled_before`, and overtaken: a chunk of its queue, of its
      priority or a later one, sent after it was claimed (from that send) before
      `stalled_before`. The broker hands out a priority's tasks in the order they were sent,
      and a later priority's only once the earlier ones' are all out, so a task the queue went
      past a stall period ago is lost, however busy the queue is with other jobs (a chunk of
      an earlier priority sent after it may overtake it, and says nothing);
    - pending, sent before `stalled_before`, in a queue that made no progress since then (no
      live lease, no claim) although a worker in `served` serves it: its tasks were lost with
      the broker's memory. A queue no worker serves is left alone (its tasks wait in the
      broker for one), so it gets no copies, however long it waits."""
    due = or_(Chunk.available_at.is_(None), Chunk.available_at <= now)
    never_sent = and_(Chunk.state == ChunkState.pending, Chunk.dispatched_at.is_(None), due)
    expired = and_(
        Chunk.state == ChunkState.running,
        Chunk.lease_expires_at < now,
        or_(
            Chunk.dispatched_at.is_(None),
            # not sent since it was claimed (the task that was claimed is the one that died),
            Chunk.dispatched_at <= Chunk.claimed_at,
            # or sent, but still not claimed a stall period later: send again.
            Chunk.dispatched_at < stalled_before,
        ),
    )
    waiting = and_(Chunk.state == ChunkState.pending, Chunk.dispatched_at < stalled_before, due)
    passed = _queues_passed(stalled_before)
    overtaken = and_(
        waiting,
        exists().where(
            passed.c.queue == Job.queue,
            passed.c.priority >= _priority_of(Chunk.seq),
            Chunk.dispatched_at < passed.c.sent,
        ),
    )
    found = s.execute(
        _unfinished_chunks()
        .where(or_(never_sent, expired, overtaken))
        .order_by(Job.created_at, Chunk.seq)
    )
    out = [ChunkRef(job_id, queue, seq) for job_id, queue, seq in found]
    stalled = [q for q in stalled_queues(s, now, stalled_before) if q in served]
    if stalled:
        have = set(out)
        out += [
            ref
            for ref in (
                ChunkRef(job_id, queue, seq)
                for job_id, queue, seq in s.execute(
                    _unfinished_chunks()
                    .where(Job.queue.in_(stalled), waiting)
                    .order_by(Job.created_at, Chunk.seq)
                )
            )
            if ref not in have
        ]
    return out


def _queues_passed(before: datetime) -> Subquery:
    """Per queue and priority, the latest send of a chunk of an unfinished job that was
    claimed from that send (or a later one) before `before`: every task of the queue of that
    priority or an earlier one sent before it has been handed out by then."""
    job, chunk = aliased(Job), aliased(Chunk)
    priority = _priority_of(chunk.seq)
    return (
        select(
            job.queue.label("queue"),
            priority.label("priority"),
            func.max(chunk.dispatched_at).label("sent"),
        )
        .join(chunk, chunk.job_id == job.id)
        .where(
            job.state.in_(UNFINISHED),
            chunk.claimed_at >= chunk.dispatched_at,
            chunk.claimed_at < before,
        )
        .group_by(job.queue, priority)
        .subquery()
    )


def stalled_queues(s: Session, now: datetime, since: datetime) -> list[str]:
    """Queues with unfinished work where no chunk is held by a live lease and none was claimed
    since `since`."""
    rows = s.execute(
        select(
            Job.queue,
            func.max(Chunk.claimed_at),
            func.count().filter(
                and_(Chunk.state == ChunkState.running, Chunk.lease_expires_at >= now)
            ),
        )
        .join(Chunk, Chunk.job_id == Job.id)
        .where(Job.state.in_(UNFINISHED))
        .group_by(Job.queue)
    ).all()
    return [
        queue
        for queue, last_claim, live in rows
        if not live and (last_claim is None or as_utc(last_claim) < since)
    ]


def finish_done_jobs(s: Session) -> list[str]:
    """End unfinished jobs whose chunks are all done; returns their ids. A job still being
    uploaded has no chunks yet (they are cut when the upload ends) and is left alone."""
    ended = []
    for job in s.scalars(
        select(Job).where(
            Job.state.in_(UNFINISHED), Job.chunks_total > 0, Job.chunks_done >= Job.chunks_total
        )
    ):
        if finish_if_done(job):
            ended.append(job.id)
    return ended


def expire_jobs(s: Session, now: datetime) -> list[str]:
    """End the jobs whose deadline passed (not while their items still arrive: the upload
    lease governs that): what was scored stays, pending and running chunks are cancelled (a
    running chunk's late write is refused: it no longer holds a claim), their items are
    `cancelled`, and the job is `expired`. Returns their ids."""
    ended = []
    for job in s.scalars(
        select(Job)
        .where(Job.state.in_(UNFINISHED), Job.expires_at < now, Job.upload_expires_at.is_(None))
        .with_for_update()
    ):
        open_chunks = list(
            s.scalars(
                select(Chunk.id).where(
                    Chunk.job_id == job.id,
                    Chunk.state.in_([ChunkState.pending, ChunkState.running]),
                )
            )
        )
        waited = (now - as_utc(job.created_at)).total_seconds()
        job.state = JobState.expired  # ended first: cancelling its chunks cannot end it so
        job.error = f"expired: not ended {waited:.0f} s after it was submitted"
        job.finished_at = now
        _cancel_chunks(s, job, open_chunks)
        ended.append(job.id)
    return ended


def cancel_abandoned(s: Session, now: datetime) -> list[str]:
    """End cancelling jobs whose running chunks nobody holds any more (their worker died
    under the cancel): those chunks are cancelled, the job is `cancelled`. Returns their ids."""
    ended = []
    jobs = s.scalars(
        select(Job)
        .where(Job.state == JobState.cancelling)
        .where(
            exists().where(
                Chunk.job_id == Job.id,
                Chunk.state == ChunkState.running,
                Chunk.lease_expires_at < now,
            )
        )
        .with_for_update()
    )
    for job in jobs:
        abandoned = list(
            s.scalars(
                select(Chunk.id).where(
                    Chunk.job_id == job.id,
                    Chunk.state == ChunkState.running,
                    Chunk.lease_expires_at < now,
                )
            )
        )
        _cancel_chunks(s, job, abandoned)
        if JobState(job.state).finished:
            ended.append(job.id)
    return ended


def unfinished_queues(s: Session) -> dict[str, int]:
    """Queues with jobs not yet finished, and how many such jobs each has."""
    return {
        queue: n
        for queue, n in s.execute(
            select(Job.queue, func.count()).where(Job.state.in_(UNFINISHED)).group_by(Job.queue)
        )
    }


# What a queue's workers have to do: its chunks pending or being scored. KEDA scales workers on
# the same count (deploy/k8s/components/keda: the query there is this one, in SQL).
WORK_STATES = (ChunkState.pending, ChunkState.running)


def chunks_by_queue(s: Session) -> dict[str, dict[str, int]]:
    """Queue -> chunk state (pending, running) -> how many, over unfinished jobs."""
    out: dict[str, dict[str, int]] = {}
    for queue, state, n in s.execute(
        select(Job.queue, Chunk.state, func.count())
        .join(Job, Job.id == Chunk.job_id)
        .where(Chunk.state.in_(WORK_STATES))
        .group_by(Job.queue, Chunk.state)
    ):
        out.setdefault(queue, {})[str(state)] = int(n)
    return out


def requeue_after_restart(s: Session, queue: str) -> int:
    """For the embedded default, whose task queue lived in the memory of a process that is gone:
    every unfinished chunk of `queue` needs a new task, and leases held by that process are void.
    Returns how many chunks are affected."""
    jobs_of_queue = select(Job.id).where(Job.queue == queue, Job.state.in_(UNFINISHED))
    affected = rowcount(
        s.execute(
            update(Chunk)
            .where(
                Chunk.job_id.in_(jobs_of_queue),
                Chunk.state.in_([ChunkState.pending, ChunkState.running]),
            )
            .values(dispatched_at=None, lease_expires_at=db_now(s))
        )
    )
    return affected
