"""Pipelines, their runs and the files they processed: rows and the run state machine, on a
caller's Session (nothing here commits).

A run is `running` from `open_run` until `finish_run` (its sink written: the watermark and the
files it read are committed with it) or `fail_run`; a run opened while another is running is
`skipped` at once, with the reason. Nothing else assigns `PipelineRun.state`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Pipeline, PipelineFile, PipelineRun, RunState, utcnow
from labelq.errors import Conflict, NotFound


# -- pipelines -----------------------------------------------------------------------------------
def get_pipeline(s: Session, name: str, *, tenant: str, for_update: bool = False) -> Pipeline:
    query = select(Pipeline).where(Pipeline.tenant == tenant, Pipeline.name == name)
    if for_update:
        query = query.with_for_update()
    row = s.scalar(query)
    if row is None:
        raise NotFound(f"pipeline {name!r} does not exist", field="pipeline")
    return row


def list_pipelines(s: Session, *, tenant: str) -> list[Pipeline]:
    return list(
        s.scalars(select(Pipeline).where(Pipeline.tenant == tenant).order_by(Pipeline.name))
    )


def enabled_pipelines(s: Session) -> list[Pipeline]:
    """Every tenant's enabled pipelines (what the schedulers read)."""
    return list(s.scalars(select(Pipeline).where(Pipeline.enabled.is_(True))))


def add_pipeline(
    s: Session, name: str, definition: dict[str, Any], enabled: bool, *, tenant: str
) -> Pipeline:
    row = Pipeline(tenant=tenant, name=name, definition=definition, enabled=enabled)
    try:
        with s.begin_nested():
            s.add(row)
    except IntegrityError:
        raise Conflict(f"pipeline {name!r} exists: PATCH it", field="name") from None
    return row


def change_pipeline(s: Session, row: Pipeline, definition: dict[str, Any], enabled: bool) -> None:
    row.definition = definition
    row.enabled = enabled
    s.flush()


def delete_pipeline(s: Session, row: Pipeline) -> None:
    s.delete(row)


def last_started(s: Session) -> dict[tuple[str, str], datetime]:
    """(tenant, pipeline name) -> when its last run (of any kind) started."""
    rows = s.execute(
        select(Pipeline.tenant, Pipeline.name, PipelineRun.started_at)
        .join(PipelineRun, PipelineRun.pipeline_id == Pipeline.id)
        .order_by(PipelineRun.id)
    ).all()
    return {(tenant, name): started for tenant, name, started in rows}


def processed_files(s: Session, pipeline_id: int) -> set[tuple[str, str]]:
    """(path, sha256) of every file a pipeline's succeeded runs read."""
    rows = s.execute(
        select(PipelineFile.path, PipelineFile.sha256).where(
            PipelineFile.pipeline_id == pipeline_id
        )
    )
    return {(path, sha) for path, sha in rows}


# -- runs ----------------------------------------------------------------------------------------
def last_run(s: Session, pipeline_id: int) -> PipelineRun | None:
    return s.scalar(
        select(PipelineRun)
        .where(PipelineRun.pipeline_id == pipeline_id)
        .order_by(PipelineRun.id.desc())
        .limit(1)
    )


def runs_of(s: Session, pipeline_id: int, limit: int) -> list[PipelineRun]:
    """A pipeline's runs, newest first."""
    return list(
        s.scalars(
            select(PipelineRun)
            .where(PipelineRun.pipeline_id == pipeline_id)
            .order_by(PipelineRun.id.desc())
            .limit(limit)
        )
    )


def get_run(s: Session, run_id: int) -> PipelineRun:
    return s.get_one(PipelineRun, run_id)


def pipeline_of_run(s: Session, run: PipelineRun, *, for_update: bool = False) -> Pipeline:
    return s.get_one(Pipeline, run.pipeline_id, with_for_update=for_update)


def open_run(s: Session, pipeline: Pipeline, trigger: str) -> PipelineRun:
    """A new run of a pipeline locked by the caller (`get_pipeline(for_update=True)`):
    `running`, or `skipped` with the reason when another run is still going (runs never
    overlap)."""
    running = s.scalar(
        select(PipelineRun).where(
            PipelineRun.pipeline_id == pipeline.id, PipelineRun.state == RunState.running
        )
    )
    run = PipelineRun(
        pipeline_id=pipeline.id,
        trigger=trigger,
        state=RunState.skipped if running else RunState.running,
        watermark_before=pipeline.watermark,
        rows_read=0,
    )
    if running:
        run.error = f"run {running.id} (started {running.started_at}) is still going"
        run.finished_at = utcnow()
    s.add(run)
    s.flush()
    return run


def record_read(
    s: Session,
    run_id: int,
    rows_read: int,
    job_id: str | None,
    watermark_after: dict[str, Any] | None,
    files: list[dict[str, Any]],
) -> None:
    """What a run read into its job; a run that found nothing new is done."""
    run = get_run(s, run_id)
    run.rows_read = rows_read
    run.job_id = job_id
    run.watermark_after = watermark_after
    run.files = {"files": files} if files else None
    if job_id is None:
        run.state = RunState.succeeded
        run.finished_at = utcnow()


def fail_run(s: Session, run_id: int, error: str) -> None:
    run = get_run(s, run_id)
    run.state = RunState.failed
    run.error = error
    run.finished_at = utcnow()


def finish_run(s: Session, run_id: int) -> None:
    """A run whose sink is written: its watermark becomes the pipeline's and the files it read
    are recorded, in the caller's transaction, and it succeeds."""
    run = get_run(s, run_id)
    pipeline = pipeline_of_run(s, run, for_update=True)
    if run.watermark_after is not None:
        pipeline.watermark = run.watermark_after
    for f in (run.files or {}).get("files", []):
        s.add(PipelineFile(pipeline_id=pipeline.id, run_id=run.id, **f))
    run.state = RunState.succeeded
    run.finished_at = utcnow()


def runs_waiting_on_jobs(s: Session) -> list[tuple[int, str]]:
    """(run id, job id) of every running run that handed its rows to a job."""
    rows = s.execute(
        select(PipelineRun.id, PipelineRun.job_id).where(
            PipelineRun.state == RunState.running, PipelineRun.job_id.is_not(None)
        )
    ).all()
    return [(run_id, job_id) for run_id, job_id in rows if job_id is not None]
