"""Putting items into a job: the one way in, for an HTTP upload (JSON or streamed JSONL), a
pipeline run, a retry and the tests alike.

A job is stored in several short transactions on purpose: the job row first (so an
Idempotency-Key is claimed at once), then items in batches of `INSERT_BATCH` (a 100k-line upload
is never held in memory or in one long transaction), then its chunks, then their tasks. A bad
entry is kept as a failed item naming its line and field, so nothing accepted is lost and
results keep input order. An upload that breaks off is failed with the reason; what it stored
stays readable.

    opened = open_job(ctx, JobRequest(classifier="news"))
    add(ctx, opened.submission, entries)    # as many times as needed
    seal(ctx, opened.submission)            # chunks cut, tasks sent

or, for entries at hand, `submit(ctx, request, entries)`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from db import chunks
from db import jobs as job_rows
from db.classifiers import get_classifier, spec_of
from db.jobs import INSERT_BATCH
from db.models import Classifier, FailureKind, ItemStatus, Job
from labelq import outbound
from labelq.errors import InputError, OverLimit, TooLarge
from labelq.jsonl import depth
from labelq.scoring import Item
from labelq.settings import Admission, Settings
from labelq.spec import ClassifierSpec
from service.context import Ctx
from service.dispatch import queue_for, send

# Entries stored per transaction (and what an upload hands `add` at a time).
BATCH = INSERT_BATCH


class JobRequest(BaseModel):
    """What a submitter asks for, besides the items."""

    classifier: str
    version: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = None
    idempotency_key: str | None = None
    chunk_size: int | None = Field(None, description="items per chunk; default LABELQ_CHUNK_SIZE")
    expires_after: float | None = Field(
        None,
        gt=0,
        description="seconds to end by, else `expired`; default LABELQ_JOB_EXPIRES_AFTER",
    )
    items: int | None = Field(None, description="how many items, when known before they come")


def admit(limits: Admission, in_flight: tuple[int, int], adding: int | None) -> None:
    """Refuse a new job of a tenant at its limits (`OverLimit`, a 429): `in_flight` is its
    (unfinished jobs, items not yet scored); `adding` the new job's items when known (a
    streamed upload's are not: it is admitted while the tenant is under its item limit)."""
    jobs, items = in_flight
    over = []
    if limits.jobs is not None and jobs >= limits.jobs:
        over.append(f"{jobs} unfinished jobs (limit {limits.jobs})")
    cap = limits.items
    if cap is not None and (items + adding > cap if adding else items >= cap):
        more = f" + {adding} in this job" if adding else ""
        over.append(f"{items} items waiting{more} (limit {limits.items})")
    if over:
        raise OverLimit(
            f"this tenant is at its limit: {' and '.join(over)}; submit once jobs in flight "
            "have ended (LABELQ_TENANT_MAX_JOBS, LABELQ_TENANT_MAX_ITEMS)",
            limits=limits.model_dump(),
            in_flight={"jobs": jobs, "items": items},
        )


@dataclass
class IngestReport:
    total: int = 0
    rejected: int = 0
    pending_seqs: set[int] = field(default_factory=set)


class Submission:
    """A job being uploaded: entries are checked and buffered by `accept` in input order, and
    stored by `flush` (the module's `add` does both)."""

    def __init__(self, job: Job, spec: ClassifierSpec, settings: Settings):
        self.lease = settings.upload_lease_seconds
        self.renewed = time.monotonic()
        self.max_items = settings.max_items_per_job
        self.max_fields = settings.max_fields_per_item
        self.max_depth = settings.max_json_depth
        self.job_id = job.id
        self.queue = job.queue
        self.chunk_size = job.chunk_size
        self.template_fields = spec.template_variables
        self.report = IngestReport()
        self.rows: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return len(self.rows) >= INSERT_BATCH

    @property
    def renewal_due(self) -> bool:
        """A third of the upload lease has passed since it was last renewed."""
        return time.monotonic() - self.renewed > self.lease / 3

    def accept(self, entry: Item | InputError) -> None:
        """Check an entry and buffer its row (a bad entry as a failed item naming why)."""
        if self.report.total >= self.max_items:
            raise TooLarge(
                f"a job holds at most {self.max_items} items (LABELQ_MAX_ITEMS_PER_JOB)",
                field="items",
            )
        if isinstance(entry, Item):
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
            "error_kind": None,
            "custom_id": None,
            "input": None,
        }
        if isinstance(entry, InputError):
            row |= {
                "status": ItemStatus.failed,
                "error": entry.message,
                "error_field": entry.field,
                "error_kind": FailureKind.input,
            }
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
                    "error_kind": FailureKind.input,
                }
        if row["status"] == ItemStatus.failed:
            self.report.rejected += 1
        else:
            self.report.pending_seqs.add(idx // self.chunk_size)
        self.rows.append(row)
        self.report.total += 1


@dataclass
class Opened:
    """A job opened for its items (`submission`), or the job an Idempotency-Key already made
    (`submission` is None)."""

    job_id: str
    submission: Submission | None


def _model_of(settings: Settings, name: str, spec: ClassifierSpec) -> str:
    try:
        return settings.resolve_model(spec.model)
    except InputError as exc:
        raise InputError(f"classifier {name!r}: {exc.message}", field="classifier") from None


def _check_webhook(settings: Settings, url: str | None) -> None:
    """What can be told of a webhook URL now: http(s), a host, no credentials, no refused
    literal address (a host name is checked at each connection)."""
    if url is not None:
        outbound.check_url(url, settings.webhook_policy(), "webhook_url")


def open_job(ctx: Ctx, request: JobRequest) -> Opened:
    """Create the job row of the caller's classifier (no items yet); the same Idempotency-Key
    returns the job it made the first time instead."""
    _check_webhook(ctx.settings, request.webhook_url)
    key = request.idempotency_key
    try:
        with ctx.tx() as s:
            classifier = get_classifier(s, request.classifier, request.version, tenant=ctx.owner)
            spec = spec_of(classifier)
            model = _model_of(ctx.settings, request.classifier, spec)
            if key:
                found = job_rows.find_job_by_idempotency_key(s, key, tenant=ctx.owner)
                if found is not None:
                    return Opened(found.id, None)
            job_rows.hold_admission(s, tenant=ctx.owner)  # until this job is stored
            limits = ctx.settings.admission(ctx.owner)
            admit(limits, job_rows.in_flight(s, tenant=ctx.owner), request.items)
            job = job_rows.add_job(
                s,
                classifier,
                model,
                queue_for(model),
                request.chunk_size or ctx.settings.chunk_size,
                request.metadata,
                key,
                request.webhook_url,
                upload_lease=ctx.settings.upload_lease_seconds,
                expires_after=request.expires_after or ctx.settings.job_expires_after or None,
                reserve=request.items or 0,
            )
            return Opened(job.id, Submission(job, spec, ctx.settings))
    except IntegrityError:
        # The same key sent twice at once by one tenant: the other request made the job.
        with ctx.reads() as s:
            found = job_rows.find_job_by_idempotency_key(s, key or "", tenant=ctx.owner)
        if found is None:
            raise
        return Opened(found.id, None)


def open_for(
    ctx: Ctx, classifier: Classifier, like: Job, metadata: dict[str, Any], key: str
) -> Opened:
    """A new job of a stored classifier version on `like`'s model, queue and chunk size (a
    retry), or the job `key` (an Idempotency-Key of the caller's) already made."""
    try:
        with ctx.tx() as s:
            found = job_rows.find_job_by_idempotency_key(s, key, tenant=ctx.owner)
            if found is not None:
                return Opened(found.id, None)
            job_rows.hold_admission(s, tenant=ctx.owner)
            admit(ctx.settings.admission(ctx.owner), job_rows.in_flight(s, tenant=ctx.owner), None)
            job = job_rows.add_job(
                s,
                classifier,
                like.model,
                like.queue,
                like.chunk_size,
                metadata,
                key,
                upload_lease=ctx.settings.upload_lease_seconds,
                expires_after=ctx.settings.job_expires_after or None,
            )
            return Opened(job.id, Submission(job, spec_of(classifier), ctx.settings))
    except IntegrityError:  # the same retry asked for twice at once: the other made it
        with ctx.reads() as s:
            found = job_rows.find_job_by_idempotency_key(s, key, tenant=ctx.owner)
        if found is None:
            raise
        return Opened(found.id, None)


def renew(ctx: Ctx, submission: Submission) -> None:
    """Keep the upload's lease: its items are still arriving."""
    with ctx.tx() as s:
        job_rows.renew_upload(s, submission.job_id, submission.lease)
    submission.renewed = time.monotonic()


def flush(ctx: Ctx, submission: Submission) -> None:
    """Store the buffered rows (one transaction), and count them on the job for admission."""
    if submission.rows:
        with ctx.tx() as s:
            job_rows.insert_items(s, submission.rows)
            job_rows.count_received(s, submission.job_id, submission.report.total)
        submission.rows = []


def add(ctx: Ctx, submission: Submission, entries: Iterable[Item | InputError]) -> None:
    """Check and store entries, in input order, a batch per transaction, keeping the upload's
    lease."""
    for entry in entries:
        submission.accept(entry)
        if submission.full:
            flush(ctx, submission)
            if submission.renewal_due:
                renew(ctx, submission)
    flush(ctx, submission)


def seal(ctx: Ctx, submission: Submission) -> None:
    """Cut the chunks and send their tasks. If sending fails the chunks stay unsent and the
    reconciler sends them: the job is accepted either way."""
    flush(ctx, submission)
    report = submission.report
    with ctx.tx() as s:
        job = job_rows.get_job(s, submission.job_id, tenant=None)
        chunks.add_chunks(s, job, report.total, report.rejected, report.pending_seqs)
    send(ctx, submission.job_id, submission.queue, sorted(report.pending_seqs))


def abort(ctx: Ctx, submission: Submission, error: str) -> None:
    """End an upload that broke off: what it accepted is stored, and the job fails with
    `error`."""
    flush(ctx, submission)
    with ctx.tx() as s:
        job_rows.fail_upload(job_rows.get_job(s, submission.job_id, tenant=None), error)


def submit(ctx: Ctx, request: JobRequest, entries: Iterable[Item | InputError]) -> str:
    """A whole job from entries at hand; its id (an Idempotency-Key's earlier job, if any)."""
    opened = open_job(ctx, request)
    if opened.submission is not None:
        fill(ctx, opened.submission, entries)
    return opened.job_id


def fill(ctx: Ctx, submission: Submission, entries: Iterable[Item | InputError]) -> None:
    """Add every entry and seal the job; an upload that breaks off is aborted with the
    reason (and the error raised)."""
    try:
        add(ctx, submission, entries)
        seal(ctx, submission)
    except Exception as exc:
        abort(ctx, submission, f"upload interrupted after {submission.report.total} items: {exc}")
        raise
