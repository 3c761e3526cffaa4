"""Queries and state changes the API and the worker share. Plain functions on a Session."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    ApiKey,
    Calibration,
    Chunk,
    ChunkState,
    Classifier,
    Item,
    ItemStatus,
    Job,
    JobState,
    utcnow,
)
from db.session import transaction
from labelq.errors import Conflict, InputError, NotFound
from labelq.scoring import Item as ScoreItem
from labelq.spec import ClassifierSpec

INSERT_BATCH = 1000


# -- classifiers ---------------------------------------------------------------------------------
def spec_hash(spec: ClassifierSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_classifier(
    factory: sessionmaker[Session], spec: ClassifierSpec
) -> tuple[Classifier, bool]:
    """Store `spec` as the next version of its name; the same spec again returns its version."""
    digest = spec_hash(spec)
    for _ in range(5):
        try:
            with transaction(factory) as s:
                found = s.scalar(
                    select(Classifier).where(
                        Classifier.name == spec.name, Classifier.spec_hash == digest
                    )
                )
                if found:
                    return found, False
                latest = s.scalar(
                    select(func.max(Classifier.version)).where(Classifier.name == spec.name)
                )
                row = Classifier(
                    name=spec.name,
                    version=(latest or 0) + 1,
                    spec=spec.model_dump(mode="json"),
                    spec_hash=digest,
                )
                s.add(row)
                s.flush()
                return row, True
        except IntegrityError:
            continue  # another writer took that version; read again
    raise Conflict(f"could not store classifier {spec.name!r}: too many concurrent writers")


def get_classifier(s: Session, name: str, version: int | None = None) -> Classifier:
    query = select(Classifier).where(Classifier.name == name)
    if version is not None:
        query = query.where(Classifier.version == version)
    row = s.scalar(query.order_by(Classifier.version.desc()).limit(1))
    if row is None:
        what = f"classifier {name!r}" + (f" version {version}" if version is not None else "")
        raise NotFound(f"{what} does not exist", field="classifier")
    return row


def classifier_versions(s: Session, name: str) -> list[Classifier]:
    rows = list(
        s.scalars(select(Classifier).where(Classifier.name == name).order_by(Classifier.version))
    )
    if not rows:
        raise NotFound(f"classifier {name!r} does not exist", field="classifier")
    return rows


def latest_classifiers(s: Session) -> list[Classifier]:
    latest = (
        select(Classifier.name, func.max(Classifier.version).label("v"))
        .group_by(Classifier.name)
        .subquery()
    )
    return list(
        s.scalars(
            select(Classifier)
            .join(latest, and_(Classifier.name == latest.c.name, Classifier.version == latest.c.v))
            .order_by(Classifier.name)
        )
    )


def spec_of(classifier: Classifier) -> ClassifierSpec:
    return ClassifierSpec.model_validate(classifier.spec)


# -- job ingestion -------------------------------------------------------------------------------
@dataclass
class IngestReport:
    total: int = 0
    rejected: int = 0
    pending_per_chunk: dict[int, int] = field(default_factory=dict)


def queue_for(model: str) -> str:
    """One Celery queue per model, so workers with different models serve one deployment."""
    digest = hashlib.sha1(model.encode()).hexdigest()[:10]
    tail = "".join(
        c if c.isalnum() or c in "-_." else "-" for c in model.rstrip("/").split("/")[-1]
    )
    return f"labelq.{tail[:60]}.{digest}"


def find_job_by_idempotency_key(s: Session, key: str) -> Job | None:
    return s.scalar(select(Job).where(Job.idempotency_key == key))


def start_job(
    factory: sessionmaker[Session],
    classifier: Classifier,
    model: str,
    chunk_size: int,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Create the job row (no items yet). Returns (job, created); an existing job with the same
    idempotency key is returned instead of a new one."""
    try:
        with transaction(factory) as s:
            if idempotency_key:
                found = find_job_by_idempotency_key(s, idempotency_key)
                if found:
                    return found, False
            job = Job(
                id=str(uuid.uuid4()),
                classifier_id=classifier.id,
                model=model,
                queue=queue_for(model),
                state=JobState.queued,
                chunk_size=chunk_size,
                metadata_=metadata or {},
                idempotency_key=idempotency_key,
                total=0,
                succeeded=0,
                failed=0,
                chunks_total=0,
                chunks_done=0,
            )
            s.add(job)
            return job, True
    except IntegrityError:
        with factory() as s:
            found = find_job_by_idempotency_key(s, idempotency_key or "")
            if found is None:
                raise
            return found, False


class ItemIngestor:
    """Inserts a job's items in batches, so memory stays flat for any size. A bad entry is stored
    as a failed item naming its line and field: nothing accepted is lost and results keep input
    order. `add` buffers; `flush` writes (call it from a thread in async code)."""

    def __init__(self, factory: sessionmaker[Session], job: Job, template_fields: set[str]):
        self.factory = factory
        self.job_id = job.id
        self.chunk_size = job.chunk_size
        self.template_fields = template_fields
        self.report = IngestReport()
        self.rows: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return len(self.rows) >= INSERT_BATCH

    def add(self, entry: ScoreItem | InputError) -> None:
        idx = self.report.total
        row: dict[str, Any] = {
            "job_id": self.job_id,
            "idx": idx,
            "line": entry.line,
            "result": None,
            "gold_label": None,
        }
        if isinstance(entry, InputError):
            row |= {
                "custom_id": None,
                "input": None,
                "status": ItemStatus.failed,
                "error": entry.message,
                "error_field": entry.field,
            }
            self.report.rejected += 1
        else:
            record = dict(entry.fields)
            if entry.custom_id is not None:
                record["custom_id"] = entry.custom_id
            row |= {
                "input": record,
                "custom_id": None if entry.custom_id is None else str(entry.custom_id),
            }
            missing = sorted(self.template_fields - set(entry.fields))
            if missing:
                row |= {
                    "status": ItemStatus.failed,
                    "error_field": missing[0],
                    "error": f"missing field {missing[0]!r} used by the template",
                }
                self.report.rejected += 1
            else:
                row |= {"status": ItemStatus.pending, "error": None, "error_field": None}
                seq = idx // self.chunk_size
                pending = self.report.pending_per_chunk
                pending[seq] = pending.get(seq, 0) + 1
        self.rows.append(row)
        self.report.total += 1

    def flush(self) -> None:
        if self.rows:
            with transaction(self.factory) as s:
                s.execute(insert(Item), self.rows)
            self.rows = []


def ingest_items(
    factory: sessionmaker[Session],
    job: Job,
    entries: Iterable[ScoreItem | InputError],
    template_fields: set[str],
) -> IngestReport:
    """Insert every entry of an iterable (see `ItemIngestor`)."""
    ingestor = ItemIngestor(factory, job, template_fields)
    for entry in entries:
        ingestor.add(entry)
        if ingestor.full:
            ingestor.flush()
    ingestor.flush()
    return ingestor.report


def seal_job(factory: sessionmaker[Session], job_id: str, report: IngestReport) -> list[int]:
    """Create the job's chunks once all items are in; return the chunk numbers to dispatch."""
    to_run = sorted(report.pending_per_chunk)
    with transaction(factory) as s:
        job = s.get_one(Job, job_id)
        n_chunks = -(-report.total // job.chunk_size)
        rows = []
        for seq in range(n_chunks):
            start = seq * job.chunk_size
            rows.append(
                {
                    "job_id": job_id,
                    "seq": seq,
                    "start_idx": start,
                    "end_idx": min(start + job.chunk_size, report.total),
                    "state": ChunkState.pending
                    if seq in report.pending_per_chunk
                    else ChunkState.done,
                    "attempts": 0,
                    "succeeded": 0,
                    "failed": 0,
                }
            )
        for start in range(0, len(rows), INSERT_BATCH):
            s.execute(insert(Chunk), rows[start : start + INSERT_BATCH])
        job.total = report.total
        job.failed = report.rejected
        job.chunks_total = n_chunks
        job.chunks_done = n_chunks - len(to_run)
        if not to_run:
            _finish(job)
    return to_run


def fail_job(factory: sessionmaker[Session], job_id: str, error: str) -> None:
    with transaction(factory) as s:
        job = s.get_one(Job, job_id)
        job.state = JobState.failed
        job.error = error
        job.finished_at = utcnow()


def _finish(job: Job) -> None:
    """All chunks are done: the job's final state from its counts."""
    if job.state in (JobState.cancelling, JobState.cancelled):
        job.state = JobState.cancelled
    elif job.total > 0 and job.succeeded == 0:
        job.state = JobState.failed
        job.error = job.error or "every item failed"
    else:
        job.state = JobState.succeeded
    job.finished_at = utcnow()


# -- chunk processing (the worker) ---------------------------------------------------------------
@dataclass
class ChunkWork:
    job_id: str
    seq: int
    chunk_id: int
    classifier_id: int
    spec: ClassifierSpec
    model: str
    items: list[tuple[int, ScoreItem]]  # (item row id, item)


def claim_chunk(
    factory: sessionmaker[Session], job_id: str, seq: int, max_attempts: int
) -> ChunkWork | None:
    """Mark a chunk running and load its pending items; None when there is nothing to do (done,
    cancelled, or its job is being cancelled). A chunk redelivered more than `max_attempts` times
    (its worker keeps dying) fails its items instead of looping forever."""
    with transaction(factory) as s:
        chunk = s.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq))
        job = s.get(Job, job_id)
        if chunk is None or job is None:
            return None
        if chunk.state in (ChunkState.done, ChunkState.cancelled):
            return None
        if job.state in (JobState.cancelling, JobState.cancelled):
            _cancel_chunks(s, job, [chunk.id])
            return None
        claimed = s.execute(
            update(Chunk)
            .where(Chunk.id == chunk.id, Chunk.state.in_([ChunkState.pending, ChunkState.running]))
            .values(state=ChunkState.running, attempts=Chunk.attempts + 1)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        s.refresh(chunk)
        if job.state == JobState.queued:
            job.state = JobState.running
            job.started_at = utcnow()
        if chunk.attempts > max_attempts:
            give_up = f"gave up after {chunk.attempts - 1} attempts: the worker died each time"
            rows = s.scalars(_pending_items(chunk)).all()
            results = {row.id: (None, give_up) for row in rows}
            _complete_chunk(s, job, chunk, results, None)
            return None
        classifier = s.get_one(Classifier, job.classifier_id)
        items = [
            (row.id, ScoreItem.from_record(row.input or {}, line=row.line))
            for row in s.scalars(_pending_items(chunk))
        ]
        return ChunkWork(
            job_id, seq, chunk.id, classifier.id, spec_of(classifier), job.model, items
        )


def _pending_items(chunk: Chunk) -> Any:
    return (
        select(Item)
        .where(
            Item.job_id == chunk.job_id,
            Item.idx >= chunk.start_idx,
            Item.idx < chunk.end_idx,
            Item.status == ItemStatus.pending,
        )
        .order_by(Item.idx)
    )


def complete_chunk(
    factory: sessionmaker[Session],
    work: ChunkWork,
    results: dict[int, tuple[dict[str, Any] | None, str | None]],
    calibration_id: int | None,
) -> bool:
    """Write a chunk's results and count it, in one transaction. A redelivered chunk that was
    already completed writes nothing (False)."""
    with transaction(factory) as s:
        job = s.get_one(Job, work.job_id)
        chunk = s.get_one(Chunk, work.chunk_id)
        return _complete_chunk(s, job, chunk, results, calibration_id)


def _complete_chunk(
    s: Session,
    job: Job,
    chunk: Chunk,
    results: dict[int, tuple[dict[str, Any] | None, str | None]],
    calibration_id: int | None,
) -> bool:
    succeeded = sum(1 for r, _ in results.values() if r is not None)
    failed = len(results) - succeeded
    done = s.execute(
        update(Chunk)
        .where(Chunk.id == chunk.id, Chunk.state == ChunkState.running)
        .values(state=ChunkState.done, succeeded=succeeded, failed=failed)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if results:
        s.execute(
            update(Item),
            [
                {
                    "id": item_id,
                    "status": ItemStatus.succeeded if result is not None else ItemStatus.failed,
                    "result": result,
                    "error": error,
                    "calibration_id": calibration_id if result is not None else None,
                }
                for item_id, (result, error) in results.items()
            ],
        )
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
    if job.chunks_done >= job.chunks_total and not JobState(job.state).finished:
        _finish(job)
    return True


def unfinished_chunks(factory: sessionmaker[Session]) -> list[tuple[str, str, list[int]]]:
    """(job id, queue, chunk numbers) of chunks not yet done in jobs not finished: what an
    embedded worker must run again after a restart."""
    with factory() as s:
        rows = s.execute(
            select(Job.id, Job.queue, Chunk.seq)
            .join(Chunk, Chunk.job_id == Job.id)
            .where(
                Job.state.in_([JobState.queued, JobState.running]),
                Chunk.state.in_([ChunkState.pending, ChunkState.running]),
            )
            .order_by(Job.created_at, Chunk.seq)
        ).all()
    out: dict[tuple[str, str], list[int]] = {}
    for job_id, queue, seq in rows:
        out.setdefault((job_id, queue), []).append(seq)
    return [(job_id, queue, seqs) for (job_id, queue), seqs in out.items()]


# -- cancel --------------------------------------------------------------------------------------
def cancel_job(factory: sessionmaker[Session], job_id: str) -> Job:
    """Stop pending chunks now; a chunk being scored finishes and is kept."""
    with transaction(factory) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"job {job_id} does not exist", field="job_id")
        if JobState(job.state).finished:
            raise Conflict(f"job {job_id} already {job.state}")
        pending = s.scalars(
            select(Chunk.id).where(Chunk.job_id == job_id, Chunk.state == ChunkState.pending)
        ).all()
        job.state = JobState.cancelling
        _cancel_chunks(s, job, list(pending))
        return job


def _cancel_chunks(s: Session, job: Job, chunk_ids: list[int]) -> None:
    if chunk_ids:
        cancelled = s.execute(
            update(Chunk)
            .where(
                Chunk.id.in_(chunk_ids), Chunk.state.in_([ChunkState.pending, ChunkState.running])
            )
            .values(state=ChunkState.cancelled)
        ).rowcount  # type: ignore[attr-defined]
        s.execute(
            update(Item)
            .where(
                Item.job_id == job.id,
                Item.status == ItemStatus.pending,
                exists().where(
                    Chunk.id.in_(chunk_ids),
                    Item.idx >= Chunk.start_idx,
                    Item.idx < Chunk.end_idx,
                ),
            )
            .values(status=ItemStatus.cancelled)
        )
        s.execute(
            update(Job).where(Job.id == job.id).values(chunks_done=Job.chunks_done + cancelled)
        )
        s.refresh(job)
    if job.chunks_done >= job.chunks_total:
        _finish(job)


# -- reading jobs and results --------------------------------------------------------------------
def get_job(s: Session, job_id: str) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist", field="job_id")
    return job


def list_jobs(s: Session, limit: int = 50, before: datetime | None = None) -> list[Job]:
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if before is not None:
        query = query.where(Job.created_at < before)
    return list(s.scalars(query))


def iter_items(
    factory: sessionmaker[Session],
    job_id: str,
    after_idx: int = -1,
    batch: int = 1000,
    limit: int | None = None,
) -> Iterator[Item]:
    """Items in input order, read in keyset-paginated batches (any size, flat memory)."""
    served = 0
    while limit is None or served < limit:
        size = batch if limit is None else min(batch, limit - served)
        with factory() as s:
            rows = list(
                s.scalars(
                    select(Item)
                    .where(Item.job_id == job_id, Item.idx > after_idx)
                    .order_by(Item.idx)
                    .limit(size)
                )
            )
        if not rows:
            return
        yield from rows
        served += len(rows)
        after_idx = rows[-1].idx
        if len(rows) < size:
            return


# -- api keys ------------------------------------------------------------------------------------
def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(factory: sessionmaker[Session], name: str) -> str:
    """Store a new key (hashed) and return it; it is shown once."""
    key = "lq_" + secrets.token_urlsafe(32)
    with transaction(factory) as s:
        s.add(ApiKey(name=name, prefix=key[:10], key_hash=hash_key(key)))
    return key


def any_api_keys(s: Session) -> bool:
    return s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) > 0  # type: ignore[operator]


def check_api_key(s: Session, key: str) -> bool:
    row = s.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return row is not None


# -- calibrations and gold labels ----------------------------------------------------------------
def active_calibration(s: Session, classifier_id: int) -> Calibration | None:
    return s.scalar(
        select(Calibration).where(
            Calibration.classifier_id == classifier_id, Calibration.active.is_(True)
        )
    )


def get_calibration(
    s: Session, calibration_id: int, classifier_id: int | None = None
) -> Calibration:
    row = s.get(Calibration, calibration_id)
    if row is None or (classifier_id is not None and row.classifier_id != classifier_id):
        raise NotFound(f"calibration {calibration_id} does not exist", field="calibration")
    return row


def create_calibration(
    factory: sessionmaker[Session], classifier_id: int, method: str, fitted_on: dict[str, Any]
) -> Calibration:
    with transaction(factory) as s:
        row = Calibration(
            classifier_id=classifier_id,
            method=method,
            status="fitting",
            params={},
            fitted_on=fitted_on,
            metrics={},
            active=False,
        )
        s.add(row)
        s.flush()
        return row


def finish_calibration(
    factory: sessionmaker[Session],
    calibration_id: int,
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    fitted_on: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    with transaction(factory) as s:
        row = s.get_one(Calibration, calibration_id)
        row.status = "failed" if error else "ready"
        row.error = error
        if params is not None:
            row.params = params
        if metrics is not None:
            row.metrics = metrics
        if fitted_on is not None:
            row.fitted_on = {**row.fitted_on, **fitted_on}


def activate_calibration(
    factory: sessionmaker[Session], classifier_id: int, calibration_id: int
) -> Calibration:
    """Make one calibration the active one of its classifier, in one transaction."""
    with transaction(factory) as s:
        row = get_calibration(s, calibration_id, classifier_id)
        if row.status != "ready":
            raise Conflict(f"calibration {calibration_id} is {row.status}, not ready")
        s.execute(
            update(Calibration)
            .where(Calibration.classifier_id == classifier_id, Calibration.id != calibration_id)
            .values(active=False)
        )
        row.active = True
        return row


def set_gold_labels(
    factory: sessionmaker[Session],
    job_id: str,
    labels: list[tuple[int | None, Any, Any]],
    valid_labels: set[str],
) -> tuple[int, list[dict[str, Any]]]:
    """Store gold labels given as (line, custom_id, label). Returns (accepted, rejected): every
    rejected entry says why (unknown id, unknown label, duplicate), none is dropped silently."""
    rejected: list[dict[str, Any]] = []
    wanted: dict[str, tuple[int | None, str]] = {}
    for line, custom_id, label in labels:
        entry = {"line": line, "custom_id": custom_id, "label": label}
        if custom_id is None:
            rejected.append({**entry, "error": "missing custom_id", "field": "custom_id"})
        elif not isinstance(label, str) or label not in valid_labels:
            rejected.append(
                {
                    **entry,
                    "error": f"unknown label {label!r}; labels are {sorted(valid_labels)}",
                    "field": "label",
                }
            )
        elif str(custom_id) in wanted:
            rejected.append({**entry, "error": "custom_id given twice", "field": "custom_id"})
        else:
            wanted[str(custom_id)] = (line, label)
    accepted = 0
    with transaction(factory) as s:
        get_job(s, job_id)
        ids = list(wanted)
        found: dict[str, int] = {}
        for start in range(0, len(ids), INSERT_BATCH):
            part = ids[start : start + INSERT_BATCH]
            for item_id, custom_id in s.execute(
                select(Item.id, Item.custom_id).where(
                    Item.job_id == job_id, Item.custom_id.in_(part)
                )
            ):
                found[custom_id] = item_id
        updates = []
        for custom_id, (line, label) in wanted.items():
            if custom_id not in found:
                rejected.append(
                    {
                        "line": line,
                        "custom_id": custom_id,
                        "label": label,
                        "error": "no item of this job has this custom_id",
                        "field": "custom_id",
                    }
                )
            else:
                updates.append({"id": found[custom_id], "gold_label": label})
        if updates:
            s.execute(update(Item), updates)
        accepted = len(updates)
    return accepted, rejected


def labelled_results(factory: sessionmaker[Session], job_id: str) -> Iterator[Item]:
    """Scored items of a job that carry a gold label, in input order."""
    for item in iter_items(factory, job_id):
        if item.gold_label is not None and item.result is not None:
            yield item
