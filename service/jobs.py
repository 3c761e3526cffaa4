"""Jobs: follow, list, cancel, retry. Submitting is `service.ingest`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from db import chunks, reads
from db import jobs as job_rows
from db.models import ItemStatus, JobItem, JobState
from labelq.errors import Conflict
from labelq.scoring import Item
from service import ingest
from service import workers as worker_rows
from service.context import Ctx


class JobCost(BaseModel):
    """Engine time (each call's fair share of the engine's busy time: a worker's two tasks share
    one engine) and prompt tokens, summed over the job's chunks."""

    engine_seconds: float
    prompt_tokens: int
    engine_ms_per_item: float | None
    price: float | None = Field(description="engine hours x LABELQ_ENGINE_HOUR_PRICE, if set")


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
    failures: dict[str, int] = Field(
        default_factory=dict,
        description="Failed items by cause: `input` (the item itself; it fails again if sent "
        "again) and `engine` (the model or the worker; a retry may score it).",
    )
    cancelled: int
    progress: float = Field(description="Finished items (succeeded, failed) over total.")
    metadata: dict[str, Any]
    error: str | None
    warnings: list[str] = Field(
        default_factory=list, description="E.g. no live worker serves the job's model queue."
    )
    fingerprints: list[str] = Field(
        default_factory=list,
        description="The engines that scored it (model files, dtype, engine and labelq "
        "versions, scoring strategy): more than one is a warning, their scores may differ.",
    )
    cost: JobCost | None = Field(
        None,
        description="What scoring it cost so far; None when nothing was recorded (scored by an "
        "older release, or before migration 0024).",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return JobState(self.state).finished

    @classmethod
    def of(
        cls,
        job: dict[str, Any],
        cancelled: int = 0,
        warnings: list[str] | None = None,
        failures: dict[str, int] | None = None,
        fingerprints: list[str] | None = None,
    ) -> JobStatus:
        """From `db.reads.STATUS_COLUMNS` by name."""
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
            failures=failures or {},
            cancelled=cancelled,
            progress=(done / total) if total else (1.0 if finished_at else 0.0),
            metadata=job["metadata"],
            error=job["error"],
            warnings=warnings or [],
            fingerprints=fingerprints or [],
            created_at=job["created_at"],
            started_at=job["started_at"],
            finished_at=finished_at,
        )


def no_worker_warning(queue: str, model: str, stale_after: float) -> str:
    return (
        f"no worker has been seen on queue {queue} (model {model}) in the last "
        f"{stale_after:g} s: start one with `labelq worker --model {model}`"
    )


def status(ctx: Ctx, job_id: str) -> JobStatus:
    """A job's state, counts and warnings (reads only: runs on the API's event loop)."""
    with ctx.reads() as s:
        job = reads.job_status_row(s, job_id, tenant=ctx.tenant)
        cancelled = (
            job_rows.count_items(s, job_id, ItemStatus.cancelled)
            if job["state"] in (JobState.cancelling, JobState.cancelled, JobState.expired)
            else 0
        )
        failures = job_rows.failures_by_kind(s, job_id) if job["failed"] else {}
        fingerprints, mismatched = chunks.engines_of(s, job_id)
        spent = chunks.job_cost(s, job_id) if ctx.services.features.has(s, "cost") else None
    warnings = []
    if len(fingerprints) > 1:
        warnings.append(
            f"scored by {len(fingerprints)} engines ({', '.join(fingerprints)}): a worker of "
            "another model build, precision or version serves this queue, and their scores "
            "may differ"
        )
    if mismatched:
        refused = ctx.settings.calibration_engine_mismatch == "refuse"
        warnings.append(
            f"{mismatched} chunk(s) met a calibration fitted on another engine's scores: "
            + ("stored uncalibrated" if refused else "calibrated with it all the same")
            + " (LABELQ_CALIBRATION_ENGINE_MISMATCH)"
        )
    if not JobState(job["state"]).finished:
        queue, model = job["queue"], job["model"]
        if not ctx.services.live_queues.of(ctx).get(queue):
            stale_after = ctx.settings.worker_stale_after
            warnings.append(no_worker_warning(queue, model, stale_after))
            if failed := worker_rows.failed_loads(ctx).get(queue):
                warnings.append(
                    f"worker {failed.worker} cannot load model {model} ({failed.attempts} "
                    f"attempt(s), still trying): {failed.error}"
                )
    out = JobStatus.of(job, cancelled, warnings, failures, fingerprints)
    if spent is not None:
        price = ctx.settings.engine_hour_price
        out.cost = JobCost(
            engine_seconds=spent.engine_seconds,
            prompt_tokens=spent.prompt_tokens,
            engine_ms_per_item=1000 * spent.engine_seconds / out.succeeded
            if out.succeeded
            else None,
            price=None if price is None else spent.engine_seconds / 3600 * price,
        )
    return out


def list_jobs(ctx: Ctx, limit: int) -> list[JobStatus]:
    """The caller's newest jobs."""
    with ctx.reads() as s:
        return [JobStatus.of(job) for job in reads.list_jobs(s, limit, tenant=ctx.tenant)]


def cancel(ctx: Ctx, job_id: str) -> JobStatus:
    """Pending chunks stop at once; a chunk being scored finishes and keeps its results."""
    with ctx.tx() as s:
        chunks.cancel_job(s, job_id, tenant=ctx.tenant)
    return status(ctx, job_id)


def items(ctx: Ctx, job_id: str) -> Iterator[JobItem]:
    """Every item of a job (found visible to the caller first) in input order, a page at a
    time."""
    with ctx.reads() as s:
        job_rows.readable(job_rows.get_job(s, job_id, tenant=ctx.tenant))
    return ctx.pages(
        lambda s, after, size: job_rows.items_page(s, job_id, after, size),
        -1,
        lambda item: item.idx,
    )


@dataclass
class Retry:
    """A retry's job, and its submission when this call made it (None: an earlier call did,
    and the same job comes back)."""

    status: JobStatus
    submission: ingest.Submission | None


def start_retry(ctx: Ctx, job_id: str) -> Retry:
    """A new job for this ended job's failed and cancelled items that have an input, with the
    same classifier version, model and custom_ids; its metadata names the original. Asked
    again, the same job comes back (the retry is the original job's Idempotency-Key
    `retry:<id>`). Its items are ingested by `fill_retry`, which the caller may run later."""
    with ctx.reads() as s:
        original = job_rows.readable(job_rows.get_job(s, job_id, tenant=ctx.tenant))
        classifier = job_rows.job_classifier(s, original)
    if not JobState(original.state).finished:
        raise Conflict(
            f"job {job_id} is {original.state}: retry it once it has ended", field="job_id"
        )
    metadata = {**original.metadata_, "retry_of": job_id}
    opened = ingest.open_for(ctx, classifier, original, metadata, f"retry:{job_id}")
    return Retry(status(ctx, opened.job_id), opened.submission)


def fill_retry(ctx: Ctx, job_id: str, submission: ingest.Submission) -> None:
    """Ingest a retry's items (the original's failed and cancelled ones) and seal it; if this
    stops halfway (the process dies), the retry's upload lease runs out and it fails."""
    retried = (
        Item.from_record(item.input, line=item.line)
        for item in items(ctx, job_id)
        if item.status in (ItemStatus.failed, ItemStatus.cancelled) and item.input is not None
    )
    ingest.fill(ctx, submission, retried)


def retry(ctx: Ctx, job_id: str) -> JobStatus:
    """`start_retry` and `fill_retry` at once (what callers without a background use)."""
    started = start_retry(ctx, job_id)
    if started.submission is not None:
        fill_retry(ctx, job_id, started.submission)
    return status(ctx, started.status.id)
