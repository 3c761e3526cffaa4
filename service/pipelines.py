"""Scheduled pipelines: store them (checked at once), start runs (never two at a time), and end
runs when their job ends: results to the sink, then the watermark. A run whose job or sink
failed leaves the watermark where it was, so the next run redoes it; upserts by key mean
nothing is written twice.

Starting a run reads the source page by page straight into the job's items: nothing is held
in memory, and each page is its own short transaction (as any upload).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import retry, stop_after_attempt, wait_exponential

from db import jobs as job_rows
from db.classifiers import get_classifier
from db.models import (
    DEFAULT_TENANT,
    JobState,
    Pipeline,
    PipelineFile,
    PipelineRun,
    RunState,
    utcnow,
)
from db.session import transaction
from labelq.errors import Conflict, InputError, LabelqError, NotFound, SpecError
from labelq.pipeline import FilesSink, FilesSource, PipelineSpec, SqlSink, parse_pipeline
from labelq.scoring import Item as ScoreItem
from labelq.settings import Settings
from labelq.sinks import FilesWriter, SqlWriter, sink_row
from labelq.sources import FilesReader, SqlReader
from service import jobs, results, webhooks
from service.dispatch import Dispatcher
from service.webhooks import DeliveryOut

log = logging.getLogger(__name__)


class RunOut(BaseModel):
    id: int
    pipeline: str
    state: RunState
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    rows_read: int
    job_id: str | None
    watermark_before: dict[str, Any] | None
    watermark_after: dict[str, Any] | None
    files: list[dict[str, Any]] | None
    error: str | None

    @classmethod
    def of(cls, run: PipelineRun, name: str) -> RunOut:
        return cls(
            id=run.id,
            pipeline=name,
            state=RunState(run.state),
            trigger=run.trigger,
            started_at=run.started_at,
            finished_at=run.finished_at,
            rows_read=run.rows_read,
            job_id=run.job_id,
            watermark_before=run.watermark_before,
            watermark_after=run.watermark_after,
            files=(run.files or {}).get("files"),
            error=run.error,
        )


class PipelineOut(BaseModel):
    name: str
    enabled: bool
    spec: dict[str, Any]
    watermark: dict[str, Any] | None
    last_run: RunOut | None
    created_at: datetime
    updated_at: datetime


def spec_of(row: Pipeline) -> PipelineSpec:
    return PipelineSpec.model_validate(row.definition)


def _get(
    s: Session, name: str, tenant: str = DEFAULT_TENANT, *, for_update: bool = False
) -> Pipeline:
    query = select(Pipeline).where(Pipeline.tenant == tenant, Pipeline.name == name)
    if for_update:
        query = query.with_for_update()
    row = s.scalar(query)
    if row is None:
        raise NotFound(f"pipeline {name!r} does not exist", field="pipeline")
    return row


def _last_run(s: Session, pipeline_id: int) -> PipelineRun | None:
    return s.scalar(
        select(PipelineRun)
        .where(PipelineRun.pipeline_id == pipeline_id)
        .order_by(PipelineRun.id.desc())
        .limit(1)
    )


def _out(s: Session, row: Pipeline) -> PipelineOut:
    last = _last_run(s, row.id)
    return PipelineOut(
        name=row.name,
        enabled=row.enabled,
        spec=spec_of(row).shown(),
        watermark=row.watermark,
        last_run=RunOut.of(last, row.name) if last else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def check(s: Session, spec: PipelineSpec, tenant: str = DEFAULT_TENANT) -> None:
    """Everything that can be checked before 3 a.m.: the classifier, the source's columns or
    folder, the sink's URL."""
    try:
        get_classifier(s, spec.classifier, spec.version, tenant)
    except NotFound as exc:
        raise SpecError(exc.message, field="version" if spec.version else "classifier") from None
    if isinstance(spec.source, FilesSource):
        FilesReader(spec.source).check()
    else:
        reader = SqlReader(spec.source)
        try:
            reader.check()
        finally:
            reader.close()
    if isinstance(spec.sink, SqlSink):
        SqlWriter(spec.sink).close()


def create(s: Session, data: Any, tenant: str = DEFAULT_TENANT) -> PipelineOut:
    spec = parse_pipeline(data)
    check(s, spec, tenant)
    row = Pipeline(
        tenant=tenant,
        name=spec.name,
        definition=spec.model_dump(mode="json"),
        enabled=spec.enabled,
    )
    s.add(row)
    try:
        s.commit()
    except IntegrityError:
        s.rollback()
        raise Conflict(f"pipeline {spec.name!r} exists: PATCH it", field="name") from None
    return _out(s, row)


def update(
    s: Session, name: str, changes: dict[str, Any], tenant: str = DEFAULT_TENANT
) -> PipelineOut:
    """Change fields of a pipeline (checked as at creation); effective at the next tick."""
    row = _get(s, name, tenant)
    if "name" in changes and changes["name"] != name:
        raise InputError("a pipeline cannot be renamed: create a new one", field="name")
    spec = parse_pipeline({**row.definition, **changes})
    check(s, spec, tenant)
    row.definition = spec.model_dump(mode="json")
    row.enabled = spec.enabled
    s.commit()
    return _out(s, row)


def delete(s: Session, name: str, tenant: str = DEFAULT_TENANT) -> None:
    s.delete(_get(s, name, tenant))
    s.commit()


def get(s: Session, name: str, tenant: str = DEFAULT_TENANT) -> PipelineOut:
    return _out(s, _get(s, name, tenant))


def list_all(s: Session, tenant: str = DEFAULT_TENANT) -> list[PipelineOut]:
    query = select(Pipeline).where(Pipeline.tenant == tenant).order_by(Pipeline.name)
    return [_out(s, row) for row in s.scalars(query)]


def runs(s: Session, name: str, limit: int = 50, tenant: str = DEFAULT_TENANT) -> list[RunOut]:
    row = _get(s, name, tenant)
    return [
        RunOut.of(run, name)
        for run in s.scalars(
            select(PipelineRun)
            .where(PipelineRun.pipeline_id == row.id)
            .order_by(PipelineRun.id.desc())
            .limit(limit)
        )
    ]


def webhooks_of(s: Session, name: str, tenant: str = DEFAULT_TENANT) -> list[DeliveryOut]:
    """Deliveries for a pipeline's failed runs."""
    run_ids = [r.id for r in runs(s, name, 500, tenant)]
    return webhooks.deliveries(s, run_ids=run_ids)


def last_started(s: Session) -> dict[tuple[str, str], datetime]:
    """(tenant, pipeline name) -> when its last run (of any kind) started."""
    rows = s.execute(
        select(Pipeline.tenant, Pipeline.name, PipelineRun.started_at)
        .join(PipelineRun, PipelineRun.pipeline_id == Pipeline.id)
        .order_by(PipelineRun.id)
    ).all()
    return {(tenant, name): started for tenant, name, started in rows}


def due_now(s: Session) -> list[tuple[str, str]]:
    """Enabled pipelines whose schedule says they are due (the embedded default's scheduler;
    beat asks Celery's schedule classes the same question)."""
    from service.schedules import due

    last = last_started(s)
    names = []
    for row in s.scalars(select(Pipeline).where(Pipeline.enabled.is_(True))):
        last_run = last.get((row.tenant, row.name))
        is_due, _ = due(spec_of(row).schedule, last_run, row.created_at)
        if is_due:
            names.append((row.tenant, row.name))
    return names


def enabled_specs(s: Session) -> list[tuple[str, PipelineSpec]]:
    """(tenant, spec) of every enabled pipeline."""
    enabled = select(Pipeline).where(Pipeline.enabled.is_(True))
    return [(row.tenant, spec_of(row)) for row in s.scalars(enabled)]


# -- a run -----------------------------------------------------------------------------------
def start_run(
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    settings: Settings,
    name: str,
    trigger: str = "schedule",
    tenant: str = DEFAULT_TENANT,
) -> RunOut:
    """Read what is new in the source into a job. A run still going makes this one `skipped`
    (recorded, with the reason); never two at once."""
    with transaction(factory) as s:
        row = _get(s, name, tenant, for_update=True)
        running = s.scalar(
            select(PipelineRun).where(
                PipelineRun.pipeline_id == row.id, PipelineRun.state == RunState.running
            )
        )
        run = PipelineRun(
            pipeline_id=row.id,
            trigger=trigger,
            state=RunState.skipped if running else RunState.running,
            watermark_before=row.watermark,
            rows_read=0,
        )
        if running:
            run.error = f"run {running.id} (started {running.started_at}) is still going"
            run.finished_at = utcnow()
        s.add(run)
        s.flush()
        spec, run_id, pipeline_id, watermark = spec_of(row), run.id, row.id, row.watermark
    if running:
        with factory() as s:
            return RunOut.of(s.get_one(PipelineRun, run_id), name)
    try:
        _read_into_job(factory, dispatcher, settings, spec, run_id, pipeline_id, watermark, tenant)
    except Exception as exc:
        error = exc.message if isinstance(exc, LabelqError) else f"{type(exc).__name__}: {exc}"
        log.warning("pipeline %s run %d failed while reading: %s", name, run_id, error)
        with transaction(factory) as s:
            _fail(s, s.get_one(PipelineRun, run_id), f"reading the source failed: {error}")
    with factory() as s:
        return RunOut.of(s.get_one(PipelineRun, run_id), name)


def _read_into_job(
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    settings: Settings,
    spec: PipelineSpec,
    run_id: int,
    pipeline_id: int,
    watermark: dict[str, Any] | None,
    tenant: str,
) -> None:
    submission: jobs.Submission | None = None
    rows_read = 0
    position = watermark
    files: list[dict[str, Any]] = []
    run_settings = settings
    if spec.options.chunk_size:
        run_settings = settings.model_copy(update={"chunk_size": spec.options.chunk_size})

    def add(records: list[Any]) -> None:
        nonlocal submission, rows_read
        if submission is None:
            job, job_spec, _ = jobs.start(
                factory,
                run_settings,
                spec.classifier,
                spec.version,
                {"pipeline": spec.name, "run_id": run_id},
                tenant=tenant,
            )
            submission = jobs.Submission(factory, job, job_spec, run_settings)
        for record in records:
            if isinstance(record, InputError):
                submission.add(record)
            else:
                key, fields = record
                submission.add(ScoreItem(custom_id=key, fields=fields, line=rows_read + 1))
            rows_read += 1
            if submission.full:
                submission.flush()

    if isinstance(spec.source, FilesSource):
        reader = FilesReader(spec.source)
        with factory() as s:
            done = {
                (f.path, f.sha256)
                for f in s.scalars(
                    select(PipelineFile).where(PipelineFile.pipeline_id == pipeline_id)
                )
            }
        pending = reader.pending(done)
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in pending]
        batch: list[Any] = []
        for record in reader.records(pending):
            batch.append(record)
            if len(batch) >= 1000:
                add(batch)
                batch = []
        if batch:
            add(batch)
    else:
        sql = SqlReader(spec.source)
        try:
            for page, after in sql.pages(watermark):
                add(page)
                position = after
        finally:
            sql.close()

    job_id = None
    if submission is not None:
        submission.seal(dispatcher)
        job_id = submission.job_id
    with transaction(factory) as s:
        run = s.get_one(PipelineRun, run_id)
        run.rows_read = rows_read
        run.job_id = job_id
        run.watermark_after = position
        run.files = {"files": files} if files else None
        if job_id is None:  # nothing new: done
            run.state = RunState.succeeded
            run.finished_at = utcnow()


def _fail(s: Session, run: PipelineRun, error: str) -> None:
    run.state = RunState.failed
    run.error = error
    run.finished_at = utcnow()


def finish_runs(factory: sessionmaker[Session], settings: Settings) -> list[int]:
    """End running runs whose job has ended: sink, then watermark (one transaction), or the
    reason it failed. Returns the run ids ended."""
    with factory() as s:
        due = s.execute(
            select(PipelineRun.id, PipelineRun.job_id).where(
                PipelineRun.state == RunState.running, PipelineRun.job_id.is_not(None)
            )
        ).all()
    ended = []
    for run_id, job_id in due:
        assert job_id is not None
        with factory() as s:
            job = job_rows.get_job(s, job_id)
            if not JobState(job.state).finished:
                continue
            run = s.get_one(PipelineRun, run_id)
            pipeline = s.get_one(Pipeline, run.pipeline_id)
            spec, state, job_error = spec_of(pipeline), job.state, job.error
            version = job_rows.job_classifier(s, job).version
        try:
            if state != JobState.succeeded:
                raise LabelqError(f"job {job_id} {state}: {job_error or 'see its items'}")
            if spec.sink is not None:
                _write_sink(factory, spec, run_id, job_id, version)
        except Exception as exc:
            error = exc.message if isinstance(exc, LabelqError) else f"{type(exc).__name__}: {exc}"
            log.warning("pipeline %s run %d failed: %s", spec.name, run_id, error)
            with transaction(factory) as s:
                _fail(s, s.get_one(PipelineRun, run_id), error)
            ended.append(run_id)
            continue
        with transaction(factory) as s:
            run = s.get_one(PipelineRun, run_id)
            pipeline = s.get_one(Pipeline, run.pipeline_id, with_for_update=True)
            if run.watermark_after is not None:
                pipeline.watermark = run.watermark_after
            for f in (run.files or {}).get("files", []):
                s.add(PipelineFile(pipeline_id=pipeline.id, run_id=run.id, **f))
            run.state = RunState.succeeded
            run.finished_at = utcnow()
        ended.append(run_id)
    return ended


# A sink that is briefly away is retried; past this, the run fails and the next run redoes it.
_sink_retry = retry(
    wait=wait_exponential(multiplier=0.5, max=8), stop=stop_after_attempt(4), reraise=True
)


@_sink_retry
def _write_sink(
    factory: sessionmaker[Session], spec: PipelineSpec, run_id: int, job_id: str, version: int
) -> None:
    choice = spec.options.calibration
    view = results.resolve_view(factory, job_id, None if choice == "stored" else choice)
    rows = results.iter_rows(factory, job_id, view)
    now = utcnow()
    if isinstance(spec.sink, SqlSink):
        writer = SqlWriter(spec.sink)
        try:
            writer.write(sink_row(r, run_id, version, now) for r in rows)
        finally:
            writer.close()
    elif isinstance(spec.sink, FilesSink):
        FilesWriter(spec.sink).write(f"{spec.name}-run{run_id}", rows, view.labels)
