"""/v1/jobs: submit batch jobs (JSON or streamed JSONL), follow them, cancel them, get results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from api.deps import DbDep, Reader, ReadsDep, StateDep, Submitter, submission_quota
from api.errors import input_error
from api.schemas import JobCreate, JobList, model_json, page_json
from db.models import JobState
from labelq.errors import InputError, LabelqError
from labelq.jsonl import JSONL_TYPES, NDJSON, read_items
from labelq.scoring import Item as ScoreItem
from service import jobs, labels, results, webhooks
from service.jobs import JobStatus
from service.labels import LabelsReport
from service.results import JobMetrics, ResultsPage
from service.webhooks import DeliveryOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip()


async def _stream_lines(
    request: Request, max_line: int
) -> AsyncIterator[tuple[int, bytes | InputError]]:
    """Lines of the body as they arrive, numbered from 1, without holding the whole body. They
    stay bytes: a line that is not UTF-8 fails alone, with its number; so does a line longer
    than `max_line` bytes, which is skipped as it arrives, never held."""
    buffer = b""
    number = 0
    overlong = False

    def too_long(n: int) -> InputError:
        return InputError(f"line longer than {max_line} bytes (LABELQ_MAX_LINE_BYTES)", line=n)

    async for chunk in request.stream():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            number += 1
            yield number, too_long(number) if overlong or len(line) > max_line else line
            overlong = False
        if len(buffer) > max_line:
            overlong, buffer = True, b""
    if buffer or overlong:
        yield number + 1, too_long(number + 1) if overlong else buffer


def _status(st: StateDep, job_id: str, tenant: str | None = None) -> JobStatus:
    with st.reads() as s:
        return jobs.job_status(s, job_id, st.settings, tenant, st.live_queues)


@router.post(
    "",
    status_code=202,
    response_model=JobStatus,
    dependencies=[Depends(submission_quota)],
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": JobCreate.model_json_schema()},
                NDJSON: {"schema": {"type": "string", "description": "one JSON item per line"}},
            },
            "required": True,
        }
    },
)
async def create_job(
    request: Request,
    st: StateDep,
    who: Submitter,
    classifier: str | None = Query(None, description="with a JSONL body: the classifier name"),
    version: int | None = Query(None, description="with a JSONL body: the classifier version"),
    webhook_url: str | None = Query(None, description="with a JSONL body: notified at the end"),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200),
) -> Response:
    """Submit a job. JSON: `{"classifier", "version"?, "items", "metadata"?}`. JSONL: one item per
    line, streamed (`Content-Type: application/x-ndjson`, `?classifier=`). A bad item is kept as
    a failed item naming its line; the others run. The same `Idempotency-Key` returns the job
    it made the first time."""
    streamed = _media_type(request) in JSONL_TYPES
    body: JobCreate | None = None
    if streamed:
        if not classifier:
            raise InputError("a JSONL upload needs ?classifier=NAME", field="classifier")
        name, ver, metadata, hook = classifier, version, {}, webhook_url
    else:
        try:
            body = JobCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise input_error(exc, "job body") from None
        name, ver, metadata, hook = body.classifier, body.version, body.metadata, body.webhook_url

    job, spec, created = await run_in_threadpool(
        jobs.start,
        st.factory,
        st.settings,
        name,
        ver,
        metadata,
        idempotency_key,
        hook,
        who.tenant,
    )
    if not created:
        out = await run_in_threadpool(_status, st, job.id)
        return model_json(out)

    submission = jobs.Submission(st.factory, job, spec, st.settings)
    try:
        if body is None:
            max_depth = st.settings.max_json_depth
            async for number, line in _stream_lines(request, st.settings.max_line_bytes):
                if isinstance(line, InputError):
                    submission.add(line)
                    continue
                for parsed in read_items([line], start_line=number, max_depth=max_depth):
                    submission.add(parsed)
                if submission.full:
                    await run_in_threadpool(submission.flush)
        else:
            for i, record in enumerate(body.items):
                try:
                    entry: ScoreItem | InputError = ScoreItem.from_record(record, line=i + 1)
                except InputError as exc:
                    field = f"items.{i}.{exc.field or ''}".rstrip(".")
                    entry = InputError(exc.message, field=field, line=i + 1)
                submission.add(entry)
                if submission.full:
                    await run_in_threadpool(submission.flush)
        await run_in_threadpool(submission.seal, st.dispatcher)
    except Exception as exc:
        message = f"upload interrupted after {submission.report.total} items: {exc}"
        await run_in_threadpool(submission.abort, message)
        if isinstance(exc, LabelqError):
            raise
        raise InputError(message) from None

    report = submission.report
    st.metrics.jobs_submitted.inc()
    st.metrics.items_ingested.labels("accepted").inc(report.total - report.rejected)
    st.metrics.items_ingested.labels("rejected").inc(report.rejected)
    out = await run_in_threadpool(_status, st, job.id)
    return model_json(out, 202)


@router.get("", response_model=JobList)
async def list_jobs(db: ReadsDep, who: Reader, limit: int = Query(50, ge=1, le=500)) -> Response:
    return model_json(JobList(data=await db(jobs.list_jobs, limit, who.tenant)))


@router.get("/{job_id}", response_model=JobStatus)
async def get_job(job_id: str, db: ReadsDep, st: StateDep, who: Reader) -> Response:
    return model_json(await db(jobs.job_status, job_id, st.settings, who.tenant, st.live_queues))


@router.post("/{job_id}/cancel", response_model=JobStatus)
async def cancel_job(job_id: str, db: DbDep, st: StateDep, who: Submitter) -> JobStatus:
    """Pending chunks stop at once; a chunk being scored finishes and keeps its results."""
    await db(jobs.cancel, job_id, who.tenant)
    return await db(jobs.job_status, job_id, st.settings, who.tenant, st.live_queues)


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobStatus,
    dependencies=[Depends(submission_quota)],
)
def retry_failed(job_id: str, st: StateDep, who: Submitter) -> JobStatus:
    """A new job of this job's failed (and cancelled) items that have an input, with the same
    classifier version and custom_ids; its metadata names the original. Lines that were not
    valid JSON cannot be retried: fix and resubmit them."""
    new_id = jobs.retry(st.factory, st.dispatcher, job_id, who.tenant)
    st.metrics.jobs_submitted.inc()
    return _status(st, new_id, who.tenant)


CALIBRATION_QUERY = Query(
    None, description="none | active | <calibration id>; unset: as stored when scored"
)


@router.get(
    "/{job_id}/results",
    response_model=ResultsPage,
    responses={
        200: {
            "content": {
                NDJSON: {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            }
        }
    },
)
async def get_results(
    job_id: str,
    st: StateDep,
    db: ReadsDep,
    who: Reader,
    format: Literal["json", "jsonl", "csv"] = Query("json"),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
    calibration: str | None = CALIBRATION_QUERY,
) -> Response:
    """Results in input order: a page of JSON (follow `next_cursor`), or the whole job streamed
    as JSONL or CSV; under any calibration, recomputed from the stored raw scores."""
    if format == "json":
        # a calibration may read the whole job through `st.reads` (a batch prior): threads
        run = db if calibration is None else db.blocking
        return page_json(
            await run(results.page, st.reads, job_id, calibration, cursor, limit, who.tenant)
        )
    # 404s for an unknown job (or another tenant's) before the stream starts
    view = await run_in_threadpool(results.resolve_view, st.reads, job_id, calibration, who.tenant)
    if format == "jsonl":
        return StreamingResponse(results.export_jsonl(st.reads, job_id, view), media_type=NDJSON)
    return StreamingResponse(
        results.export_csv(st.reads, job_id, view),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'},
    )


@router.post("/{job_id}/labels", response_model=LabelsReport)
async def set_labels(job_id: str, request: Request, st: StateDep, who: Submitter) -> LabelsReport:
    """Gold labels: JSON `{"custom_id": label, ...}` or `[{"custom_id", "label"}, ...]`, or JSONL
    lines `{"custom_id": ..., "label": ...}`. Unknown ids and labels are reported, not dropped."""
    entries, rejected = labels.parse_labels(
        await request.body(), _media_type(request) in JSONL_TYPES
    )

    def store() -> LabelsReport:
        with st.factory() as s:
            return labels.store_labels(s, job_id, entries, who.tenant)

    report = await run_in_threadpool(store)
    report.rejected = rejected + report.rejected
    return report


@router.get("/{job_id}/metrics", response_model=JobMetrics)
def job_metrics(
    job_id: str,
    st: StateDep,
    who: Reader,
    calibration: str | None = CALIBRATION_QUERY,
    bins: int = Query(15, ge=1, le=1000),
) -> JobMetrics:
    """How trustworthy the confidences are on the job's gold-labelled items: the metric report
    and the reliability diagram, under any calibration."""
    view = results.resolve_view(st.factory, job_id, calibration, who.tenant)
    return results.job_metrics(st.factory, job_id, view, bins)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def job_events(
    job_id: str,
    st: StateDep,
    who: Reader,
    interval: float = Query(0.5, ge=0.1, le=10, description="seconds between looks"),
) -> StreamingResponse:
    """Server-sent events: `progress` with the job's state and counts whenever they change,
    ending with `end` and its final state."""
    first = await run_in_threadpool(_status, st, job_id, who.tenant)  # 404 before streaming

    async def stream() -> AsyncIterator[bytes]:
        last: dict[str, Any] | None = None
        status = first
        quiet = 0.0
        while True:
            shown = status.model_dump(mode="json")
            changed = {k: shown[k] for k in ("state", "total", "succeeded", "failed")}
            if changed != last:
                yield f"event: progress\ndata: {json.dumps(shown)}\n\n".encode()
                last, quiet = changed, 0.0
            if JobState(status.state).finished:
                yield f"event: end\ndata: {json.dumps(shown)}\n\n".encode()
                return
            await asyncio.sleep(interval)
            quiet += interval
            if quiet >= 15:
                yield b": still running\n\n"  # keeps proxies from closing an idle stream
                quiet = 0.0
            status = await run_in_threadpool(_status, st, job_id, who.tenant)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get("/{job_id}/webhooks", response_model=list[DeliveryOut])
async def job_webhooks(job_id: str, db: DbDep, who: Reader) -> list[DeliveryOut]:
    """Deliveries of this job's webhook event, with every attempt's outcome."""
    return await db(webhooks.of_job, job_id, who.tenant)
