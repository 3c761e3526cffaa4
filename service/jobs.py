"""Jobs: submit (items stored as they arrive), follow, cancel, retry.

Submitting takes several short transactions on purpose: the job row first (so an idempotency
key is claimed at once), then items in batches of `INSERT_BATCH` (a 100k-line upload is never
held in memory or in one long transaction), then the chunks, then the tasks. A job whose upload
breaks off is failed with the reason; what it stored stays readable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs as job_rows
from db.classifiers import get_classifier, spec_of
from db.jobs import INSERT_BATCH
from db.models import DEFAULT_TENANT, Classifier, ItemStatus, Job, JobState, utcnow
from db.session import transaction
from labelq.errors import Conflict, InputError, TooLarge
from labelq.jsonl import depth
from labelq.scoring import Item as ScoreItem
from labelq.settings import Settings
from labelq.spec import ClassifierSpec
from service.dispatch import Dispatcher, queue_for
from service.workers import live_queues


class JobStatus(BaseModel):
    """A job as users see it: state, counts, progress and anything in its way."""

    id: str
    classifier: str
    version: int
    model: str
    state: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    progress: float = Field(description="Finished items (succeeded, failed) over total.")
    metadata: dict[str, Any]
    error: str | None
    warnings: list[str] = Field(
        default_factory=list, description="E.g. no live worker serves the job's model queue."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(
        cls, job: dict[str, Any], cancelled: int = 0, warnings: list[str] | None = None
    ) -> JobStatus:
        """From `db.jobs.STATUS_COLUMNS` by name."""
        total, succeeded, failed = job["total"], job["succeeded"], job["failed"]
        finished_at = job["finished_at"]
        done = succeeded + failed
        return cls(
            id=job["id"],
            classifier=job["classifier"],
            version=job["version"],
            model=job["model"],
            state=job["state"],
            total=total,
            succeeded=succeeded,
            failed=failed,
            cancelled=cancelled,
            progress=(done / total) if total else (1.0 if finished_at else 0.0),
            metadata=job["metadata"],
            error=job["error"],
            warnings=warnings or [],
            created_at=job["created_at"],
            started_at=job["started_at"],
            finished_at=finished_at,
        )


def no_worker_warning(queue: str, model: str, stale_after: float) -> str:
    return (
        f"no worker has been seen on queue {queue} (model {model}) in the last "
        f"{stale_after:g} s: start one with `labelq worker --model {model}`"
    )


def job_status(
    s: Session,
    job_id: str,
    settings: Settings,
    tenant: str | None = None,
    live: Callable[[Session], dict[str, int]] | None = None,
) -> JobStatus:
    """`live`: queue -> live workers (an API process's `service.workers.LiveQueues`; read
    afresh if None)."""
    job = job_rows.job_status_row(s, job_id, tenant)
    cancelled = (
        job_rows.count_items(s, job_id, ItemStatus.cancelled)
        if job["state"] in (JobState.cancelling, JobState.cancelled)
        else 0
    )
    warnings = []
    if not JobState(job["state"]).finished:
        seen = live(s) if live else live_queues(s, settings.worker_stale_after)
        queue, model = job["queue"], job["model"]
        if not seen.get(queue):
            warnings.append(no_worker_warning(queue, model, settings.worker_stale_after))
    return JobStatus.of(job, cancelled, warnings)


def list_jobs(s: Session, limit: int, tenant: str = DEFAULT_TENANT) -> list[JobStatus]:
    return [JobStatus.of(job) for job in job_rows.list_jobs(s, limit, tenant)]


def resolve_classifier(
    s: Session, name: str, version: int | None, settings: Settings, tenant: str = DEFAULT_TENANT
) -> tuple[Classifier, ClassifierSpec, str]:
    """A classifier version, its spec and the model that serves it."""
    classifier = get_classifier(s, name, version, tenant)
    spec = spec_of(classifier)
    try:
        model = settings.resolve_model(spec.model)
    except InputError as exc:
        raise InputError(f"classifier {name!r}: {exc.message}", field="classifier") from None
    return classifier, spec, model


@dataclass
class IngestReport:
    total: int = 0
    rejected: int = 0
    pending_seqs: set[int] = field(default_factory=set)


class Submission:
    """A job being uploaded: `add` its entries in input order (a bad one is kept as a failed
    item naming its line and field, so nothing accepted is lost and results keep input order),
    `flush` when `full` (from a thread, in async code), then `seal`."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        job: Job,
        spec: ClassifierSpec,
        settings: Settings | None = None,
    ):
        limits = settings or Settings()
        self.max_items = limits.max_items_per_job
        self.max_fields = limits.max_fields_per_item
        self.max_depth = limits.max_json_depth
        self.factory = factory
        self.job_id = job.id
        self.queue = job.queue
        self.chunk_size = job.chunk_size
        self.template_fields = spec.template_variables
        self.report = IngestReport()
        self.rows: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return len(self.rows) >= INSERT_BATCH

    def add(self, entry: ScoreItem | InputError) -> None:
        if self.report.total >= self.max_items:
            raise TooLarge(
                f"a job holds at most {self.max_items} items (LABELQ_MAX_ITEMS_PER_JOB)",
                field="items",
            )
        if isinstance(entry, ScoreItem):
            if len(entry.fields) > self.max_fields:
                entry = InputError(
                    f"{len(entry.fields)} fields; at most {self.max_fields} per item",
                    line=entry.line,
                )
            elif depth(entry.fields, self.max_depth) > self.max_depth:
                entry = InputError(f"nested deeper than {self.max_depth} levels", line=entry.line)
        idx = self.report.total
        row: dict[str, Any] = {
            "job_id": self.job_id,
            "idx": idx,
            "line": entry.line,
            "result": None,
            "gold_label": None,
            "status": ItemStatus.pending,
            "error": None,
            "error_field": None,
            "custom_id": None,
            "input": None,
        }
        if isinstance(entry, InputError):
            row |= {"status": ItemStatus.failed, "error": entry.message, "error_field": entry.field}
        else:
            record = dict(entry.fields)
            if entry.custom_id is not None:
                record["custom_id"] = entry.custom_id
                row["custom_id"] = str(entry.custom_id)
            row["input"] = record
            missing = sorted(self.template_fields - set(entry.fields))
            if missing:
                row |= {
                    "status": ItemStatus.failed,
                    "error_field": missing[0],
                    "error": f"missing field {missing[0]!r} used by the template",
                }
        if row["status"] == ItemStatus.failed:
            self.report.rejected += 1
        else:
            self.report.pending_seqs.add(idx // self.chunk_size)
        self.rows.append(row)
        self.report.total += 1

    def add_all(self, entries: Iterable[ScoreItem | InputError]) -> None:
        """Add and flush as needed (synchronous callers)."""
        for entry in entries:
            self.add(entry)
            if self.full:
                self.flush()
        self.flush()

    def flush(self) -> None:
        if self.rows:
            with transaction(self.factory) as s:
                job_rows.insert_items(s, self.rows)
            self.rows = []

    def seal(self, dispatcher: Dispatcher) -> None:
        """Cut the chunks and send their tasks. If sending fails the chunks stay unsent and the
        reconciler sends them: the job is accepted either way."""
        self.flush()
        with transaction(self.factory) as s:
            job = job_rows.get_job(s, self.job_id)
            job_rows.add_chunks(
                s, job, self.report.total, self.report.rejected, self.report.pending_seqs
            )
        send(self.factory, dispatcher, self.job_id, self.queue, sorted(self.report.pending_seqs))

    def abort(self, error: str) -> None:
        with transaction(self.factory) as s:
            job_rows.mark_failed(job_rows.get_job(s, self.job_id), error)


def send(
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    job_id: str,
    queue: str,
    seqs: list[int],
) -> bool:
    """Send chunk tasks and record when. A failure to send is logged, not raised: unsent
    chunks are the reconciler's to send."""
    import logging

    if not seqs:
        return True
    # Taken before sending: a worker may claim a chunk before dispatch() returns, and a send
    # recorded after the claim would hide the chunk from the reconciler if that worker died.
    sent_at = utcnow()
    try:
        dispatcher.dispatch(job_id, queue, seqs)
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "could not send %d chunk(s) of job %s to %s (%s); the reconciler will",
            len(seqs),
            job_id,
            queue,
            exc,
        )
        return False
    with transaction(factory) as s:
        job_rows.mark_dispatched(s, job_id, seqs, sent_at)
    return True


def start(
    factory: sessionmaker[Session],
    settings: Settings,
    name: str,
    version: int | None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> tuple[Job, ClassifierSpec, bool]:
    """Create the job row (no items yet). Returns (job, spec, created): an existing job with
    the same idempotency key is returned instead of a new one."""
    if webhook_url is not None:
        if not webhook_url.startswith(("http://", "https://")):
            raise InputError("webhook_url must be an http(s) URL", field="webhook_url")
        if not settings.webhook_secret:
            raise InputError(
                "webhooks are signed: set LABELQ_WEBHOOK_SECRET on the service first",
                field="webhook_url",
            )
    try:
        with transaction(factory) as s:
            classifier, spec, model = resolve_classifier(s, name, version, settings, tenant)
            if idempotency_key:
                found = job_rows.find_job_by_idempotency_key(s, idempotency_key)
                if found and found.tenant == tenant:
                    return found, spec, False
            job = job_rows.add_job(
                s,
                classifier,
                model,
                queue_for(model),
                settings.chunk_size,
                metadata,
                idempotency_key,
                webhook_url,
            )
            return job, spec, True
    except IntegrityError:
        with factory() as s:
            found = job_rows.find_job_by_idempotency_key(s, idempotency_key or "")
            if found is None:
                raise
            if found.tenant != tenant:  # another tenant's key: say nothing of its job
                raise Conflict(
                    "this Idempotency-Key is taken: use another", field="Idempotency-Key"
                ) from None
            return found, spec_of(job_rows.job_classifier(s, found)), False


def submit_items(
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    settings: Settings,
    name: str,
    entries: Iterable[ScoreItem | InputError],
    version: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """A whole job from an iterable of entries (what the scheduler and tests use); its id."""
    job, spec, _ = start(factory, settings, name, version, metadata)
    submission = Submission(factory, job, spec, settings)
    submission.add_all(entries)
    submission.seal(dispatcher)
    return job.id


def cancel(s: Session, job_id: str, tenant: str | None = None) -> None:
    """Pending chunks stop at once; a chunk being scored finishes and keeps its results."""
    job_rows.cancel_job(s, job_id, tenant)
    s.commit()


def retry(
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    job_id: str,
    tenant: str | None = None,
) -> str:
    """A new job of this job's failed and cancelled items that have an input, with the same
    classifier version and custom_ids; its metadata names the original. Returns its id."""
    with factory() as s:
        original = job_rows.get_job(s, job_id, tenant=tenant)
        classifier = job_rows.job_classifier(s, original)
        metadata = {**original.metadata_, "retry_of": job_id}
        model, queue, chunk_size = original.model, original.queue, original.chunk_size
    with transaction(factory) as s:
        job = job_rows.add_job(s, classifier, model, queue, chunk_size, metadata)
    submission = Submission(factory, job, spec_of(classifier))
    retried = (
        ScoreItem.from_record(item.input, line=item.line)
        for item in iter_items(factory, job_id)
        if item.status in (ItemStatus.failed, ItemStatus.cancelled) and item.input is not None
    )
    submission.add_all(retried)
    submission.seal(dispatcher)
    return job.id


def iter_items(
    factory: sessionmaker[Session], job_id: str, after_idx: int = -1, batch: int = 1000
) -> Iterable[Any]:
    """Every item of a job in input order, one short session per page: a 1M-item export holds
    neither a transaction nor its rows for its whole duration."""
    while True:
        with factory() as s:
            page = job_rows.items_page(s, job_id, after_idx, batch)
        yield from page
        if len(page) < batch:
            return
        after_idx = page[-1].idx
