"""/v1/jobs: submit batch jobs (JSON or streamed JSONL), follow them, cancel them, get results."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import func, select

from api.deps import AppState, require_key, state
from api.schemas import JobCreate, JobList, JobMetrics, JobOut, LabelsReport, ResultsPage
from db import repo
from db.models import Classifier, Item, ItemStatus, Job
from labelq import calibration, metrics
from labelq.errors import Conflict, InputError, LabelqError
from labelq.jsonl import read_items, read_records
from labelq.scoring import Item as ScoreItem
from labelq.spec import ClassifierSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_key)])

NDJSON = "application/x-ndjson"
JSONL_TYPES = (NDJSON, "application/jsonl", "application/x-jsonlines")


def _job_out(st: AppState, job_id: str) -> JobOut:
    with st.factory() as s:
        job = repo.get_job(s, job_id)
        classifier = s.get_one(Classifier, job.classifier_id)
        cancelled = (
            s.scalar(
                select(func.count())
                .select_from(Item)
                .where(Item.job_id == job_id, Item.status == ItemStatus.cancelled)
            )
            if job.state in ("cancelling", "cancelled")
            else 0
        )
        return JobOut.of(job, classifier, cancelled or 0)


def _resolve(
    st: AppState, name: str, version: int | None
) -> tuple[Classifier, ClassifierSpec, str]:
    with st.factory() as s:
        classifier = repo.get_classifier(s, name, version)
    spec = repo.spec_of(classifier)
    model = spec.model or st.settings.model
    if not model:
        raise InputError(
            f"classifier {name!r} names no model and the service has no default (LABELQ_MODEL)",
            field="classifier",
        )
    return classifier, spec, model


async def _stream_lines(request: Request) -> AsyncIterator[tuple[int, str]]:
    """Lines of the body as they arrive, numbered from 1, without holding the whole body."""
    buffer = b""
    number = 0
    async for chunk in request.stream():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            number += 1
            yield number, line.decode("utf-8", errors="replace")
    if buffer:
        yield number + 1, buffer.decode("utf-8", errors="replace")


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
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
    classifier: str | None = Query(None, description="with a JSONL body: the classifier name"),
    version: int | None = Query(None, description="with a JSONL body: the classifier version"),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200),
    st: AppState = Depends(state),
) -> JSONResponse:
    """Submit a job. JSON: `{"classifier", "version"?, "items", "metadata"?}`. JSONL: one item per
    line, streamed (`Content-Type: application/x-ndjson`, `?classifier=`). A bad item is kept as
    a failed item naming its line; the others run. The same `Idempotency-Key` returns the job
    it made the first time."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    streamed = content_type in JSONL_TYPES
    body: JobCreate | None = None
    if streamed:
        if not classifier:
            raise InputError("a JSONL upload needs ?classifier=NAME", field="classifier")
        name, ver, metadata = classifier, version, {}
    else:
        try:
            body = JobCreate.model_validate_json(await request.body())
        except ValueError as exc:
            errors = getattr(exc, "errors", lambda: [])()
            field = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
            message = errors[0]["msg"] if errors else str(exc)
            raise InputError(f"invalid job body: {message}", field=field) from None
        name, ver, metadata = body.classifier, body.version, body.metadata

    row, spec, model = await run_in_threadpool(_resolve, st, name, ver)
    job, created = await run_in_threadpool(
        repo.start_job, st.factory, row, model, st.settings.chunk_size, metadata, idempotency_key
    )
    if not created:
        out = await run_in_threadpool(_job_out, st, job.id)
        return JSONResponse(out.model_dump(mode="json"), status_code=200)

    ingestor = repo.ItemIngestor(st.factory, job, spec.template_variables)
    try:
        if streamed:
            async for number, line in _stream_lines(request):
                for entry in read_items([line], start_line=number):
                    ingestor.add(entry)
                if ingestor.full:
                    await run_in_threadpool(ingestor.flush)
        else:
            assert body is not None
            for i, record in enumerate(body.items):
                try:
                    entry: ScoreItem | InputError = ScoreItem.from_record(record, line=i + 1)
                except InputError as exc:
                    entry = InputError(
                        exc.message, field=f"items.{i}.{exc.field or ''}".rstrip("."), line=i + 1
                    )
                ingestor.add(entry)
                if ingestor.full:
                    await run_in_threadpool(ingestor.flush)
        await run_in_threadpool(ingestor.flush)
    except Exception as exc:
        message = f"upload interrupted after {ingestor.report.total} items: {exc}"
        await run_in_threadpool(repo.fail_job, st.factory, job.id, message)
        if isinstance(exc, LabelqError):
            raise
        raise InputError(message) from None

    seqs = await run_in_threadpool(repo.seal_job, st.factory, job.id, ingestor.report)
    try:
        await run_in_threadpool(st.dispatcher.dispatch, job.id, job.queue, seqs)
    except Exception as exc:
        await run_in_threadpool(repo.fail_job, st.factory, job.id, f"could not queue: {exc}")
        raise
    report = ingestor.report
    st.metrics.jobs_submitted.inc()
    st.metrics.items_ingested.labels("accepted").inc(report.total - report.rejected)
    st.metrics.items_ingested.labels("rejected").inc(report.rejected)
    out = await run_in_threadpool(_job_out, st, job.id)
    return JSONResponse(out.model_dump(mode="json"), status_code=202)


@router.get("", response_model=JobList)
def list_jobs(limit: int = Query(50, ge=1, le=500), st: AppState = Depends(state)) -> JobList:
    with st.factory() as s:
        jobs = repo.list_jobs(s, limit)
        classifiers = {
            c.id: c
            for c in s.scalars(
                select(Classifier).where(Classifier.id.in_({j.classifier_id for j in jobs}))
            )
        }
        return JobList(data=[JobOut.of(j, classifiers[j.classifier_id]) for j in jobs])


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, st: AppState = Depends(state)) -> JobOut:
    return _job_out(st, job_id)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, st: AppState = Depends(state)) -> JobOut:
    """Pending chunks stop at once; a chunk being scored finishes and keeps its results."""
    repo.cancel_job(st.factory, job_id)
    return _job_out(st, job_id)


@router.post("/{job_id}/retry", status_code=202, response_model=JobOut)
async def retry_failed(job_id: str, st: AppState = Depends(state)) -> JSONResponse:
    """A new job of this job's failed (and cancelled) items that have an input, with the same
    classifier version and custom_ids; its metadata names the original. Lines that were not
    valid JSON cannot be retried: fix and resubmit them."""

    def prepare() -> tuple[Job, Classifier, repo.IngestReport, list[int]]:
        with st.factory() as s:
            original = repo.get_job(s, job_id)
            classifier = s.get_one(Classifier, original.classifier_id)
        spec = repo.spec_of(classifier)
        job, _ = repo.start_job(
            st.factory,
            classifier,
            original.model,
            original.chunk_size,
            {**original.metadata_, "retry_of": job_id},
        )
        ingestor = repo.ItemIngestor(st.factory, job, spec.template_variables)
        for item in repo.iter_items(st.factory, job_id):
            if item.status in (ItemStatus.failed, ItemStatus.cancelled) and item.input is not None:
                ingestor.add(ScoreItem.from_record(item.input, line=item.line))
                if ingestor.full:
                    ingestor.flush()
        ingestor.flush()
        seqs = repo.seal_job(st.factory, job.id, ingestor.report)
        return job, classifier, ingestor.report, seqs

    job, _, _, seqs = await run_in_threadpool(prepare)
    await run_in_threadpool(st.dispatcher.dispatch, job.id, job.queue, seqs)
    st.metrics.jobs_submitted.inc()
    out = await run_in_threadpool(_job_out, st, job.id)
    return JSONResponse(out.model_dump(mode="json"), status_code=202)


# -- results -------------------------------------------------------------------------------------
def result_row(item: Item) -> dict[str, Any]:
    """One result line: the scorer's fields for a scored item, else its status and error."""
    custom_id = (item.input or {}).get("custom_id", item.custom_id)
    if item.status == ItemStatus.succeeded and item.result is not None:
        row = {**item.result, "custom_id": custom_id, "status": item.status}
        if item.gold_label is not None:
            row["gold_label"] = item.gold_label
        return row
    row = {"custom_id": custom_id, "status": item.status}
    if item.line is not None:
        row["line"] = item.line
    if item.error:
        row["error"] = item.error
    if item.error_field:
        row["field"] = item.error_field
    return row


@dataclass
class View:
    """How results are served: as stored (`stored`), or recomputed under a calibrator."""

    stored: bool
    labels: list[str]
    bias: list[float]
    calibrator: calibration.Calibrator | None = None
    info: dict[str, Any] | None = None

    def rows(self, items: list[Item]) -> list[dict[str, Any]]:
        rows = [result_row(i) for i in items]
        if self.stored:
            return rows
        scored = [k for k, i in enumerate(items) if i.status == ItemStatus.succeeded and i.result]
        redone = calibration.calibrate_rows(
            [rows[k] for k in scored], self.labels, self.bias, self.calibrator, self.info
        )
        for k, row in zip(scored, redone, strict=True):
            rows[k] = row
        return rows


def resolve_view(st: AppState, job_id: str, choice: str | None) -> View:
    """`choice`: None (as stored), `none` (uncalibrated), `active`, or a calibration id."""
    with st.factory() as s:
        job = repo.get_job(s, job_id)
        spec = repo.spec_of(s.get_one(Classifier, job.classifier_id))
        view = View(choice is None, spec.label_names, spec.bias_vector())
        if choice in (None, "none"):
            return view
        if choice == "active":
            row = repo.active_calibration(s, job.classifier_id)
            if row is None:
                return view  # no active calibration: uncalibrated
        else:
            try:
                calibration_id = int(choice)
            except ValueError:
                raise InputError(
                    "calibration must be none, active or a calibration id", field="calibration"
                ) from None
            row = repo.get_calibration(s, calibration_id, job.classifier_id)
        if row.status != "ready":
            raise Conflict(f"calibration {row.id} is {row.status}", field="calibration")
        view.calibrator = calibration.load(row.method, row.params)
        view.info = {"id": row.id, "method": row.method}
    if isinstance(view.calibrator, calibration.BatchCalibration):
        # At serving time the batch is the whole job: estimate its prior over every result.
        z = [
            calibration.result_log_probs([i.result], view.labels, view.bias)[0]
            for i in repo.iter_items(st.factory, job_id)
            if i.result is not None
        ]
        if z:
            view.calibrator.mean = np.mean(z, axis=0)
        view.calibrator.min_batch = 2**62
    return view


def iter_rows(
    st: AppState,
    job_id: str,
    view: View,
    after: int = -1,
    limit: int | None = None,
    batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    buffer: list[Item] = []
    for item in repo.iter_items(st.factory, job_id, after_idx=after, batch=batch, limit=limit):
        buffer.append(item)
        if len(buffer) >= batch:
            yield from view.rows(buffer)
            buffer = []
    yield from view.rows(buffer)


def _jsonl(st: AppState, job_id: str, view: View) -> Iterator[bytes]:
    # One write per ~64 KiB, not one per row: per-chunk overhead dominated the export.
    lines: list[str] = []
    size = 0
    for row in iter_rows(st, job_id, view):
        line = json.dumps(row, ensure_ascii=False) + "\n"
        lines.append(line)
        size += len(line)
        if size > 1 << 16:
            yield "".join(lines).encode()
            lines, size = [], 0
    yield "".join(lines).encode()


CSV_FIELDS = ["custom_id", "status", "label", "confidence", "margin", "entropy", "energy"]


def _csv(st: AppState, job_id: str, view: View) -> Iterator[bytes]:
    labels = view.labels
    header = [*CSV_FIELDS, *(f"p_{label}" for label in labels), "label_set", "line", "error"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in iter_rows(st, job_id, view):
        probs = row.get("probs", {})
        label_set = row.get("label_set")
        writer.writerow(
            [row.get(k, "") for k in CSV_FIELDS]
            + [probs.get(label, "") for label in labels]
            + [
                "|".join(label_set) if label_set is not None else "",
                row.get("line", ""),
                row.get("error", ""),
            ]
        )
        if buf.tell() > 1 << 16:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


CALIBRATION_QUERY = Query(
    None, description="none | active | <calibration id>; unset: as stored when scored"
)


@router.get("/{job_id}/results", response_model=ResultsPage)
def get_results(
    job_id: str,
    format: Literal["json", "jsonl", "csv"] = Query("json"),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
    calibration: str | None = CALIBRATION_QUERY,
    st: AppState = Depends(state),
) -> Any:
    """Results in input order: a page of JSON (follow `next_cursor`), or the whole job streamed
    as JSONL or CSV; under any calibration, recomputed from the stored raw scores."""
    view = resolve_view(st, job_id, calibration)  # also 404s for an unknown job
    if format == "jsonl":
        return StreamingResponse(_jsonl(st, job_id, view), media_type=NDJSON)
    if format == "csv":
        return StreamingResponse(
            _csv(st, job_id, view),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'},
        )
    try:
        after = int(cursor) if cursor else -1
    except ValueError:
        raise InputError(
            "cursor must be a next_cursor value from a previous page", field="cursor"
        ) from None
    items = list(repo.iter_items(st.factory, job_id, after_idx=after, limit=limit + 1))
    page, more = items[:limit], len(items) > limit
    return ResultsPage(data=view.rows(page), next_cursor=str(page[-1].idx) if more else None)


# -- gold labels and metrics ---------------------------------------------------------------------
@router.post("/{job_id}/labels", response_model=LabelsReport)
async def set_labels(job_id: str, request: Request, st: AppState = Depends(state)) -> LabelsReport:
    """Gold labels: JSON `{"custom_id": label, ...}` or `[{"custom_id", "label"}, ...]`, or JSONL
    lines `{"custom_id": ..., "label": ...}`. Unknown ids and labels are reported, not dropped."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()
    entries: list[tuple[int | None, Any, Any]] = []
    rejected: list[dict[str, Any]] = []
    if content_type in JSONL_TYPES:
        for entry in read_records(body.splitlines()):
            if isinstance(entry, InputError):
                rejected.append({"line": entry.line, "error": entry.message})
                continue
            number, record = entry
            entries.append((number, record.get("custom_id"), record.get("label")))
    else:
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON body: {exc.msg}") from None
        if isinstance(data, dict):
            entries = [(None, k, v) for k, v in data.items()]
        elif isinstance(data, list):
            for i, record in enumerate(data):
                if not isinstance(record, dict):
                    rejected.append({"line": i + 1, "error": "an entry must be an object"})
                    continue
                entries.append((i + 1, record.get("custom_id"), record.get("label")))
        else:
            raise InputError("send an object custom_id -> label, or a list of objects")
    labels = set(await run_in_threadpool(_labels, st, job_id))
    accepted, more = await run_in_threadpool(
        repo.set_gold_labels, st.factory, job_id, entries, labels
    )
    return LabelsReport(accepted=accepted, rejected=rejected + more)


def _labels(st: AppState, job_id: str) -> list[str]:
    with st.factory() as s:
        job = repo.get_job(s, job_id)
        return repo.spec_of(s.get_one(Classifier, job.classifier_id)).label_names


@router.get("/{job_id}/metrics", response_model=JobMetrics)
def job_metrics(
    job_id: str,
    calibration: str | None = CALIBRATION_QUERY,
    bins: int = Query(15, ge=1, le=1000),
    st: AppState = Depends(state),
) -> JobMetrics:
    """How trustworthy the confidences are on the job's gold-labelled items: the metric report
    and the reliability diagram, under any calibration."""
    view = resolve_view(st, job_id, calibration)
    rows = [r for r in iter_rows(st, job_id, view) if r.get("gold_label") and r.get("probs")]
    if not rows:
        raise Conflict("no scored item of this job has a gold label yet", field="labels")
    index = {label: k for k, label in enumerate(view.labels)}
    probs = np.array([[r["probs"][label] for label in view.labels] for r in rows])
    y = np.array([index[r["gold_label"]] for r in rows])
    out = JobMetrics(
        calibration=view.info if view.calibrator else None,
        metrics=metrics.report(probs, y, bins).model_dump(),
        reliability=[b.model_dump() for b in metrics.reliability_bins(probs, y, bins)],
    )
    if any("label_set" in r for r in rows):
        sets = np.array([[label in r.get("label_set", []) for label in view.labels] for r in rows])
        out.set_coverage = metrics.set_coverage(sets, y)
        out.mean_set_size = metrics.mean_set_size(sets)
    return out
