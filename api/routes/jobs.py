"""/v1/jobs: submit batch jobs (JSON or streamed JSONL), follow them, cancel them, get results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from api.deps import Administering, Call, Reading, StateDep, Submitting, submission_quota
from api.errors import capped_body, input_error
from api.schemas import JobCreate, JobList, model_json, page_json
from labelq.errors import InputError, LabelqError
from labelq.jsonl import JSONL_TYPES, NDJSON, read_items
from labelq.scoring import Item as ScoreItem
from service import erase, ingest, jobs, labels, results, webhooks
from service.erase import Erasure, Keep
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


async def _json_entries(items: list[Any]) -> AsyncIterator[ScoreItem | InputError]:
    """The items of a JSON body; a bad one as an error naming `items.N.field`."""
    for i, record in enumerate(items):
        try:
            yield ScoreItem.from_record(record, line=i + 1)
        except InputError as exc:
            field = f"items.{i}.{exc.field or ''}".rstrip(".")
            yield InputError(exc.message, field=field, line=i + 1)


async def _jsonl_entries(
    request: Request, max_line: int, max_depth: int
) -> AsyncIterator[ScoreItem | InputError]:
    """The items of a streamed JSONL body, parsed as they arrive."""
    async for number, line in _stream_lines(request, max_line):
        if isinstance(line, InputError):
            yield line
            continue
        for parsed in read_items([line], start_line=number, max_depth=max_depth):
            yield parsed


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
    call: Submitting,
    classifier: str | None = Query(None, description="with a JSONL body: the classifier name"),
    version: int | None = Query(None, description="with a JSONL body: the classifier version"),
    webhook_url: str | None = Query(None, description="with a JSONL body: notified at the end"),
    expires_after: float | None = Query(
        None, gt=0, description="with a JSONL body: seconds to end by, else `expired`"
    ),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200),
) -> Response:
    """Submit a job. JSON: `{"classifier", "version"?, "items", "metadata"?}`. JSONL: one item per
    line, streamed (`Content-Type: application/x-ndjson`, `?classifier=`). A bad item is kept as
    a failed item naming its line; the others run. The same `Idempotency-Key` returns the job
    it made the first time."""
    settings = st.settings
    entries: AsyncIterator[ScoreItem | InputError]
    if _media_type(request) in JSONL_TYPES:
        if not classifier:
            raise InputError("a JSONL upload needs ?classifier=NAME", field="classifier")
        wanted = ingest.JobRequest(
            classifier=classifier,
            version=version,
            webhook_url=webhook_url,
            expires_after=expires_after,
        )
        entries = _jsonl_entries(request, settings.max_line_bytes, settings.max_json_depth)
    else:
        raw = await capped_body(
            request,
            settings.max_json_job_bytes,
            "LABELQ_MAX_JSON_JOB_BYTES",
            ": a JSON body is held whole; send a larger job as JSONL, streamed "
            "(Content-Type: application/x-ndjson, ?classifier=NAME)",
        )
        try:
            body = JobCreate.model_validate_json(raw)
        except ValidationError as exc:
            raise input_error(exc, "job body") from None
        wanted = ingest.JobRequest(
            classifier=body.classifier,
            version=body.version,
            metadata=body.metadata,
            webhook_url=body.webhook_url,
            expires_after=body.expires_after,
            items=len(body.items),
        )
        entries = _json_entries(body.items)
    wanted.idempotency_key = idempotency_key

    opened = await call(ingest.open_job, wanted)
    if opened.submission is None:  # the job this Idempotency-Key made
        return model_json(await call.on_loop(jobs.status, opened.job_id))
    report = await _upload(call, opened.submission, entries)
    st.metrics.jobs_submitted.inc()
    st.metrics.items_ingested.labels("accepted").inc(report.total - report.rejected)
    st.metrics.items_ingested.labels("rejected").inc(report.rejected)
    return model_json(await call.on_loop(jobs.status, opened.job_id), 202)


async def _upload(
    call: Call, submission: ingest.Submission, entries: AsyncIterator[ScoreItem | InputError]
) -> ingest.IngestReport:
    """Entries into the job as they arrive, a batch per call, then its chunks; an upload
    that breaks off fails the job with the reason (what it accepted stays readable)."""
    try:
        batch: list[ScoreItem | InputError] = []
        async for entry in entries:
            batch.append(entry)
            if len(batch) >= ingest.BATCH:
                await call(ingest.add, submission, batch)
                batch = []
            elif submission.renewal_due:  # a slow client: its upload is still alive
                await call(ingest.renew, submission)
        if batch:
            await call(ingest.add, submission, batch)
        await call(ingest.seal, submission)
    except Exception as exc:
        message = f"upload interrupted after {submission.report.total} items: {exc}"
        await call(ingest.abort, submission, message)
        if isinstance(exc, LabelqError):
            raise
        raise InputError(message) from None
    return submission.report


@router.get("", response_model=JobList)
async def list_jobs(call: Reading, limit: int = Query(50, ge=1, le=500)) -> Response:
    return model_json(JobList(data=await call.on_loop(jobs.list_jobs, limit)))


@router.get("/{job_id}", response_model=JobStatus)
async def get_job(job_id: str, call: Reading) -> Response:
    return model_json(await call.on_loop(jobs.status, job_id))


@router.post("/{job_id}/cancel", response_model=JobStatus)
async def cancel_job(job_id: str, call: Submitting) -> JobStatus:
    """Pending chunks stop at once; a chunk being scored finishes and keeps its results."""
    return await call(jobs.cancel, job_id)


@router.delete("/{job_id}", response_model=Erasure)
async def delete_job(
    job_id: str,
    call: Administering,
    response: Response,
    keep: Keep = Query(
        description="`tombstone`: the job and its items' numbers stay (counts, dashboard, "
        "/metrics), every input, result, id and error goes; `nothing`: every row goes",
    ),
) -> Erasure:
    """Erase a job: its items' inputs and results, its chunks and webhook deliveries, and (by
    `keep`) its row (admin: a submit key cannot erase). A job still going is cancelled first
    and erased once it has ended. 200 when done; 202 when the reconciler goes on with it (a
    large job, batch by batch, or one still scoring)."""
    done = await call(erase.erase_job, job_id, keep)
    response.status_code = 200 if done.done else 202
    return done


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobStatus,
    dependencies=[Depends(submission_quota)],
)
async def retry_failed(
    job_id: str, st: StateDep, call: Submitting, background: BackgroundTasks
) -> JobStatus:
    """A new job of this ended job's failed (and cancelled) items that have an input, with
    the same classifier version and custom_ids; its metadata names the original. Its items
    are ingested after the answer (the job is `queued` meanwhile). Asked again, the same job
    comes back. Lines that were not valid JSON cannot be retried: fix and resubmit them."""
    started = await call(jobs.start_retry, job_id)
    if started.submission is not None:
        background.add_task(call, jobs.fill_retry, job_id, started.submission)
        st.metrics.jobs_submitted.inc()
    return started.status


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
    call: Reading,
    format: Literal["json", "jsonl", "csv"] = Query("json"),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
    calibration: str | None = CALIBRATION_QUERY,
) -> Response:
    """Results in input order: a page of JSON (follow `next_cursor`), or the whole job streamed
    as JSONL or CSV; under any calibration, recomputed from the stored raw scores."""
    if format == "json":
        # As stored, a page is one read on the loop; a calibration may read the whole job (a
        # batch prior), which belongs on a thread.
        run = call.on_loop if calibration is None else call
        return page_json(await run(results.page, job_id, calibration, cursor, limit))
    # 404s for an unknown job (or another tenant's) before the stream starts
    stream = await call(results.export, job_id, calibration, format)
    if format == "jsonl":
        return StreamingResponse(stream, media_type=NDJSON)
    return StreamingResponse(
        stream,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'},
    )


@router.post("/{job_id}/labels", response_model=LabelsReport)
async def set_labels(job_id: str, request: Request, call: Submitting) -> LabelsReport:
    """Gold labels: JSON `{"custom_id": label, ...}` or `[{"custom_id", "label"}, ...]`, or JSONL
    lines `{"custom_id": ..., "label": ...}`. Unknown ids and labels are reported, not dropped."""
    jsonl = _media_type(request) in JSONL_TYPES
    return await call(labels.set_labels, job_id, await request.body(), jsonl)


@router.get("/{job_id}/metrics", response_model=JobMetrics)
async def job_metrics(
    job_id: str,
    call: Reading,
    calibration: str | None = CALIBRATION_QUERY,
    bins: int = Query(15, ge=1, le=1000),
) -> JobMetrics:
    """How trustworthy the confidences are on the job's gold-labelled items: the metric report
    and the reliability diagram, under any calibration."""
    return await call(results.job_metrics, job_id, calibration, bins)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def job_events(
    job_id: str,
    call: Reading,
    interval: float = Query(0.5, ge=0.1, le=10, description="seconds between looks"),
) -> StreamingResponse:
    """Server-sent events: `progress` with the job's state and counts whenever they change,
    ending with `end` and its final state."""
    first = await call.on_loop(jobs.status, job_id)  # 404 before streaming

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
            if status.finished:
                yield f"event: end\ndata: {json.dumps(shown)}\n\n".encode()
                return
            await asyncio.sleep(interval)
            quiet += interval
            if quiet >= 15:
                yield b": still running\n\n"  # keeps proxies from closing an idle stream
                quiet = 0.0
            status = await call.on_loop(jobs.status, job_id)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get("/{job_id}/webhooks", response_model=list[DeliveryOut])
async def job_webhooks(job_id: str, call: Reading) -> list[DeliveryOut]:
    """Deliveries of this job's webhook event, with every attempt's outcome."""
    return await call(webhooks.of_job, job_id)
